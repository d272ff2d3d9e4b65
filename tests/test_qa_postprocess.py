"""Best span across windows by the max-context rule, mapped back to characters."""

import numpy as np

from bert_keras.qa_postprocess import Window, best_answers

#          0   4   8   12 15  19  23
CONTEXT = "The cat sat on the mat today"
WORDS = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), (23, 28)]
SEQ = 8


def window(first_word, max_context_words, start_logits, end_logits, example_id=0):
    """[CLS] + 5 context words at positions 1..5 + padding; logits given as {position: value}."""
    starts, ends, is_max = np.full(SEQ, -1), np.full(SEQ, -1), np.zeros(SEQ, int)
    for pos in range(1, 6):
        word = first_word + pos - 1
        starts[pos], ends[pos] = WORDS[word]
        is_max[pos] = word in max_context_words
    s, e = np.full(SEQ, -5.0), np.full(SEQ, -5.0)
    for pos, value in start_logits.items():
        s[pos] = value
    for pos, value in end_logits.items():
        e[pos] = value
    return Window(example_id, s, e, starts, ends, is_max)


# Window 0 holds words 0-4 and has the max context for words 0-3; window 1 holds
# words 2-6 and has it for words 4-6 (BERT's rule: "on" ties, the first window keeps it).
def test_span_start_must_have_max_context():
    w0 = window(0, {0, 1, 2, 3}, {3: 6.0}, {4: 4.0})  # "sat on" = 10
    # In window 1 "sat" (position 1) scores higher, but window 1 is not its max-context window.
    w1 = window(2, {4, 5, 6}, {1: 10.0, 4: 2.0}, {4: 5.0})  # invalid "sat on the mat" = 15; valid "mat" = 7
    answer = best_answers([w0, w1], {0: CONTEXT})[0]
    assert answer.text == "sat on"
    assert (answer.char_start, answer.char_end) == (8, 14)
    assert answer.score == 10.0


def test_best_window_wins_and_text_keeps_original_characters():
    context = "The Cat  sat on the MAT today"  # two spaces and capitals must survive
    words = [(0, 3), (4, 7), (9, 12), (13, 15), (16, 19), (20, 23), (24, 29)]
    w0 = window(0, {0, 1, 2, 3}, {2: 3.0}, {3: 3.0})
    w1 = window(2, {4, 5, 6}, {3: 4.0}, {4: 4.0})  # "the MAT" = 8 beats "Cat  sat" = 6
    for w, first in ((w0, 0), (w1, 2)):
        for pos in range(1, 6):
            w.char_starts[pos], w.char_ends[pos] = words[first + pos - 1]
    answer = best_answers([w0, w1], {0: context})[0]
    assert answer.text == "the MAT"
    w0.start_logits[2], w0.end_logits[3] = 9.0, 9.0
    assert best_answers([w0, w1], {0: context})[0].text == "Cat  sat"


def test_end_before_start_question_tokens_and_long_spans_are_rejected():
    # Best end (position 1) lies before the best start (position 4): not a span.
    w = window(0, {0, 1, 2, 3, 4}, {4: 9.0, 2: 1.0}, {1: 9.0, 4: 0.5})
    assert best_answers([w], {0: CONTEXT})[0].text == "on"  # start 4 end 4 (position p holds word p - 1)
    # [CLS] (position 0, char offset -1) is never a span boundary.
    w = window(0, {0, 1, 2, 3, 4}, {0: 20.0, 1: 1.0}, {0: 20.0, 1: 1.0})
    assert best_answers([w], {0: CONTEXT})[0].text == "The"
    # The 5-token span "The ... the" (score 10) is cut by max_answer_length=2; "on the" (6) wins.
    w = window(0, {0, 1, 2, 3, 4}, {1: 5.0, 4: 1.0}, {5: 5.0})
    assert best_answers([w], {0: CONTEXT})[0].text == "The cat sat on the"
    assert best_answers([w], {0: CONTEXT}, max_answer_length=2)[0].text == "on the"


def test_no_answer_when_null_score_wins_only_with_allow_null():
    w0 = window(0, {0, 1, 2, 3}, {0: 4.0, 2: 1.0}, {0: 4.0, 2: 1.0})  # null 8, span "cat" 2
    w1 = window(2, {4, 5, 6}, {0: 6.0}, {0: 6.0})  # null 12: the minimum over windows (8) counts
    v2 = best_answers([w0, w1], {0: CONTEXT}, allow_null=True)[0]
    assert v2.text == "" and v2.char_start == -1 and v2.null_score == 8.0
    assert best_answers([w0, w1], {0: CONTEXT}, allow_null=False)[0].text == "cat"
    # A threshold above the margin (8 - 2 = 6) keeps the span.
    assert best_answers([w0, w1], {0: CONTEXT}, allow_null=True, null_threshold=6.5)[0].text == "cat"


def test_several_examples_are_kept_apart():
    a = window(0, {0, 1, 2, 3, 4}, {1: 3.0}, {2: 3.0}, example_id=7)
    b = window(0, {0, 1, 2, 3, 4}, {5: 3.0}, {5: 3.0}, example_id=9)
    out = best_answers([a, b], {7: CONTEXT, 9: CONTEXT})
    assert out[7].text == "The cat" and out[9].text == "the"
