"""`compute_metrics`: the one entry callers need, from an output column and its reference column.

Rows whose prediction is None are error rows (the model produced nothing to score): they are
skipped and counted, so an error does not silently pass for a wrong answer. Rows whose
reference is None cannot be scored either and are counted apart.
"""

from __future__ import annotations

from typing import Callable, Sequence

from llm_core.metrics import DEFAULT_METRICS, KNOWN_METRICS, ROUGE_METRICS
from llm_core.metrics.classification import accuracy, confusion_matrix, macro_f1, per_label_report
from llm_core.metrics.rouge import corpus_rouge
from llm_core.metrics.translation import corpus_bleu, corpus_chrf

# Each metric maps (references, predictions) of the scored rows to a JSON-ready value.
_PAIR_METRICS: dict[str, Callable[[list[str], list[str]], object]] = {
    "bleu": lambda refs, preds: corpus_bleu(preds, refs),
    "chrf": lambda refs, preds: corpus_chrf(preds, refs),
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "per_label": per_label_report,
    "confusion_matrix": confusion_matrix,
}


def compute_metrics(
    task: str,
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    metrics: Sequence[str] | None = None,
    *,
    use_stemmer: bool = False,
) -> dict:
    """Score predictions against references.

    Returns the row counts (`rows`, `scored`, `errors`, `missing_reference`) and one key per
    metric. ROUGE, accuracy and macro-F1 are in [0, 1]; BLEU and chrF are on sacrebleu's
    0-100 scale. `use_stemmer` turns on Porter stemming for ROUGE.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if metrics is None:
        if task not in DEFAULT_METRICS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(map(str, DEFAULT_METRICS))}")
        metrics = DEFAULT_METRICS[task]
    unknown = [name for name in metrics if name not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")

    errors = sum(prediction is None for prediction in predictions)
    missing_reference = sum(
        prediction is not None and reference is None
        for prediction, reference in zip(predictions, references)
    )
    scored_pairs = [
        (reference, prediction)
        for prediction, reference in zip(predictions, references)
        if prediction is not None and reference is not None
    ]
    scored_references = [reference for reference, _ in scored_pairs]
    scored_predictions = [prediction for _, prediction in scored_pairs]

    result: dict = {
        "task": task,
        "rows": len(predictions),
        "scored": len(scored_pairs),
        "errors": errors,
        "missing_reference": missing_reference,
    }
    rouge_types = [name for name in metrics if name in ROUGE_METRICS]
    if rouge_types:
        result.update(corpus_rouge(scored_references, scored_predictions, rouge_types, use_stemmer))
    for name in metrics:
        if name in _PAIR_METRICS:
            result[name] = _PAIR_METRICS[name](scored_references, scored_predictions)
    return result
