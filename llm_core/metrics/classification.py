"""Accuracy, macro-F1, per-label precision/recall/F1/support and a confusion matrix.

The label set is the sorted union of reference and predicted labels, as in scikit-learn:
a model that answers a label outside the reference set is charged for it in macro-F1
(that label's F1 is 0) rather than having it ignored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class LabelScore:
    precision: float
    recall: float
    f1: float
    support: int  # how many references carry this label


def _check_lengths(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")


def label_set(references: Sequence[str], predictions: Sequence[str]) -> list[str]:
    return sorted(set(references) | set(predictions))


def accuracy(references: Sequence[str], predictions: Sequence[str]) -> float:
    _check_lengths(references, predictions)
    if not references:
        return 0.0
    return sum(r == p for r, p in zip(references, predictions)) / len(references)


def per_label_scores(references: Sequence[str], predictions: Sequence[str]) -> dict[str, LabelScore]:
    """Scores of every label; a ratio whose denominator is 0 is 0.0 (scikit-learn's zero_division=0)."""
    _check_lengths(references, predictions)
    true_positives = Counter(r for r, p in zip(references, predictions) if r == p)
    reference_counts = Counter(references)
    prediction_counts = Counter(predictions)
    scores: dict[str, LabelScore] = {}
    for label in label_set(references, predictions):
        hits = true_positives[label]
        precision = hits / prediction_counts[label] if prediction_counts[label] else 0.0
        recall = hits / reference_counts[label] if reference_counts[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[label] = LabelScore(precision, recall, f1, reference_counts[label])
    return scores


def macro_f1(references: Sequence[str], predictions: Sequence[str]) -> float:
    scores = per_label_scores(references, predictions)
    if not scores:
        return 0.0
    return sum(score.f1 for score in scores.values()) / len(scores)


def per_label_report(references: Sequence[str], predictions: Sequence[str]) -> dict[str, dict]:
    """`per_label_scores` as plain dicts, ready for JSON."""
    return {label: asdict(score) for label, score in per_label_scores(references, predictions).items()}


def confusion_matrix(references: Sequence[str], predictions: Sequence[str]) -> dict[str, list]:
    """{"labels": [...], "matrix": rows = reference label, columns = predicted label}."""
    _check_lengths(references, predictions)
    labels = label_set(references, predictions)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for reference, prediction in zip(references, predictions):
        matrix[index[reference]][index[prediction]] += 1
    return {"labels": labels, "matrix": matrix}
