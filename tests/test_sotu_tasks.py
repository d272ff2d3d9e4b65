"""The in-domain sotu tasks (beam_jobs/sotu_tasks.py), built from the installed `sotu` package (a dependency):
split by president, a label-scarce set drawn from train, a pretraining corpus of the train presidents only; and
the pipeline's `datasets` stage, which builds them under the run directory."""

import csv
import filecmp
import json
import os

import pytest

from beam_jobs import sotu_tasks as tasks

SPLITS = ("train", "train_1k", "dev", "test")


def _rows(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sotu") / "tasks")
    return out, tasks.build(out)


def test_no_president_stands_on_two_sides_of_any_task(built):
    out, record = built
    for task in tasks.TASKS:
        seen = {split: {r["president"] for r in _rows(os.path.join(out, task, f"{split}.jsonl"))} for split in SPLITS}
        assert not seen["train"] & seen["dev"] and not seen["train"] & seen["test"] and not seen["dev"] & seen["test"]
        for split in ("dev", "test"):
            assert seen[split] <= {p for p, s in record["presidents"].items() if s == split}
    # Cleveland and Trump served two separate terms (two ids each in the metadata): still one president.
    assert len(record["presidents"]) == 43


def test_every_task_has_thousands_of_test_paragraphs_and_both_sides_of_every_label(built):
    out, _ = built
    for task in tasks.TASKS:
        test, dev = _rows(os.path.join(out, task, "test.jsonl")), _rows(os.path.join(out, task, "dev.jsonl"))
        labels = {r["label"] for r in _rows(os.path.join(out, task, "train.jsonl"))}
        assert len(test) >= 2000
        assert {r["label"] for r in test} == {r["label"] for r in dev} == labels and len(labels) >= 2


def test_the_label_scarce_set_is_1000_balanced_train_paragraphs(built):
    out, _ = built
    for task in tasks.TASKS:
        train = {json.dumps(r, sort_keys=True) for r in _rows(os.path.join(out, task, "train.jsonl"))}
        scarce = _rows(os.path.join(out, task, "train_1k.jsonl"))
        assert len(scarce) == 1000 and {json.dumps(r, sort_keys=True) for r in scarce} <= train
        counts = [sum(r["label"] == label for r in scarce) for label in {r["label"] for r in scarce}]
        assert max(counts) - min(counts) <= 1


def test_the_pretraining_corpus_is_the_train_presidents_speeches_only(built):
    out, record = built
    with open(os.path.join(tasks.sotu_dir(), "metadata.csv"), newline="", encoding="utf-8") as fh:
        president = {row["fileid"]: row["president_full"] for row in csv.DictReader(fh)}
    files = sorted(os.listdir(os.path.join(out, "pretrain_corpus")))
    assert files == sorted(f"{fileid}.txt" for fileid in record["speeches"]["train"])
    assert {record["presidents"][president[f.removesuffix(".txt")]] for f in files} == {"train"}
    held_out = {r["text"] for task in tasks.TASKS for split in ("dev", "test")
                for r in _rows(os.path.join(out, task, f"{split}.jsonl"))}
    corpus = " ".join(" ".join(open(os.path.join(out, "pretrain_corpus", f), encoding="utf-8").read().split())
                      for f in files)
    assert not any(text in corpus for text in sorted(held_out)[:300])  # no dev/test paragraph was read


def test_a_rebuild_writes_identical_files(built, tmp_path):
    out, _ = built
    again = str(tmp_path / "again")
    tasks.build(again)
    for task in tasks.TASKS:
        for split in SPLITS:
            assert filecmp.cmp(os.path.join(out, task, f"{split}.jsonl"), os.path.join(again, task, f"{split}.jsonl"),
                               shallow=False)
    assert filecmp.cmp(os.path.join(out, "splits.json"), os.path.join(again, "splits.json"), shallow=False)


def test_an_unfit_split_is_named():
    counts = {"era": {"train": {"a": 900, "b": 900}, "dev": {"a": 600, "b": 10}, "test": {"a": 1500, "b": 200}}}
    problems = tasks.split_problems({t: {s: tasks.collections.Counter(c) for s, c in v.items()}
                                     for t, v in counts.items()})
    assert any("1700 test paragraphs" in p for p in problems)
    assert any("b is 10 of 610 dev" in p for p in problems) and any("b is 200 of 1700 test" in p for p in problems)


def test_the_datasets_stage_builds_the_tasks_under_the_run_directory_once(tmp_path):
    """`datasets.sotu_tasks: true` puts the tasks below run.work_dir, where ${run.work_dir}/... paths find them
    (after --set overrides: they follow run.work_dir), and a second run finds them up to date."""
    from pipeline.contract.config import load_config
    from pipeline.runner import run_stages
    from pipeline.stages import DATASETS, build_stages

    config = tmp_path / "c.yaml"
    config.write_text("datasets:\n  sotu_tasks: true\ndata:\n  corpus: ${run.work_dir}/datasets/sotu_tasks/"
                      "pretrain_corpus/*.txt\nfinetune:\n  era:\n    type: classification\n"
                      "    train_file: ${run.work_dir}/datasets/sotu_tasks/era/train_1k.jsonl\n")
    work = tmp_path / "elsewhere"
    cfg = load_config(str(config), [f"run.work_dir={work}"])
    assert cfg.finetune["era"].train_file == str(work / "datasets" / "sotu_tasks" / "era" / "train_1k.jsonl")
    assert cfg.data.corpus == [str(work / "datasets" / "sotu_tasks" / "pretrain_corpus" / "*.txt")]
    stages = build_stages(cfg)
    assert [s.name for s in stages][:2] == [DATASETS, "vocab"]
    first = run_stages(stages[:1], str(work))
    assert first[0].status == "ran" and os.path.exists(cfg.finetune["era"].train_file)
    assert "presidents" in first[0].record["outputs"]["summary"]
    assert run_stages(stages[:1], str(work))[0].status == "cached"
    # No datasets asked for: no stage.
    assert [s.name for s in build_stages(load_config(None, ["datasets.sotu_tasks=false"]))][0] != DATASETS
