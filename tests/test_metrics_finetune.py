"""Classification metrics and the official SQuAD EM/F1, on hand-checked cases."""

import pytest

from bert_keras import metrics as M


def test_classification_metrics_hand_checked():
    # gold: a a a b b c ; pred: a a b b c c
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    out = M.classification_metrics(gold, pred, ["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/2 R 2/3 F1 0.8 ; b: P 1/2 R 1/2 F1 0.5 ; c: P 1/2 R 1/1 F1 2/3
    assert out["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert out["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert out["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert out["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert out["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_class_never_predicted_or_present_does_not_break_macro_f1():
    out = M.classification_metrics([0, 0, 1], [0, 0, 0], ["x", "y", "z"])
    assert out["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_class"]["z"]["support"] == 0
    # macro over the classes seen in gold or predictions (x, y): (0.8 + 0) / 2
    assert out["macro_f1"] == pytest.approx(0.4)
    assert out["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "text,normalized",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a  cat,  an apple and THE dog. ", "cat apple and dog"),
        ("Saint Bernadette Soubirous", "saint bernadette soubirous"),
        ("theater", "theater"),  # "the" only as a whole word
        ("U.S.A.", "usa"),
    ],
)
def test_normalize_answer_is_the_official_one(text, normalized):
    assert M.normalize_answer(text) == normalized


def test_squad_em_f1_on_known_predictions():
    golds = {
        "q1": ["Saint Bernadette Soubirous"],
        "q2": ["a golden statue of the Virgin Mary", "golden statue"],
        "q3": ["1882"],
        "q4": ["the Grotto"],
    }
    preds = {
        "q1": "saint bernadette soubirous.",  # EM 1 after normalization
        "q2": "golden statue of Mary",  # vs gold 1 (golden statue of virgin mary): common 4; P 4/4 R 4/5
        #                                 -> F1 8/9; vs gold 2: common 2; P 2/4 R 1 -> F1 2/3; max 8/9, EM 0
        "q3": "1858",  # wrong: 0 / 0
        # q4 missing: counts as 0
    }
    out = M.squad_metrics(preds, golds)
    assert out["exact_match"] == pytest.approx(100 * 1 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 8 / 9 + 0 + 0) / 4)
    assert out["total"] == 4
    assert M.f1_score("golden statue of Mary", "golden statue") == pytest.approx(2 / 3)


def test_squad_v2_no_answer_scoring():
    golds = {"has": ["Notre Dame"], "none": [], "none2": [""]}
    out = M.squad_metrics({"has": "notre dame", "none": "", "none2": "something"}, golds)
    assert out["exact_match"] == pytest.approx(100 * 2 / 3)
    assert out["has_answer_exact_match"] == 100.0
    assert out["no_answer_exact_match"] == 50.0
    assert M.score_answer("", []) == (1.0, 1.0)
    assert M.score_answer("x", []) == (0.0, 0.0)
    assert M.score_answer("", ["Notre Dame"]) == (0.0, 0.0)
