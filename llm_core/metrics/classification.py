"""Accuracy, macro-F1, per-label precision/recall/F1/support and a confusion matrix, by scikit-learn.

The label set is the sorted union of reference and predicted labels: a model that answers a
label outside the reference set is charged for it in macro-F1 (that label's F1 is 0) rather
than having it ignored. A ratio whose denominator is 0 is 0.0 (zero_division=0). The results
are plain Python numbers, ready for JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from sklearn import metrics as sk


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
    return float(sk.accuracy_score(references, predictions)) if references else 0.0


def per_label_scores(references: Sequence[str], predictions: Sequence[str]) -> dict[str, LabelScore]:
    _check_lengths(references, predictions)
    labels = label_set(references, predictions)
    if not labels:
        return {}
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        references, predictions, labels=labels, zero_division=0
    )
    return {label: LabelScore(float(p), float(r), float(f), int(s))
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)}


def macro_f1(references: Sequence[str], predictions: Sequence[str]) -> float:
    _check_lengths(references, predictions)
    labels = label_set(references, predictions)
    if not labels:
        return 0.0
    return float(sk.f1_score(references, predictions, labels=labels, average="macro", zero_division=0))


def per_label_report(references: Sequence[str], predictions: Sequence[str]) -> dict[str, dict]:
    """`per_label_scores` as plain dicts."""
    return {label: asdict(score) for label, score in per_label_scores(references, predictions).items()}


def confusion_matrix(references: Sequence[str], predictions: Sequence[str]) -> dict[str, list]:
    """{"labels": [...], "matrix": rows = reference label, columns = predicted label}."""
    _check_lengths(references, predictions)
    labels = label_set(references, predictions)
    matrix = sk.confusion_matrix(references, predictions, labels=labels).tolist() if labels else []
    return {"labels": labels, "matrix": matrix}
