"""Evaluation metrics of the tasks: classification, regression, NER entities, SQuAD QA.

Every function takes plain Python sequences (lists of ints / floats / strings) and returns a
dict of plain Python numbers (and, where a person reads it, a text report), so the result can
go straight into ``metrics.json``.

Scales: classification, regression and entity scores are fractions in [0, 1]; SQuAD
``exact_match`` / ``f1`` are percentages in [0, 100], as the official evaluation scripts print
them and as papers report them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

import numpy as np


# --------------------------------------------------------------------------- classification


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           label_names: Sequence[str]) -> dict:
    """Accuracy, macro F1 and a per-class report for single-label classification.

    Args:
        y_true: gold label ids, length N; id ``i`` is named ``label_names[i]``.
        y_pred: predicted label ids, length N.
        label_names: the names of the label ids (config ``id2label`` in id order).

    Returns:
        ``{"accuracy": float, "macro_f1": float, "report": dict, "report_text": str}``.
        ``report`` is scikit-learn's ``classification_report(output_dict=True)`` keyed by label
        name (precision, recall, f1-score, support) plus "macro avg" / "weighted avg";
        ``report_text`` is the same table formatted for printing. Macro F1 averages over the
        classes that occur in ``y_true`` or ``y_pred`` (scikit-learn's default), so a class
        absent from a small dev set does not count as a zero.
    """
    # scikit-learn takes seconds to import: only evaluation pays for it, not prediction.
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    y_true = [int(y) for y in y_true]
    y_pred = [int(y) for y in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("classification_metrics needs at least one example")
    for name, ys in (("y_true", y_true), ("y_pred", y_pred)):
        bad = [y for y in ys if not 0 <= y < len(label_names)]
        if bad:
            raise ValueError(f"{name} holds label id {bad[0]} but there are only "
                             f"{len(label_names)} label names")
    labels = sorted(set(y_true) | set(y_pred))
    names = [str(label_names[i]) for i in labels]
    kwargs = dict(labels=labels, target_names=names, zero_division=0)
    report = classification_report(y_true, y_pred, output_dict=True, **kwargs)
    text = classification_report(y_true, y_pred, digits=4, **kwargs)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "report": _plain(report),
        "report_text": text,
    }


# --------------------------------------------------------------------------- regression


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    # A constant series has no measurable linear relation; 0.0 (not NaN) keeps metrics.json
    # valid JSON and lets "best so far" comparisons in the Trainer work early in training.
    if denom == 0.0:
        return 0.0
    return float((x * y).sum() / denom)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given the mean of the ranks they span (scipy's 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1 .. e
    return ranks


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """Pearson and Spearman correlation and mean squared error.

    Args:
        y_true, y_pred: N gold and predicted scores.

    Returns:
        ``{"pearson": float, "spearman": float, "mse": float}``. Spearman is the Pearson
        correlation of the ranks, with tied values sharing their average rank. A correlation
        with a constant series is reported as 0.0 rather than NaN.
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("regression_metrics needs at least one example")
    return {
        "pearson": _pearson(t, p),
        "spearman": _pearson(_average_ranks(t), _average_ranks(p)),
        "mse": float(np.mean((t - p) ** 2)),
    }


# --------------------------------------------------------------------------- NER


def entity_metrics(true_tag_seqs: Sequence[Sequence[str]],
                   pred_tag_seqs: Sequence[Sequence[str]]) -> dict:
    """Entity-level (micro) precision, recall and F1 with seqeval, plus a per-type report.

    Args:
        true_tag_seqs: one list of BIO/IOB2 tags per sentence (``O``, ``B-PER``, ``I-PER`` ...).
        pred_tag_seqs: predicted tags, the same lengths.

    Returns:
        ``{"precision", "recall", "f1": float, "report": dict, "report_text": str}`` where
        ``report`` maps each entity type (and "micro avg" ...) to precision/recall/f1/support.

    Chunking uses seqeval's default mode, the one of the CoNLL ``conlleval`` script that
    published NER scores come from: an ``I-X`` that follows ``O`` or another type starts a new
    ``X`` entity instead of being dropped. (seqeval's ``mode="strict"`` would discard such
    entities; a fine-tuned model emits them early in training, and conlleval compatibility
    matters more for comparing numbers.) An entity counts only with exact type and boundaries.
    """
    # seqeval imports scikit-learn (seconds): only evaluation pays for it.
    from seqeval.metrics import classification_report

    true_tag_seqs = [list(s) for s in true_tag_seqs]
    pred_tag_seqs = [list(s) for s in pred_tag_seqs]
    if len(true_tag_seqs) != len(pred_tag_seqs):
        raise ValueError(f"{len(true_tag_seqs)} gold sentences but {len(pred_tag_seqs)} "
                         "predicted")
    for i, (t, p) in enumerate(zip(true_tag_seqs, pred_tag_seqs)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
    n_true, n_pred, n_correct = _count_entities(true_tag_seqs, pred_tag_seqs)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if n_true or n_pred:
        report = classification_report(true_tag_seqs, pred_tag_seqs, output_dict=True,
                                       zero_division=0)
        text = classification_report(true_tag_seqs, pred_tag_seqs, digits=4, zero_division=0)
    else:  # seqeval cannot format a report without any entity type
        report, text = {}, "no entities in gold or predicted tags\n"
    return {"precision": precision, "recall": recall, "f1": f1,
            "report": _plain(report), "report_text": text}


def _count_entities(true_seqs, pred_seqs) -> tuple[int, int, int]:
    """(gold entities, predicted entities, exact matches) using seqeval's own chunker."""
    # seqeval imports scikit-learn (seconds): only evaluation pays for it.
    from seqeval.metrics.sequence_labeling import get_entities

    n_true = n_pred = n_correct = 0
    for t, p in zip(true_seqs, pred_seqs):
        te, pe = set(get_entities(t)), set(get_entities(p))
        n_true += len(te)
        n_pred += len(pe)
        n_correct += len(te & pe)
    return n_true, n_pred, n_correct


# --------------------------------------------------------------------------- SQuAD


def normalize_answer(s: str) -> str:
    """The official SQuAD normalisation: lower case, drop punctuation and the articles
    a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_PUNCT = set(string.punctuation)


def _exact(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def _f1(gold: str, pred: str) -> float:
    gold_toks = normalize_answer(gold).split()
    pred_toks = normalize_answer(pred).split()
    # v2.0 rule: when either side is a no-answer (no tokens), F1 is 1 only if both are.
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str],
                  gold: Mapping[str, Sequence[str]]) -> dict:
    """Exact match and token F1 of the official SQuAD v1.1 / v2.0 evaluation scripts.

    Args:
        predictions: question id -> predicted answer text ("" means "no answer").
        gold: question id -> the list of gold answer texts. An empty list (or only empty
            strings) marks an unanswerable v2.0 question, which only an empty prediction
            matches.

    Returns:
        ``{"exact_match": float, "f1": float}`` in percent (0-100), each the mean over the gold
        questions of the best score against any gold answer. A gold question with no
        prediction scores 0 (as in the v1.1 script); predictions for unknown ids are ignored.
    """
    if not gold:
        raise ValueError("squad_metrics needs at least one gold question")
    em_total = f1_total = 0.0
    for qid, answers in gold.items():
        if isinstance(answers, str):
            raise ValueError(f"gold answers of {qid!r} must be a list of strings, "
                             f"got the string {answers!r}")
        # As in the v2.0 script: answers that normalise to nothing do not count, and a
        # question without answers has the single gold answer "".
        answers = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in predictions:
            continue
        pred = predictions[qid]
        em_total += max(_exact(a, pred) for a in answers)
        f1_total += max(_f1(a, pred) for a in answers)
    n = len(gold)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n}


# --------------------------------------------------------------------------- ranking

RANKING_CUTOFF = 10  # MRR and nDCG are reported at 10, as MS MARCO and BEIR report them


def ranking_metrics(rankings: Sequence[Sequence], relevance: Sequence[Mapping],
                    recall_at: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k, MRR@10 and nDCG@10 of ranked results, averaged over queries.

    Args:
        rankings: per query, document ids best first (at least the top 10; recall@k reads
            the top k).
        relevance: per query, ``{document id: grade}``; a grade > 0 is relevant (1 for
            binary judgements; graded relevance counts in nDCG's gains).

    The standard definitions, per query: recall@k = relevant documents in the top k / all
    relevant documents; MRR@10 = 1 / rank of the first relevant document within the top 10
    (0 when none is); nDCG@10 = DCG@10 / ideal DCG@10 with DCG@10 = sum over ranks r <= 10 of
    grade_r / log2(r + 1) (linear gains, as trec_eval's ndcg_cut and BEIR). Queries without a
    relevant document are left out (they have no answer to find), as BEIR does.

    Returns ``{"recall@1": ..., "recall@5": ..., "recall@10": ..., "mrr@10": ...,
    "ndcg@10": ..., "queries": n}`` (fractions in [0, 1]).
    """
    if len(rankings) != len(relevance):
        raise ValueError(f"{len(rankings)} rankings but {len(relevance)} relevance judgements")
    sums = collections.Counter()
    n = 0
    for ranked, grades in zip(rankings, relevance):
        relevant = {doc for doc, grade in grades.items() if grade > 0}
        if not relevant:
            continue
        n += 1
        for k in recall_at:
            sums[f"recall@{k}"] += len(relevant & set(ranked[:k])) / len(relevant)
        top = list(ranked[:RANKING_CUTOFF])
        first = next((r for r, doc in enumerate(top, start=1) if doc in relevant), None)
        sums["mrr@10"] += 1.0 / first if first else 0.0
        dcg = sum(grades.get(doc, 0) / np.log2(r + 1) for r, doc in enumerate(top, start=1))
        ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:RANKING_CUTOFF]
        idcg = sum(g / np.log2(r + 1) for r, g in enumerate(ideal, start=1))
        sums["ndcg@10"] += dcg / idcg
    if not n:
        raise ValueError("no query has a relevant document: nothing to rank")
    names = [f"recall@{k}" for k in recall_at] + ["mrr@10", "ndcg@10"]
    return {**{name: float(sums[name] / n) for name in names}, "queries": n}


def grouped_ranking_metrics(groups: Sequence, scores: Sequence[float],
                            grades: Sequence[float]) -> dict:
    """:func:`ranking_metrics` of pairs scored one by one (a cross-encoder): the pairs of one
    group (e.g. the same query) are ranked by ``scores`` (best first; ties keep input
    order) and judged by ``grades``."""
    by_group: dict = collections.defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    rankings, relevance = [], []
    for indices in by_group.values():
        rankings.append(sorted(indices, key=lambda i: -scores[i]))
        relevance.append({i: grades[i] for i in indices})
    return ranking_metrics(rankings, relevance)


# --------------------------------------------------------------------------- helpers


def _plain(obj):
    """Turn numpy scalars inside nested dicts into Python numbers (for json.dump)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
