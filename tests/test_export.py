"""Raw-text SavedModels: every signature, proven in a fresh process that cannot import bertpipe.

References are computed here independently of the export graph: token ids from
the shared tokenizer, packing and windows written out in Python (Google BERT's
`_truncate_seq_pair`, the data job's long-document windows), rows padded to the
full max length, then the Keras task model. The SavedModel pads to each batch's
longest row instead, so agreement also proves that shortcut changes nothing.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bert_keras.export import EXPORT_INFO, export_encoder_embedding, export_task
from bert_keras.layers import Dense, bf16_matmuls
from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract.errors import UserError
from pipeline.contract.schema import CHUNK_MASK, PADDING_MASK, SEGMENT_IDS, TOKEN_IDS
from tests.export_models import LABELS, SEQ, VOCAB, tiny_encoder, tiny_task_model

STRIDE, MAX_CHUNKS = 12, 3
LONG = ("The committee reviewed the budget and the report twice. " * 3000)[:100_000]
BAD = [b"", b"   ", b"\t\n ", LONG.encode(), b"bad \xff\xfe bytes \xc3", "Café naïve façade".encode()]
GOOD = [
    b"An honest and keenly observed film.",
    b"Ultimately, it ponders the reasons we need stories so much.",
    b"A dull, lifeless affair that never finds its footing, despite a cast that clearly tried hard.",
]
TEXTS = GOOD + BAD
PAIR_B = [b"It is a film.", b"", b"Stories matter " * 20, b"x", b"\xff", LONG.encode()[:3000], b"ok", b"   ", b"yes"]

_vocab = load_vocab(VOCAB)
_tok = make_tokenizer(_vocab)
_ids = special_ids(_vocab)


def pieces(texts) -> list[list[int]]:
    return _tok.tokenize(tf.constant(texts)).to_list()


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """google-research/bert `_truncate_seq_pair`: pop from the longer, from b on ties."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def packed(rows: list[list[list[int]]], seq: int = SEQ) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] (B [SEP]) per row, padded to `seq`."""
    ids, segs = np.zeros((len(rows), seq), np.int32), np.zeros((len(rows), seq), np.int32)
    mask = np.zeros((len(rows), seq), np.int32)
    for i, segments in enumerate(rows):
        row = [_ids.cls] + segments[0] + [_ids.sep]
        seg = [0] * len(row)
        if len(segments) > 1:
            row += segments[1] + [_ids.sep]
            seg += [1] * (len(segments[1]) + 1)
        ids[i, : len(row)], segs[i, : len(row)], mask[i, : len(row)] = row, seg, 1
    return {TOKEN_IDS: ids, SEGMENT_IDS: segs, PADDING_MASK: mask}


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64).reshape(len(logits), -1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_single(model, texts):
    feats = packed([[p[: SEQ - 2]] for p in pieces(texts)])
    return feats, softmax(model(feats, training=False)["logits"])


def reference_pair(model, texts_a, texts_b):
    rows = [list(truncate_pair(a, b, SEQ - 3)) for a, b in zip(pieces(texts_a), pieces(texts_b), strict=True)]
    return softmax(model(packed(rows), training=False)["logits"])


def reference_long(model, texts):
    width = SEQ - 2
    out = []
    for p in pieces(texts):  # the data job's windows (bert_keras.tasks.long_document)
        starts = list(range(0, max(1, len(p) - width + STRIDE), STRIDE))[:MAX_CHUNKS]
        chunks = packed([[p[s : s + width]] for s in starts])
        feats = {k: np.zeros((1, MAX_CHUNKS, SEQ), np.int32) for k in chunks}
        for k, v in chunks.items():
            feats[k][0, : len(starts)] = v
        feats[CHUNK_MASK] = np.array([[1] * len(starts) + [0] * (MAX_CHUNKS - len(starts))], np.int32)
        out.append(softmax(model(feats, training=False)["logits"])[0])
    return np.stack(out)


def reference_embed(encoder, texts):
    feats = packed([[p[: SEQ - 2]] for p in pieces(texts)])
    out = encoder(feats, training=False)
    mask = feats[PADDING_MASK][..., None].astype(np.float64)
    mean = (np.asarray(out["sequence_output"]) * mask).sum(1) / mask.sum(1)
    return np.asarray(out["pooled_output"])[:, 0], mean


# A fresh interpreter: bertpipe's packages and keras_hub cannot even be imported.
# (Keras itself is imported by `import tensorflow` in TF 2.21; the graph does not need it.)
FRESH = r"""
import base64, json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bert_keras", "pipeline", "beam_jobs", "keras_hub"):
            raise ImportError(f"{name} must not be needed to serve")
sys.meta_path.insert(0, Block())
import tensorflow as tf
import tensorflow_text  # noqa: F401

def plain(v):
    v = v.numpy()
    if v.dtype == object:
        return [base64.b64encode(x).decode() for x in v.tolist()]
    return v.tolist()

jobs, out = json.load(open(sys.argv[1])), {}
for name, job in jobs.items():
    m = tf.saved_model.load(job["dir"])
    inputs = {k: tf.constant([base64.b64decode(x) for x in v]) for k, v in job["inputs"].items()}
    res = {"signatures": sorted(m.signatures)}
    res["serving_default"] = {k: plain(v) for k, v in m.signatures["serving_default"](**inputs).items()}
    text = inputs[job["text_input"]]
    res["embed"] = {k: plain(v) for k, v in m.signatures["embed"](text=text).items()}
    res["tokenize"] = {k: plain(v) for k, v in m.signatures["tokenize"](text=text).items()}
    n = len(next(iter(job["inputs"].values())))
    examples = [
        tf.train.Example(features=tf.train.Features(feature={
            k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[base64.b64decode(v[i])]))
            for k, v in job["inputs"].items()})).SerializeToString()
        for i in range(n)
    ]
    res["serve_examples"] = {k: plain(v) for k, v in m.signatures["serve_examples"](serialized=tf.constant(examples)).items()}
    out[name] = res
json.dump(out, open(sys.argv[2], "w"))
"""


def b64(values) -> list[str]:
    return [base64.b64encode(v).decode() for v in values]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    models = {
        "classification": tiny_task_model("classification"),
        "pair": tiny_task_model("pair", num_classes=3),
        "long_document": tiny_task_model("long_document"),
    }
    export_task(models["classification"], "classification", VOCAB, True, LABELS, SEQ, str(root / "classification"),
                extra_assets={"task_config.json": {"type": "classification"}, "NOTE.txt": "hello"})
    export_task(models["pair"], "pair", VOCAB, True, ["contradiction", "entailment", "neutral"], SEQ, str(root / "pair"))
    export_task(models["long_document"], "long_document", VOCAB, True, LABELS, SEQ, str(root / "long_document"),
                doc_stride=STRIDE, max_chunks=MAX_CHUNKS)
    models["embedding"] = tiny_encoder(1)
    export_encoder_embedding(models["embedding"], VOCAB, True, SEQ, str(root / "embedding"))
    return root, models


@pytest.fixture(scope="module")
def fresh(exported, tmp_path_factory):
    root, _ = exported
    jobs = {
        "classification": {"inputs": {"text": b64(TEXTS)}, "text_input": "text"},
        "pair": {"inputs": {"text_a": b64(TEXTS), "text_b": b64(PAIR_B)}, "text_input": "text_a"},
        "long_document": {"inputs": {"text": b64(TEXTS)}, "text_input": "text"},
        "embedding": {"inputs": {"text": b64(TEXTS)}, "text_input": "text"},
    }
    for name, job in jobs.items():
        job["dir"] = str(root / name)
    work = tmp_path_factory.mktemp("fresh")
    (work / "jobs.json").write_text(json.dumps(jobs))
    (work / "fresh.py").write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(work / "fresh.py"), str(work / "jobs.json"), str(work / "out.json")],
                          cwd=str(work), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


def test_classification_fresh_process_matches_in_memory_model(exported, fresh):
    _, models = exported
    res = fresh["classification"]
    assert res["signatures"] == ["embed", "serve_examples", "serving_default", "tokenize"]
    feats, want = reference_single(models["classification"], TEXTS)
    got = np.array(res["serving_default"]["probabilities"])
    assert got.shape == (len(TEXTS), 2)  # an answer for every input, the bad ones too
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(want[:, 0]) > 1e-3  # the inputs really give different outputs
    labels = [base64.b64decode(x).decode() for x in res["serving_default"]["label"]]
    assert labels == [LABELS[i] for i in want.argmax(1)]
    assert res["serving_default"]["label_id"] == want.argmax(1).tolist()
    np.testing.assert_allclose(np.array(res["serve_examples"]["probabilities"]), got, atol=1e-6)
    # The packed ids the graph feeds the model are the Python packing, trimmed to the batch's longest row.
    width = len(res["tokenize"][TOKEN_IDS][0])
    assert width == feats[PADDING_MASK].sum(1).max() <= SEQ
    for key in (TOKEN_IDS, SEGMENT_IDS, PADDING_MASK):
        np.testing.assert_array_equal(np.array(res["tokenize"][key]), feats[key][:, :width])


def test_pair_fresh_process_matches_bert_truncation(exported, fresh):
    _, models = exported
    res = fresh["pair"]
    assert "pair" in res["signatures"]
    got = np.array(res["serving_default"]["probabilities"])
    np.testing.assert_allclose(got, reference_pair(models["pair"], TEXTS, PAIR_B), atol=1e-5)
    np.testing.assert_allclose(np.array(res["serve_examples"]["probabilities"]), got, atol=1e-6)


def test_long_document_fresh_process_matches_chunked_model(exported, fresh):
    _, models = exported
    got = np.array(fresh["long_document"]["serving_default"]["probabilities"])
    np.testing.assert_allclose(got, reference_long(models["long_document"], TEXTS), atol=1e-5)


def test_embedding_fresh_process_matches_encoder(exported, fresh):
    _, models = exported
    pooled, mean = reference_embed(models["embedding"], TEXTS)
    for res in (fresh["embedding"]["serving_default"], fresh["embedding"]["embed"]):
        np.testing.assert_allclose(np.array(res["pooled"]), pooled, atol=1e-5)
        np.testing.assert_allclose(np.array(res["mean_pooled"]), mean, atol=1e-5)
    # A task export's embed signature is its own fine-tuned encoder's.
    pooled, mean = reference_embed(exported[1]["classification"].encoder, TEXTS)
    np.testing.assert_allclose(np.array(fresh["classification"]["embed"]["mean_pooled"]), mean, atol=1e-5)


def test_saved_model_cli_lists_signatures(exported):
    root, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--all", "--dir", str(root / "pair")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("serving_default", "pair", "embed", "tokenize", "serve_examples"):
        assert f"signature_def['{name}']" in proc.stdout
    for field in ("inputs['text_a']", "inputs['text_b']", "outputs['label']", "outputs['probabilities']"):
        assert field in proc.stdout


def test_non_string_input_is_a_clear_error(exported):
    root, _ = exported
    model = tf.saved_model.load(str(root / "classification"))
    with pytest.raises(Exception, match="string"):
        model.signatures["serving_default"](text=tf.constant([1, 2]))


def test_assets_travel_inside(exported):
    root, _ = exported
    path = root / "classification"
    assert (path / "assets" / "labels.txt").read_text().split() == LABELS
    assert (path / "assets" / "vocab.txt").read_bytes() == open(VOCAB, "rb").read()
    info = json.loads((path / "assets.extra" / EXPORT_INFO).read_text())
    assert info["labels"] == LABELS and info["max_seq_length"] == SEQ and info["task_type"] == "classification"
    assert info["signatures"]["serving_default"]["inputs"] == ["text"]
    assert json.loads((path / "assets.extra" / "task_config.json").read_text()) == {"type": "classification"}
    assert (path / "assets.extra" / "NOTE.txt").read_text() == "hello"
    loaded = tf.saved_model.load(str(path))
    assert os.path.dirname(loaded.vocab_file.asset_path.numpy().decode()) == str(path / "assets")


def test_failed_export_leaves_the_previous_one(exported, tmp_path):
    _, models = exported
    out = tmp_path / "model"
    export_task(models["classification"], "classification", VOCAB, True, LABELS, SEQ, str(out))
    before = (out / "saved_model.pb").read_bytes()
    with pytest.raises(UserError, match="plain file name"):
        export_task(models["classification"], "classification", VOCAB, True, ["b", "a"], SEQ, str(out),
                    extra_assets={"../escape.txt": "x"})
    assert (out / "saved_model.pb").read_bytes() == before
    assert (out / "assets" / "labels.txt").read_text().split() == LABELS
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp directory left behind


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task_type": "ner"}, "unknown task type"),
        ({"labels": ["only"]}, "at least 2 label"),
        ({"max_seq_length": 1000}, "max_seq_length"),
        ({"max_chunks": 4}, "do not apply"),
        ({"precision": "float8"}, "precision"),
        ({"vocab_file": os.path.join(os.path.dirname(VOCAB), "missing.txt")}, "not found"),
    ],
)
def test_bad_export_arguments_are_one_line_errors(exported, tmp_path, kwargs, message):
    args = dict(task_type="classification", vocab_file=VOCAB, lowercase=True, labels=LABELS, max_seq_length=SEQ,
                out_dir=str(tmp_path / "m"))
    options = {k: kwargs.pop(k) for k in list(kwargs) if k == "max_chunks"}
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        export_task(exported[1]["classification"], **args, **options)
    assert not (tmp_path / "m").exists()


def test_bfloat16_export_is_close_and_leaves_the_model_alone(exported, tmp_path):
    _, models = exported
    model = models["classification"]
    export_task(model, "classification", VOCAB, True, LABELS, SEQ, str(tmp_path / "bf16"), precision="bfloat16")
    assert all(layer.dtype_policy.name == "float32" for layer in model._flatten_layers())  # restored
    info = json.loads((tmp_path / "bf16" / "assets.extra" / EXPORT_INFO).read_text())
    assert info["precision"] == "bfloat16"
    got = tf.saved_model.load(str(tmp_path / "bf16")).signatures["serving_default"](text=tf.constant(TEXTS))
    probabilities = got["probabilities"].numpy()
    assert probabilities.dtype == np.float32
    _, want = reference_single(model, TEXTS)
    np.testing.assert_allclose(probabilities, want, atol=3e-2)
    assert not np.allclose(probabilities, want, atol=1e-6)  # it really computed in bf16
    # Its matmuls read bf16 copies of the Dense kernels, stored in the SavedModel; the model's kernels are untouched.
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, Dense)]
    stored = tf.saved_model.load(str(tmp_path / "bf16")).bf16_kernels
    assert len(stored) == len(dense) > 0 and all(k.dtype == tf.bfloat16 for k in stored)
    for kernel16, layer in zip(stored, dense, strict=True):
        assert layer.kernel.dtype == "float32"
        np.testing.assert_array_equal(kernel16.numpy(), tf.cast(layer.kernel, tf.bfloat16).numpy())


def test_bf16_matmuls_multiply_in_bf16_and_keep_the_rest_float32():
    """Dense under `bf16_matmuls`: bf16(x) @ bf16(kernel) accumulated in float32, then the float32 bias and activation."""
    layer = Dense(8, activation="tanh")
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    layer(x)
    layer.bias.assign(np.linspace(-1, 1, 8, dtype=np.float32))
    kernel16 = tf.Variable(tf.cast(layer.kernel, tf.bfloat16))
    with bf16_matmuls({id(layer): kernel16}):
        got = layer(x).numpy()
    rounded = lambda a: tf.cast(tf.cast(a, tf.bfloat16), tf.float32).numpy().astype(np.float64)  # noqa: E731
    want = np.tanh(rounded(x) @ rounded(layer.kernel) + layer.bias.numpy())
    assert got.dtype == np.float32 and got.shape == (2, 5, 8)
    np.testing.assert_allclose(got, want, atol=1e-2)  # the product itself is rounded to bf16 once
    np.testing.assert_allclose(layer(x).numpy(), np.tanh(x @ layer.kernel.numpy() + layer.bias.numpy()), atol=1e-5)


def test_auto_export_precision_is_bf16_on_amx_only():
    from bert_keras import distribute
    from bert_keras.export import serving_precision

    assert serving_precision("auto") == ("bfloat16" if distribute.cpu_has_amx() else "float32")
    assert serving_precision("float32") == "float32" and serving_precision("bfloat16") == "bfloat16"
    with pytest.raises(UserError, match="not one of auto, float32, bfloat16"):
        serving_precision("fp8")


def test_a_float32_export_of_a_model_built_in_bf16_computes_in_float32(exported, tmp_path):
    """A pipeline process leaves mixed_bfloat16 set where the CPU has native bf16; the float32 export still is one."""
    from bert_keras import distribute

    _, models = exported
    with distribute.precision_scope("mixed_bfloat16"):
        model = tiny_task_model("classification")
        model(reference_single(models["classification"], GOOD)[0], training=False)
    model.set_weights(models["classification"].get_weights())
    export_task(model, "classification", VOCAB, True, LABELS, SEQ, str(tmp_path / "m"))
    assert all(layer.dtype_policy.name == "mixed_bfloat16" for layer in model._flatten_layers())  # restored
    got = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"](text=tf.constant(TEXTS))
    _, want = reference_single(models["classification"], TEXTS)  # the same weights, built in float32
    np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-5)


def test_large_batches_run_in_length_buckets_with_the_same_answers(exported):
    root, models = exported
    reviews = [json.loads(line)["text"].encode() for line in open(os.path.join(os.path.dirname(VOCAB), "..", "reviews", "test.jsonl"))]
    texts = reviews[:37] + TEXTS  # above BUCKET_MIN_BATCH: the bucketed branch, long and empty rows mixed in
    loaded = tf.saved_model.load(str(root / "classification"))
    got = loaded.signatures["serving_default"](text=tf.constant(texts))["probabilities"].numpy()
    np.testing.assert_allclose(got, reference_single(models["classification"], texts)[1], atol=1e-5)
    pooled, mean = reference_embed(models["classification"].encoder, texts)
    emb = loaded.signatures["embed"](text=tf.constant(texts))
    np.testing.assert_allclose(emb["pooled"].numpy(), pooled, atol=1e-5)
    np.testing.assert_allclose(emb["mean_pooled"].numpy(), mean, atol=1e-5)


def test_the_export_tokenizes_with_the_datas_normalization(exported, tmp_path):
    """data.strip_accents: false with lowercase: the exported tokenizer keeps the accents the
    fine-tuning data kept (the vocab holds "café"-style pieces only then), and says so in its info."""
    model = exported[1]["classification"]
    export_task(model, "classification", VOCAB, True, LABELS, SEQ, str(tmp_path / "keep"), strip_accents=False)
    info = json.loads((tmp_path / "keep" / "assets.extra" / EXPORT_INFO).read_text())
    assert info["lowercase"] is True and info["strip_accents"] is False
    text = tf.constant(["Café naïve façade, élan."])
    got = tf.saved_model.load(str(tmp_path / "keep")).signatures["tokenize"](text=text)[TOKEN_IDS].numpy()[0]
    keep = make_tokenizer(_vocab, True, False).tokenize(text).to_list()[0]
    strip = make_tokenizer(_vocab, True, True).tokenize(text).to_list()[0]
    assert keep != strip  # the probe tells the two normalizations apart
    assert got[1 : 1 + len(keep)].tolist() == keep


def test_xla_compiled_export_answers_like_the_model_in_a_fresh_process(exported, tmp_path):
    """export_task(compiled=True): the numeric part under XLA, rows padded to length buckets; the same answers
    as the in-memory model for single requests and length-bucketed batches, in a process without bertpipe."""
    _, models = exported
    out = tmp_path / "compiled"
    export_task(models["classification"], "classification", VOCAB, True, LABELS, SEQ, str(out), compiled=True)
    info = json.loads((out / "assets.extra" / EXPORT_INFO).read_text())
    assert info["compiled"] == {"xla": True, "buckets": [16, SEQ]}
    reviews = [json.loads(line)["text"].encode()
               for line in open(os.path.join(os.path.dirname(VOCAB), "..", "reviews", "test.jsonl"))][:20]
    jobs = {"one": {"inputs": {"text": b64(TEXTS[:1])}, "text_input": "text", "dir": str(out)},
            "batch": {"inputs": {"text": b64(reviews + TEXTS)}, "text_input": "text", "dir": str(out)}}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "fresh.py").write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(tmp_path / "fresh.py"), str(tmp_path / "jobs.json"),
                           str(tmp_path / "out.json")], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out.json").read_text())
    for name, texts in (("one", TEXTS[:1]), ("batch", reviews + TEXTS)):
        got = np.array(res[name]["serving_default"]["probabilities"])
        np.testing.assert_allclose(got, reference_single(models["classification"], texts)[1], atol=1e-5)
