import json
import os

import pytest

from pipeline.contract.errors import UserError
from pipeline.runner import STAGE_FILE, Stage, read_stage_record, run_stages


class Counter:
    """Stage functions that write real files and count how often they ran."""

    def __init__(self):
        self.calls = []

    def stage(self, name, src=None, fail=False):
        def run(ctx):
            self.calls.append(name)
            text = open(src).read() if src else ""
            for up in ctx.upstream.values():
                text += open(up["outputs"]["file"]).read()
            path = os.path.join(ctx.out_dir, "out.txt")
            with open(path, "w") as fh:
                fh.write(text + name)
            if fail:
                raise RuntimeError("killed mid-stage")
            return {"file": path}

        return run


def pipeline(counter, src, section_a=None, fail_b=False):
    return [
        Stage("a", counter.stage("a", src), section_a or {"k": 1}, inputs=[src]),
        Stage("b", counter.stage("b", fail=fail_b), {"k": 2}, upstream=["a"]),
    ]


class Chain:
    """Two stages a -> b over one input file, a counter of their runs, and a work directory."""

    def __init__(self, tmp_path):
        self.src = tmp_path / "corpus.txt"
        self.src.write_text("x")
        self.counter = Counter()
        self.work = str(tmp_path / "work")

    def run(self, force=False, **kw):
        return run_stages(pipeline(self.counter, str(self.src), **kw), self.work, force=force)


@pytest.fixture
def chain(tmp_path):
    return Chain(tmp_path)


def test_second_run_skips_unchanged_stages(chain):
    chain.src.write_text("hello ")
    first = chain.run()
    assert [r.status for r in first] == ["ran", "ran"]
    assert open(first[1].record["outputs"]["file"]).read() == "hello ab"
    second = chain.run()
    assert [r.status for r in second] == ["cached", "cached"]
    assert chain.counter.calls == ["a", "b"]


def test_changed_input_content_reruns_the_stage_and_everything_downstream(chain):
    chain.src.write_text("hello ")
    chain.run()
    chain.src.write_text("bye ")
    results = chain.run()
    assert [r.status for r in results] == ["ran", "ran"]
    assert open(results[1].record["outputs"]["file"]).read() == "bye ab"


def test_changed_config_section_reruns(chain):
    chain.run()
    results = chain.run(section_a={"k": 99})
    assert [r.status for r in results] == ["ran", "ran"]


def test_force_reruns_everything(chain):
    chain.run()
    chain.run(force=True)
    assert chain.counter.calls == ["a", "b", "a", "b"]


def test_a_failed_stage_never_looks_complete(chain):
    with pytest.raises(RuntimeError):
        chain.run(fail_b=True)
    assert read_stage_record(chain.work, "a") is not None
    assert os.path.exists(os.path.join(chain.work, "b", "out.txt"))  # the half output is there...
    assert not os.path.exists(os.path.join(chain.work, "b", STAGE_FILE))  # ...but not marked complete
    results = chain.run()
    assert [r.status for r in results] == ["cached", "ran"]


def test_resumable_stage_keeps_partial_output_of_the_same_fingerprint(tmp_path):
    seen = []

    def run(ctx):
        ckpt = os.path.join(ctx.out_dir, "ckpt")
        seen.append(os.path.exists(ckpt))
        if not os.path.exists(ckpt):
            open(ckpt, "w").write("step 5")
            raise KeyboardInterrupt  # interrupted after a checkpoint
        return {"file": ckpt}

    work = str(tmp_path / "w")
    stage = Stage("train", run, {"lr": 1}, resumable=True)
    with pytest.raises(KeyboardInterrupt):
        run_stages([stage], work)
    run_stages([stage], work)
    assert seen == [False, True]
    # A different config never resumes from the old checkpoint.
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        run_stages([Stage("train", run, {"lr": 2}, resumable=True)], work)
    assert seen == [False]


def test_missing_upstream_is_a_clear_error(tmp_path):
    c = Counter()
    with pytest.raises(UserError, match="needs the output of a: run `bertpipe a` first"):
        run_stages([Stage("b", c.stage("b"), {}, upstream=["a"])], str(tmp_path))


def test_stage_record_holds_config_inputs_and_outputs(chain):
    chain.run()
    record = json.load(open(os.path.join(chain.work, "a", STAGE_FILE)))
    assert record["config"] == {"k": 1}
    assert list(record["inputs"]) == [str(chain.src)]
    assert len(record["inputs"][str(chain.src)]) == 64
    assert record["outputs"]["file"].endswith("out.txt")


def test_unwritable_work_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write to"):
        run_stages([], str(blocker / "sub"))
