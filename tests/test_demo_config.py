"""configs/demo.yaml itself, end to end from the command line, made tiny with --set (a tiny BERT, two
pretraining steps, a tenth of an epoch, one repeat): the datasets stage builds the sotu tasks under the run directory,
the pretraining corpus is the train presidents' speeches only, and the summary sets the pretrained start
against random init and TF-IDF on the era task's real dev and test presidents."""

import json
import os

import pytest

from tests.harness import DATA, bertpipe, stage_statuses

pytestmark = pytest.mark.slow

TINY = [
    f"vocab.vocab_file={os.path.join(DATA, 'vocab', 'bert-base-uncased-vocab.txt')}",  # no vocab learning
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "pretrain.budget=8192 tokens", "pretrain.eval_every=null", "pretrain.eval_steps=2",
    "finetune.era.epochs=0.1", "finetune.era.eval_batch_size=256", "finetune.era.repeats=1",
    "run.stages=[vocab, prepare, pretrain, finetune]",
]


def test_the_demo_config_runs_end_to_end_when_made_tiny(tmp_path):
    work = tmp_path / "run"
    sets = [arg for value in TINY for arg in ("--set", value)]
    result = bertpipe("run", "--no-mlflow", "--work-dir", work, *sets, cwd=tmp_path, timeout=1500)
    assert stage_statuses(result) == {s: "ran" for s in ("datasets", "vocab", "prepare", "pretrain", "finetune:era")}

    built = work / "datasets" / "sotu_tasks"
    splits = json.loads((built / "splits.json").read_text())
    prepare = json.loads((work / "prepare" / "stage.json").read_text())
    read = {os.path.basename(p).removesuffix(".txt") for p in prepare["inputs"] if p.endswith(".txt")}
    assert read == set(splits["speeches"]["train"])  # pretraining never read a dev or test president

    era = json.loads((work / "finetune" / "era" / "finetune_result.json").read_text())
    counts = splits["tasks"]["era"]
    assert era["records"] == {name: sum(counts[src].values())
                              for name, src in (("train", "train_1k"), ("dev", "dev"), ("test", "test"))}
    assert set(era["test"]) == {"main", "random_init", "tfidf"}
    # The summary's last lines: the pretrained start against random init and TF-IDF (the repeats' form: test_cli).
    verdict = [line for line in result.stdout.splitlines() if line.startswith("  era: ")]
    assert len(verdict) == 1 and verdict[0].startswith("  era: test accuracy, one run: pretrained ")
    assert " points over random init; pretrained " in verdict[0] and verdict[0].endswith(" points over tfidf")
