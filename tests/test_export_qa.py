"""QA export: in-graph windows and span stitching equal the training side's Python path.

The reference windows a context the way the data job does (BERT's doc spans,
`bert_keras.tasks.qa.max_context`, `beam_jobs.finetune_data.char_offsets`), runs the Keras model
on each window padded to max length, and decodes with the evaluation's own
`bert_keras.qa_postprocess.best_answers` (with n_best covering every token, so
it is exhaustive like the graph). Contexts: the shipped SQuAD excerpt plus
accented text; then the bad inputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.finetune_data import char_offsets
from bert_keras.export import export_task
from bert_keras.qa_postprocess import Window, best_answers
from bert_keras.tasks.qa import max_context
from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract.schema import PADDING_MASK, SEGMENT_IDS, TOKEN_IDS
from tests.export_models import REPO, SEQ, VOCAB, tiny_task_model

STRIDE, MAX_QUERY = 8, 8

_vocab = load_vocab(VOCAB)
_tok = make_tokenizer(_vocab)
_ids = special_ids(_vocab)


def squad_pairs() -> list[tuple[str, str]]:
    with open(os.path.join(REPO, "data", "squad", "squad_sample.json"), encoding="utf-8") as fh:
        data = json.load(fh)["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    pairs.append(("Où est le café?", "Le café « Zoë » est à Paris, près de l'église Saint-Étienne. 🙂 Ça coûte 3,50 €."))
    return pairs


def reference(model, pairs, allow_null: bool):
    windows, contexts = [], {}
    for eid, (question, context) in enumerate(pairs):
        contexts[eid] = context
        q = _tok.tokenize(tf.constant([question]))[0].numpy()[:MAX_QUERY]
        ids, starts, ends = (t[0].numpy() for t in _tok.tokenize_with_offsets(tf.constant([context])))
        cs, ce = char_offsets(context, starts), char_offsets(context, ends)
        room = SEQ - len(q) - 3
        spans, start = [], 0  # the data job's loop (google-research/bert run_squad.py)
        while True:
            length = min(len(ids) - start, room)
            spans.append((start, length))
            if start + length >= len(ids):
                break
            start += min(length, STRIDE)
        offset = len(q) + 2
        for wi, (start, length) in enumerate(spans):
            row = np.concatenate(([_ids.cls], q, [_ids.sep], ids[start : start + length], [_ids.sep]))
            feats = {k: np.zeros((1, SEQ), np.int32) for k in (TOKEN_IDS, SEGMENT_IDS, PADDING_MASK)}
            feats[TOKEN_IDS][0, : len(row)] = row
            feats[SEGMENT_IDS][0, offset : len(row)] = 1
            feats[PADDING_MASK][0, : len(row)] = 1
            out = model(feats, training=False)
            char_starts, char_ends, is_max = np.full(SEQ, -1), np.full(SEQ, -1), np.zeros(SEQ)
            char_starts[offset : offset + length] = cs[start : start + length]
            char_ends[offset : offset + length] = ce[start : start + length]
            is_max[offset : offset + length] = [max_context(spans, start + k, wi) for k in range(length)]
            windows.append(Window(eid, out["start_logits"].numpy()[0], out["end_logits"].numpy()[0],
                                  char_starts, char_ends, is_max))
    return best_answers(windows, contexts, n_best=SEQ, max_answer_length=30, allow_null=allow_null)


def null_leaning_model():
    """A QA model whose [CLS] logits compete: the span head leans towards the [CLS] vector,
    just far enough that some SQuAD questions get the empty answer and some a span (the
    lean is searched, so the test does not hang on one random initialization)."""
    model = tiny_task_model("qa", seed=3)
    feats = {k: np.zeros((1, SEQ), np.int32) for k in (TOKEN_IDS, SEGMENT_IDS, PADDING_MASK)}
    feats[TOKEN_IDS][0, :2] = [_ids.cls, _ids.sep]
    feats[PADDING_MASK][0, :2] = 1
    cls = model.encoder(feats, training=False)["sequence_output"].numpy()[0, 0]
    kernel = model.head.dense.kernel.numpy()  # (hidden, 2): start and end
    pairs = squad_pairs()
    for lean in np.linspace(0.05, 3.0, 60):
        model.head.dense.kernel.assign(kernel + lean * (cls / np.linalg.norm(cls))[:, None])
        texts = [a.text for a in reference(model, pairs, True).values()]
        if 0 < texts.count("") < len(texts):
            return model
    raise AssertionError("no lean towards [CLS] gives both null and span answers")


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    models = {False: tiny_task_model("qa"), True: null_leaning_model()}
    for allow, model in models.items():
        export_task(model, "qa", VOCAB, True, [], SEQ, str(root / f"null_{allow}"), doc_stride=STRIDE,
                    max_query_length=MAX_QUERY, allow_no_answer=allow)
    return root, models


@pytest.mark.parametrize("allow_null", [False, True])
def test_graph_answers_equal_the_evaluation_path(qa, allow_null):
    root, models = qa
    pairs = squad_pairs()
    want = reference(models[allow_null], pairs, allow_null)
    serve = tf.saved_model.load(str(root / f"null_{allow_null}")).signatures["serving_default"]
    got = serve(question=tf.constant([q for q, _ in pairs]), context=tf.constant([c for _, c in pairs]))
    answers = [a.decode("utf-8") for a in got["answer"].numpy()]
    assert answers == [want[i].text for i in range(len(pairs))]
    assert got["start_char"].numpy().tolist() == [want[i].char_start for i in range(len(pairs))]
    assert got["end_char"].numpy().tolist() == [want[i].char_end for i in range(len(pairs))]
    np.testing.assert_allclose(got["score"].numpy(), [want[i].score for i in range(len(pairs))], rtol=1e-5, atol=1e-5)
    if allow_null:
        assert 0 < answers.count("") < len(answers), "both the null and the span branch are exercised"
    else:
        assert all(answers), "without allow_no_answer every non-empty context yields a span"
        for (_, context), a, s, e in zip(pairs, answers, got["start_char"].numpy(), got["end_char"].numpy(), strict=True):
            assert context[s:e] == a  # offsets are Python string indices, accents and emoji included


def test_bad_inputs_each_get_an_answer(qa):
    root, _ = qa
    long_context = ("In 1858 the Virgin Mary appeared to Saint Bernadette in Lourdes. " * 1600)[:100_000]
    questions = [b"", b"   ", b"Who?", b"Who appeared?", b"bad \xff\xfe?", b"Who appeared in 1858?"]
    contexts = [b"", b"Some context.", b"   ", b"Caf\xc3\xa9 \xff\xfe r\xc3\xa9sum\xc3\xa9 here.", b"A \xc3 B",
                long_context.encode()]
    serve = tf.saved_model.load(str(root / "null_False")).signatures["serving_default"]
    got = {k: v.numpy() for k, v in serve(question=tf.constant(questions), context=tf.constant(contexts)).items()}
    assert all(v.shape[0] == len(questions) for v in got.values())
    assert got["answer"][0] == b"" and got["start_char"][0] == -1  # an empty context has no span
    assert got["answer"][2] == b"" and got["start_char"][2] == -1
    for i in (1, 3, 4, 5):
        text = contexts[i].decode("utf-8", errors="replace")  # offsets count invalid bytes as U+FFFD, like Python
        s, e = got["start_char"][i], got["end_char"][i]
        assert 0 <= s < e <= len(text)
        assert text[s:e] == got["answer"][i].decode("utf-8", errors="replace")
    assert np.isfinite(got["score"]).all()
