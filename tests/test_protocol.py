"""The fine-tuning protocol: dev chooses, test reports once, repeats are distinct runs, baselines beside.

One tiny fine-tuning of 3 repeats on real movie reviews (shared by the tests below) with
every evaluation recorded: which model, which example ids it was asked about and scored.
"""

import json
import os

import numpy as np
import pytest

from beam_jobs.finetune_data import prepare_task_data
from beam_jobs.task_splits import DEV, TEST, TRAIN, Splitter, group_key
from bert_keras.finetune import run_finetune
from bert_keras.tasks import TASKS
from pipeline.contract.config import BertConfig, task_config
from tests.conftest import DATA

TINY = BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128,
                   dropout=0.0, attention_dropout=0.0)
VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt")
REPEATS = 3


def _rows(path, n):
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    pos = [r for r in rows if r["label"] == "positive"][: n // 2]
    return pos + [r for r in rows if r["label"] == "negative"][: n - len(pos)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _ids(data_dir, split):
    with open(os.path.join(data_dir, split, "examples.jsonl"), encoding="utf-8") as fh:
        return {json.loads(line)["example_id"] for line in fh}


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    train = _write(root / "train.jsonl", _rows(os.path.join(DATA, "reviews", "train.jsonl"), 80))
    test = _write(root / "test.jsonl", _rows(os.path.join(DATA, "reviews", "test.jsonl"), 40))
    task = task_config(type="classification", train_file=train, test_file=test, dev_fraction=0.25, repeats=REPEATS,
                       max_seq_length=32, batch_size=16, epochs=2, eval_every=4, learning_rate=1e-3,
                       precision="float32", log_every=4, checkpoint_every=1000, warmup_ratio=0.0)
    data_dir = str(root / "data")
    prepare_task_data(task, VOCAB, True, data_dir, 0)
    dirs = {s: os.path.join(data_dir, s) for s in (TRAIN, DEV, TEST)}
    calls = []
    kind = TASKS["classification"]
    evaluate = kind.evaluate

    def recording(model, dataset, ctx):  # a spy: the real evaluation, with what it was asked about
        result = evaluate(model, dataset, ctx)
        calls.append({"model": id(model), "asked": set(ctx.examples), "scored": {r["example_id"] for r in result.rows}})
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kind, "evaluate", recording)
        out = run_finetune("sentiment", task, TINY, VOCAB, True, dirs, None, str(root / "run"), 0, log_fn=lambda m: None)
    return {"out": out, "calls": calls, "dirs": dirs, "task": task, "root": root,
            "ids": {s: _ids(data_dir, s) for s in (TRAIN, DEV, TEST)}}


def test_dev_never_sees_a_test_row_and_test_is_scored_once_per_run(protocol):
    ids, calls = protocol["ids"], protocol["calls"]
    assert ids[TRAIN] and ids[DEV] and ids[TEST]
    assert not ids[TRAIN] & ids[DEV] and not ids[TRAIN] & ids[TEST] and not ids[DEV] & ids[TEST]
    test_calls = [c for c in calls if c["scored"] & ids[TEST]]
    dev_calls = [c for c in calls if c not in test_calls]
    # Every evaluation during training (and the choice) is asked about dev rows only and scores dev rows only.
    assert dev_calls and all(c["asked"] == ids[DEV] and c["scored"] == ids[DEV] for c in dev_calls)
    # Each of the 3 runs is scored on test exactly once, on all of test, after its dev evaluations.
    assert len(test_calls) == REPEATS and {len([c for c in test_calls if c["model"] == m]) for m in
                                           {c["model"] for c in calls}} == {1}
    assert all(c["scored"] == ids[TEST] for c in test_calls)
    for model in {c["model"] for c in calls}:
        mine = [c for c in calls if c["model"] == model]
        assert mine[-1] in test_calls and len(mine) > 1  # dev evaluations first, the test one last
    out = protocol["out"]
    assert out.chosen_by == "dev accuracy" and all(r.chosen_by == "dev accuracy" for r in out.runs)
    assert out.records == {TRAIN: len(ids[TRAIN]), DEV: len(ids[DEV]), TEST: len(ids[TEST])}


def test_repeats_are_distinct_runs_reported_with_their_spread(protocol):
    out = protocol["out"]
    assert [r.seed for r in out.runs] == [0, 1, 2]
    assert len({r.weights for r in out.runs}) == REPEATS
    import h5py

    def first_kernel(path):
        with h5py.File(path, "r") as fh:
            found = []
            fh.visititems(lambda name, obj: found.append(np.array(obj)) if hasattr(obj, "shape") and obj.ndim == 2
                          else None)
            return found[0]

    kernels = [first_kernel(r.weights) for r in out.runs]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])  # other seeds, weights
    assert len({r.test["loss"] for r in out.runs}) == REPEATS  # three results, not one reported thrice
    accuracy = [r.test["accuracy"] for r in out.runs]
    spread = out.test["main"]
    assert spread.runs == accuracy and spread.mean == pytest.approx(np.mean(accuracy))
    assert spread.std == pytest.approx(np.std(accuracy, ddof=1))
    assert "(3 runs; chosen on dev)" in out.summary and " ± " in out.summary
    # The exported repeat is the one dev ranks first, whatever test says.
    assert out.chosen.dev["accuracy"] == max(r.dev["accuracy"] for r in out.runs)
    with open(out.paths.reports["runs_csv"], encoding="utf-8") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + REPEATS + REPEATS  # header, 3 runs, 3 baseline runs


def test_a_killed_repeat_resumes_alone(protocol):
    out, root = protocol["out"], protocol["root"]
    os.remove(os.path.join(out.paths.runs, "main-seed1", "run.json"))  # as if killed after training seed 1
    logs = []
    again = run_finetune("sentiment", protocol["task"], TINY, VOCAB, True, protocol["dirs"], None, str(root / "run"), 0,
                         log_fn=logs.append)
    assert sum("finished before" in line for line in logs) == REPEATS - 1  # seeds 0 and 2 are read back
    assert any("resumed from checkpoint" in line for line in logs)  # seed 1 restarts from its last checkpoint
    for a, b in zip(again.runs, out.runs, strict=True):
        assert a.test == pytest.approx(b.test) and a.dev == pytest.approx(b.dev)


def test_the_tfidf_baseline_is_scikit_learn_on_the_same_splits(protocol):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    out = protocol["out"]
    split = {}
    for name in (TRAIN, DEV, TEST):
        with open(os.path.join(protocol["dirs"][name], "examples.jsonl"), encoding="utf-8") as fh:
            rows = sorted((json.loads(line) for line in fh), key=lambda r: r["example_id"])
        split[name] = ([r["text"] for r in rows], np.array([out.labels.index(r["label"]) for r in rows]))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(split[TRAIN][0])
    x = {name: vectorizer.transform(texts) for name, (texts, _) in split.items()}
    dev_accuracy = {}
    for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0):
        model = LogisticRegression(C=c, solver="liblinear").fit(x[TRAIN], split[TRAIN][1])
        dev_accuracy[c] = float(np.mean(model.predict(x[DEV]) == split[DEV][1]))
    best = max(dev_accuracy.values())
    runs = out.baselines["tfidf"]
    assert len(runs) == REPEATS and runs[0].c in [c for c, a in dev_accuracy.items() if a == best]
    model = LogisticRegression(C=runs[0].c, solver="liblinear").fit(x[TRAIN], split[TRAIN][1])
    assert all(r.test["accuracy"] == pytest.approx(float(np.mean(model.predict(x[TEST]) == split[TEST][1])))
               for r in runs)
    assert out.test["tfidf"].std == 0.0  # liblinear (primal): every seed gives the same model
    assert f" | tfidf {100 * out.test['tfidf'].mean:.1f} ± 0.0%" in out.summary


# ---- the split itself (no training) ---------------------------------------------------------
def test_grouped_splits_keep_groups_whole_and_take_exact_shares():
    with open(os.path.join(DATA, "sotu", "paragraphs.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    keys = [group_key(r, i, "speech") for i, r in enumerate(rows)]
    splitter = Splitter(keys, seed=0, dev_fraction=0.1, test_fraction=0.2)
    side = {}
    for i, r in enumerate(rows):
        side.setdefault(r["speech"], set()).add(splitter.split(r, i, "speech"))
    assert all(len(s) == 1 for s in side.values())  # no speech straddles two splits
    speeches = len(side)
    per_split = {name: sum(s == {name} for s in side.values()) for name in (TRAIN, DEV, TEST)}
    assert per_split == {TEST: round(0.2 * speeches), DEV: round(0.1 * speeches),
                         TRAIN: speeches - round(0.2 * speeches) - round(0.1 * speeches)} == splitter.counts
    # The place of a group depends on the seed and the group, not on the order of the rows.
    again = Splitter(reversed(keys), seed=0, dev_fraction=0.1, test_fraction=0.2)
    assert all(again.of_key(k) == splitter.of_key(k) for k in keys)
    assert any(Splitter(keys, 1, 0.1, 0.2).of_key(k) != splitter.of_key(k) for k in keys)
    # With a test file only dev is carved; dev_fraction 0 carves nothing.
    assert Splitter(keys, 0, 0.1, None).counts[TEST] == 0
    assert Splitter(keys, 0, 0.0, None).counts == {TEST: 0, DEV: 0, TRAIN: speeches}
