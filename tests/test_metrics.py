"""Metrics checked against hand computations and the reference libraries."""

import json
import math

import numpy as np
import pytest

from bertkit.tasks.metrics import (classification_metrics, entity_metrics, normalize_answer,
                                      regression_metrics, squad_metrics)


# --------------------------------------------------------------------------- classification


def test_classification_metrics_by_hand():
    # a: tp 1, fp 1, fn 1 -> F1 .5 ; b: tp 2, fp 1, fn 0 -> P 2/3 R 1 F1 .8 ; c: tp 0 -> F1 0
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["report"]["a"]["f1-score"] == pytest.approx(0.5)
    assert m["report"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["report"]["b"]["recall"] == pytest.approx(1.0)
    assert m["report"]["c"]["support"] == 1
    assert m["report"]["macro avg"]["f1-score"] == pytest.approx(m["macro_f1"])
    for name in ("a", "b", "c", "macro avg"):
        assert name in m["report_text"]
    json.dumps(m)  # goes into metrics.json as is


def test_classification_metrics_ignores_classes_absent_from_gold_and_predictions():
    m = classification_metrics([0, 1], [0, 1], ["neg", "pos", "never"])
    assert m["macro_f1"] == 1.0 and m["accuracy"] == 1.0
    assert "never" not in m["report"]


def test_classification_metrics_bad_input():
    with pytest.raises(ValueError, match="y_true has 2 items but y_pred has 1"):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match="y_pred holds label id 5 but there are only 2"):
        classification_metrics([0, 1], [0, 5], ["a", "b"])


# --------------------------------------------------------------------------- regression


def test_regression_metrics_by_hand():
    m = regression_metrics([1, 2, 3, 4], [2, 4, 6, 8])
    assert m["pearson"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["mse"] == pytest.approx((1 + 4 + 9 + 16) / 4)
    m = regression_metrics([1, 2, 3], [3, 2, 1])
    assert m["pearson"] == pytest.approx(-1.0) and m["spearman"] == pytest.approx(-1.0)


def test_spearman_averages_tied_ranks():
    # x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]: centred [-1.5,0,0,1.5] . [-1.5,.5,-.5,1.5]
    # = 4.5 over sqrt(4.5 * 5)
    m = regression_metrics([1, 2, 2, 3], [1, 3, 2, 4])
    assert m["spearman"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # spearman is invariant to monotone transforms, pearson is not
    m = regression_metrics([1, 2, 3, 4], [1, 10, 100, 1000])
    assert m["spearman"] == pytest.approx(1.0) and m["pearson"] < 0.95


def test_regression_metrics_match_numpy_and_scipy():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 6, size=200).astype(float)  # many ties
    p = t + rng.normal(size=200)
    m = regression_metrics(t, p)
    assert m["pearson"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert m["mse"] == pytest.approx(np.mean((t - p) ** 2))
    stats = pytest.importorskip("scipy.stats")
    assert m["spearman"] == pytest.approx(stats.spearmanr(t, p).statistic)


def test_regression_constant_predictions_give_zero_correlation_not_nan():
    m = regression_metrics([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError, match="3 items but y_pred has 2"):
        regression_metrics([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- entities


def test_entity_metrics_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]  # 2 gold, 2 predicted, 1 exact
    m = entity_metrics(true, pred)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert m["report"]["PER"]["f1-score"] == pytest.approx(1.0)
    assert m["report"]["LOC"]["recall"] == pytest.approx(0.0)
    assert "PER" in m["report_text"] and "LOC" in m["report_text"]
    json.dumps(m)


def test_entity_boundaries_must_match_exactly():
    # predicted PER covers only the first word of a two-word gold PER: no credit
    m = entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert m["f1"] == 0.0


def test_i_tag_without_b_starts_an_entity_as_in_conlleval():
    m = entity_metrics([["O", "B-LOC", "I-LOC"]], [["O", "I-LOC", "I-LOC"]])
    assert m["f1"] == pytest.approx(1.0)
    # I- of another type after B- ends the first entity and starts a new one
    m = entity_metrics([["B-LOC", "B-PER"]], [["B-LOC", "I-PER"]])
    assert m["f1"] == pytest.approx(1.0)


def test_entities_at_sentence_end_and_across_sentences():
    m = entity_metrics([["O", "O", "B-PER"]], [["O", "O", "B-PER"]])
    assert m["f1"] == 1.0
    # Each sentence is chunked on its own: the gold I-PER opening sentence 2 is a second
    # entity, not the continuation of sentence 1's B-PER. 2 gold, 1 predicted, 1 correct.
    m = entity_metrics([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["O", "O"]])
    assert (m["precision"], m["recall"]) == pytest.approx((1.0, 0.5))
    assert m["f1"] == pytest.approx(2 / 3)


def test_adjacent_entities_are_separate():
    # gold: two one-word PERs; predicted: one two-word PER -> 2 gold, 1 predicted, 0 correct
    m = entity_metrics([["B-PER", "B-PER"]], [["B-PER", "I-PER"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    m = entity_metrics([["B-PER", "B-PER"]], [["B-PER", "B-PER"]])
    assert m["f1"] == 1.0


def test_entity_metrics_agree_with_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(1)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    true = [list(rng.choice(tags, size=rng.integers(1, 12))) for _ in range(60)]
    pred = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in s] for s in true]
    m = entity_metrics(true, pred)
    assert m["precision"] == pytest.approx(precision_score(true, pred))
    assert m["recall"] == pytest.approx(recall_score(true, pred))
    assert m["f1"] == pytest.approx(f1_score(true, pred))
    assert 0.2 < m["f1"] < 0.95  # the case is not trivial


def test_entity_metrics_without_entities_and_bad_lengths():
    m = entity_metrics([["O", "O"]], [["O", "O"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        entity_metrics([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 gold sentences but 2 predicted"):
        entity_metrics([["O"]], [["O"], ["O"]])


# --------------------------------------------------------------------------- SQuAD


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an Apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer(" A. ") == ""


def test_squad_metrics_by_hand():
    preds = {"q1": "the cat sat", "q2": "Paris"}
    gold = {"q1": ["a cat sat on the mat", "cat"], "q2": ["paris."]}
    # q1: "cat sat" vs "cat sat on mat": P 1, R .5 -> 2/3; vs "cat": P .5, R 1 -> 2/3; EM 0
    # q2: exact after normalisation
    m = squad_metrics(preds, gold)
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx((200 / 3 + 100) / 2)


def test_squad_f1_counts_repeated_tokens_once_each():
    # "x x y" vs "x y y": common = min counts (x 1, y 1) = 2 tokens; P 2/3, R 2/3
    m = squad_metrics({"q": "x x y"}, {"q": ["x y y"]})
    assert m["f1"] == pytest.approx(100 * 2 / 3)


def test_squad_v2_no_answer():
    gold = {"a": [], "b": [""], "c": ["Rome"], "d": []}
    preds = {"a": "", "b": "", "c": "", "d": "something"}
    m = squad_metrics(preds, gold)
    # a, b: correct no-answer; c: missed answer; d: answered an unanswerable question
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(50.0)


def test_squad_missing_prediction_scores_zero():
    m = squad_metrics({"q1": "x", "other": "y"}, {"q1": ["x"], "q2": ["y"]})
    assert m == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(50.0)}
    with pytest.raises(ValueError, match="at least one gold"):
        squad_metrics({}, {})
    with pytest.raises(ValueError, match="must be a list of strings"):
        squad_metrics({"q": "x"}, {"q": "x"})
