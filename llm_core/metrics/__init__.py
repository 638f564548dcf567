"""Evaluation metrics for llmbatch outputs: which metrics exist, and each task's defaults.

Only names live here, so a manifest check can validate `evaluate.metrics` without importing
the scoring libraries (scikit-learn and rouge-score take seconds to import). Scoring is
`llm_core.metrics.compute.compute_metrics`, over `rouge` (rouge-score), `translation`
(sacrebleu) and `classification` (scikit-learn).
"""

from __future__ import annotations

from llm_core.tasks import TaskKind

ROUGE_METRICS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
PAIR_METRICS: tuple[str, ...] = ("bleu", "chrf", "accuracy", "macro_f1", "per_label", "confusion_matrix")
KNOWN_METRICS: tuple[str, ...] = ROUGE_METRICS + PAIR_METRICS

DEFAULT_METRICS: dict[str, list[str]] = {
    TaskKind.SUMMARIZE: list(ROUGE_METRICS),
    TaskKind.TRANSLATE: ["bleu", "chrf"],
    TaskKind.CLASSIFY: ["accuracy", "macro_f1", "per_label", "confusion_matrix"],
    # Free generation has no reference to compare with by default.
    TaskKind.GENERATE: [],
}

__all__ = ["DEFAULT_METRICS", "KNOWN_METRICS", "PAIR_METRICS", "ROUGE_METRICS"]
