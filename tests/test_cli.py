"""The command line as a new user meets it: help, and bad input as one line with an exit code."""

import pytest

from pipeline.cli import STAGE_HELP
from tests.harness import assert_one_line_error, bertpipe


def run(*args, cwd=None):
    return bertpipe(*args, cwd=cwd, timeout=300, check=False)


@pytest.mark.parametrize("command", ["run", "config", "predict", "score", *STAGE_HELP])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: bertpipe " + command)
    assert "--config" in result.stdout or command in ("predict", "score")


def test_no_command_prints_help_and_exits_2():
    result = run()
    assert result.returncode == 2 and "COMMAND" in result.stdout


def test_missing_config(tmp_path):
    assert_one_line_error(run("run", "--config", str(tmp_path / "nope.yaml")), 2, "not found")


def test_bad_override():
    assert_one_line_error(run("run", "--set", "pretrain.batch_size=lots"), 2, "pretrain.batch_size")
    assert_one_line_error(run("run", "--set", "nonsense"), 2, "section.key=value")


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("run", "--work-dir", str(blocker / "run"), "--no-mlflow")
    assert_one_line_error(result, 1, "cannot write to")


def test_config_command_prints_resolved_yaml():
    result = run("config", "--set", "pretrain.steps=7")
    assert result.returncode == 0
    assert "steps: 7" in result.stdout


def test_corpus_glob_matching_nothing(tmp_path):
    result = run("vocab", "--no-mlflow", "--work-dir", str(tmp_path / "run"), "--set", f"data.corpus=[{tmp_path}/none/*.txt]")
    assert_one_line_error(result, 1, "matches no files: check data.corpus")


def test_a_user_error_is_the_only_line_on_stderr(tmp_path):
    """TensorFlow's native start-up banners ("oneDNN custom operations are on", "Could not
    find cuda drivers") are filtered: a command that loads TensorFlow and fails on the
    user's input prints exactly its one error line."""
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    result = run("predict", "--model", str(tmp_path / "none"), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"))  # fmt: skip
    assert_one_line_error(result, 1, "is not a SavedModel")
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.splitlines() if line.startswith("bertpipe:")]


def test_an_old_key_name_still_works_with_one_note_line(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("finetune:\n  s:\n    type: classification\n    train_file: a.jsonl\n    eval_file: b.jsonl\n")
    result = run("config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("bertpipe: note:")]
    assert notes == ["bertpipe: note: eval_file is now called test_file (scored once, at the end; "
                     "a dev split of train_file chooses the checkpoint)"]
    assert "test_file: " + str(tmp_path / "b.jsonl") in result.stdout and "eval_file" not in result.stdout


def test_the_summary_sets_each_tasks_start_against_random_init_and_tfidf_in_test_points():
    from pipeline.cli import _start_verdict

    def spread(*runs):
        mean = sum(runs) / len(runs)
        std = (sum((r - mean) ** 2 for r in runs) / (len(runs) - 1)) ** 0.5
        return {"mean": mean, "std": std, "runs": list(runs)}

    outputs = {"type": "classification", "metric": "accuracy", "init": "runs/demo/pretrain/encoder.weights.h5",
               "test": {"main": spread(0.70, 0.72), "random_init": spread(0.60, 0.61), "tfidf": spread(0.73, 0.73)}}
    line = _start_verdict(outputs)
    assert line.startswith("test accuracy, mean of 2 runs: pretrained +10.5 points over random init (beyond the noise")
    assert "pretrained -2.0 points over tfidf" in line
    outputs["test"]["random_init"] = spread(0.62, 0.70)  # std 5.7 points: a 5-point gap is noise
    assert "+5.0 points over random init (within the noise: twice the larger std is 11.3)" in _start_verdict(outputs)
    assert _start_verdict({"summary": "7789 tokens learned"}) is None  # not a fine-tuning stage
