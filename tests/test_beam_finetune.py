"""Fine-tuning data for every task type on the shipped samples."""

import json
import os

import numpy as np
import pytest

from beam_jobs.finetune_data import prepare_task_data
from pipeline.contract import schema
from pipeline.contract.config import task_config
from pipeline.contract.errors import UserError
from tests.conftest import DATA

VOCAB = os.path.join(DATA, "vocab/bert-base-uncased-vocab.txt")


def _read(directory):
    import tensorflow as tf

    m = schema.read_manifest(directory)
    raw = list(tf.data.TFRecordDataset(schema.shard_paths(directory, m)).batch(100_000).take(1))
    if not raw:
        return m, {}
    parsed = tf.io.parse_example(raw[0], schema.parse_spec(m.kind, m.shapes()))
    return m, {k: v.numpy() for k, v in parsed.items()}


def test_a_dev_file_is_dev_whole_and_nothing_is_carved_from_train(tmp_path):
    rows = [json.loads(line) for line in open(os.path.join(DATA, "sotu/party_train.jsonl"), encoding="utf-8")]
    dev_file = tmp_path / "dev.jsonl"
    dev_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:150]))
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[150:600]))
    task = task_config(type="classification", train_file=str(train_file), dev_file=str(dev_file),
                       test_file=os.path.join(DATA, "sotu/party_eval.jsonl"), label_field="party",
                       split_field="speech", dev_fraction=0.3, max_seq_length=32)
    manifests = prepare_task_data(task, VOCAB, True, str(tmp_path / "o"), 0)
    ids = {name: set(_read(str(tmp_path / "o" / name))[1][schema.EXAMPLE_ID][:, 0].tolist()) for name in manifests}
    # Rows are numbered train file, dev file, test file: each split is its own file, whole.
    assert ids["train"] == set(range(450)) and ids["dev"] == set(range(450, 600))
    assert min(ids["test"]) == 600 and manifests["dev"].config["groups"] is None


def test_classification_from_jsonl_with_a_test_file_and_dev_carved_from_train(tmp_path):
    task = task_config(
        type="classification", train_file=os.path.join(DATA, "reviews/train.jsonl"),
        test_file=os.path.join(DATA, "reviews/test.jsonl"), max_seq_length=32,
    )  # fmt: skip
    out = tmp_path / "sent"
    manifests = prepare_task_data(task, VOCAB, True, str(out), 0)
    assert set(manifests) == {"train", "dev", "test"}
    m, f = _read(str(out / "train"))
    (md, fd), (mt, ft) = _read(str(out / "dev")), _read(str(out / "test"))
    assert m.labels == ["negative", "positive"] and m.num_records == len(f[schema.LABEL])
    # dev is dev_fraction (0.1) of the training file's rows, exactly; test is the test file, whole.
    assert m.num_records + md.num_records == 8457 and md.num_records == round(0.1 * 8457)
    assert mt.num_records == 2111 and md.config["split"] == "dev"
    ids = {name: set(x[schema.EXAMPLE_ID][:, 0].tolist()) for name, x in (("train", f), ("dev", fd), ("test", ft))}
    assert ids["train"] | ids["dev"] == set(range(8457)) and not ids["train"] & ids["dev"]
    assert ids["test"] == set(range(8457, 8457 + 2111))  # test rows are numbered after the training file's
    assert m.counts["truncated"] > 0  # max 32 tokens trims some reviews
    assert set(np.unique(f[schema.LABEL])) == {0, 1}
    assert (f[schema.TOKEN_IDS][:, 0] == 101).all() and (f[schema.SEGMENT_IDS] == 0).all()
    n = f[schema.PADDING_MASK].sum(1)
    assert (f[schema.TOKEN_IDS][np.arange(len(n)), n - 1] == 102).all()
    first = json.loads(open(os.path.join(DATA, "reviews/train.jsonl")).readline())
    home = f if 0 in ids["train"] else fd
    assert home[schema.LABEL][home[schema.EXAMPLE_ID][:, 0] == 0][0, 0] == m.labels.index(first["label"])
    # examples.jsonl holds each record's source row.
    examples = [json.loads(line) for line in open(out / "test" / schema.EXAMPLES_NAME)]
    test_rows = [json.loads(line) for line in open(os.path.join(DATA, "reviews/test.jsonl"))]
    assert [e["text"] for e in examples] == [r["text"] for r in test_rows]


def test_pair_and_split_field_keeps_groups_together(tmp_path):
    task = task_config(type="pair", train_file=os.path.join(DATA, "snli/snli_sample.jsonl"), test_fraction=0.5)
    manifests = prepare_task_data(task, VOCAB, True, str(tmp_path / "snli"), 0)
    # 3 rows: one to test, one to dev, one left to train (each carved split keeps at least one).
    assert [manifests[s].num_records for s in ("train", "dev", "test")] == [1, 1, 1]
    m, f = _read(str(tmp_path / "snli" / manifests["train"].config["split"]))
    assert m.labels == ["contradiction", "entailment", "neutral"]
    assert (f[schema.SEGMENT_IDS].max(1) == 1).all()  # text_b is segment 1
    # Grouped split: rows of one speech never straddle two of train, dev and test.
    task = task_config(
        type="long_document", train_file=os.path.join(DATA, "sotu/paragraphs.jsonl"), label_field="party",
        split_field="speech", max_seq_length=32, doc_stride=16, max_chunks=3, test_fraction=0.3,
    )  # fmt: skip
    manifests = prepare_task_data(task, VOCAB, True, str(tmp_path / "long"), 0)
    rows = [json.loads(line) for line in open(os.path.join(DATA, "sotu/paragraphs.jsonl"))]
    (mt, ft), (_, fd), (_, fe) = (_read(str(tmp_path / "long" / s)) for s in ("train", "dev", "test"))
    speeches = lambda f: {rows[i]["speech"] for i in f[schema.EXAMPLE_ID][:, 0]}  # noqa: E731
    assert speeches(ft) and speeches(fd) and speeches(fe)
    assert not speeches(ft) & speeches(fe) and not speeches(ft) & speeches(fd) and not speeches(fd) & speeches(fe)
    groups = len({r["speech"] for r in rows})
    assert len(speeches(fe)) == round(0.3 * groups) and len(speeches(fd)) == round(0.1 * groups)
    assert manifests["test"].config["groups"] == len(speeches(fe))
    assert ft[schema.TOKEN_IDS].shape[1:] == (3, 32)
    chunks = ft[schema.CHUNK_MASK]
    assert (chunks[:, 0] == 1).all() and chunks.sum() == mt.counts["chunks"]
    assert ((ft[schema.PADDING_MASK].max(2) == 1) == (chunks == 1)).all()


def test_a_split_field_missing_from_the_file_is_a_one_line_error(tmp_path):
    task = task_config(type="classification", train_file=os.path.join(DATA, "reviews/test.jsonl"), split_field="speaker")
    with pytest.raises(UserError, match="no column 'speaker'") as err:
        prepare_task_data(task, VOCAB, True, str(tmp_path / "o"), 0)
    assert "\n" not in str(err.value)


def test_qa_offsets_map_back_to_answer_text(tmp_path):
    task = task_config(
        type="qa", train_file=os.path.join(DATA, "squad/squad_sample.json"), test_file=os.path.join(DATA, "squad/squad_sample.json"),
        max_seq_length=64, doc_stride=24, max_query_length=16,
    )  # fmt: skip
    prepare_task_data(task, VOCAB, True, str(tmp_path / "qa"), 0)
    m, f = _read(str(tmp_path / "qa/test"))  # the whole file (train and dev share it out)
    examples = {e["example_id"]: e for e in map(json.loads, open(tmp_path / "qa/test" / schema.EXAMPLES_NAME))}
    assert len(examples) == 5 and m.num_records > 5  # long contexts need several windows
    found = set()
    for row in range(m.num_records):
        ex = examples[int(f[schema.EXAMPLE_ID][row, 0])]
        s, e = int(f[schema.START_POSITION][row, 0]), int(f[schema.END_POSITION][row, 0])
        starts, ends = f[schema.TOKEN_CHAR_STARTS][row], f[schema.TOKEN_CHAR_ENDS][row]
        ctx = f[schema.SEGMENT_IDS][row] == 1
        assert (starts[~ctx] == -1).all()
        if s:
            found.add(ex["example_id"])
            assert ex["context"][starts[s] : ends[e]] == ex["answers"][0]["text"]  # exact characters
    assert found == set(examples)  # every answer is inside at least one window
    # Each context token is the max-context token of exactly one window.
    for ex_id in examples:
        rows = np.flatnonzero(f[schema.EXAMPLE_ID][:, 0] == ex_id)
        pos = np.concatenate([f[schema.TOKEN_CHAR_STARTS][r][f[schema.TOKEN_IS_MAX_CONTEXT][r] == 1] for r in rows])
        all_pos = np.unique(np.concatenate([f[schema.TOKEN_CHAR_STARTS][r][f[schema.SEGMENT_IDS][r] == 1] for r in rows]))
        assert sorted(pos.tolist()) == sorted(set(all_pos.tolist()) - {-1})


def test_bad_rows_are_counted_or_one_line_errors(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(
        '{"text": "good movie", "label": "pos"}\n{"text": "", "label": "neg"}\n'
        '{"text": "odd", "label": "maybe"}\n{"text": "bad movie", "label": "neg"}\n'
    )
    task = task_config(type="classification", train_file=str(f), test_file=str(f), labels=["neg", "pos"])
    m = prepare_task_data(task, VOCAB, True, str(tmp_path / "o"), 0)["test"]
    assert m.skipped == {"empty_or_missing_text": 1, "label_not_in_label_set": 1} and m.num_records == 2
    with pytest.raises(UserError, match="no column 'sentence'"):
        prepare_task_data(task.model_copy(update={"text_field": "sentence"}), VOCAB, True, str(tmp_path / "o2"), 0)
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "pos"}\n')
    with pytest.raises(UserError, match="at least two classes"):
        prepare_task_data(task.model_copy(update={"train_file": str(one)}), VOCAB, True, str(tmp_path / "o3"), 0)
    squad = json.load(open(os.path.join(DATA, "squad/squad_sample.json")))
    squad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 3
    bad = tmp_path / "squad.json"
    bad.write_text(json.dumps(squad))
    qa = task_config(type="qa", train_file=str(bad), test_file=str(bad), max_seq_length=64, doc_stride=24, max_query_length=16)
    assert prepare_task_data(qa, VOCAB, True, str(tmp_path / "q"), 0)["test"].skipped == {"answer_text_not_at_answer_start": 1}


def test_pair_truncation_trims_b_on_ties_like_bert_and_the_serving_graph(tmp_path):
    rows = [{"text": "one two three four five", "text_b": "six seven eight nine ten", "label": "x"},
            {"text": "alpha beta", "text_b": "gamma", "label": "y"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    task = task_config(type="pair", train_file=str(path), test_file=str(path), max_seq_length=10)
    prepare_task_data(task, VOCAB, True, str(tmp_path / "out"), 0)
    _, rec = _read(str(tmp_path / "out" / "test"))
    first = np.flatnonzero(rec[schema.PADDING_MASK].sum(axis=1) == 10)[0]
    segments = rec[schema.SEGMENT_IDS][first]
    # budget 7 pieces for 5 + 5: B is cut on the tie (5, 4), then A (4, 4), then B (4, 3).
    assert (segments == 0).sum() == 1 + 4 + 1 and (segments == 1).sum() == 3 + 1
