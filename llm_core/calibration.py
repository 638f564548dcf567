"""Contextual calibration of label scores ("Calibrate Before Use", Zhao et al. 2021).

A model's label choice carries a prior of its prompt (the instructions, the examples and their
order, the labels' spelling) whatever the input. The prior is measured on content-free inputs
put in the same prompt: p_cf(label) is the mean, over those inputs, of the label distribution
normalised over the labels. The calibrated choice is argmax p(label | x) / p_cf(label).

Scores here are log-likelihoods of each label's tokens (llm_core engines' `score`); everything
is computed in log space, so no probability underflows to zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The paper's content-free inputs; each row's prompt with one of these as the text.
CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def label_log_probs(scores: Sequence[float]) -> list[float]:
    """log p(label | x), normalised over the labels (a log-softmax of the label scores)."""
    total = _logsumexp(scores)
    return [s - total for s in scores]


def content_free_log_prior(content_free_scores: Sequence[Sequence[float]]) -> list[float]:
    """log p_cf(label): log of the mean of the normalised label distributions of the
    content-free inputs."""
    if not content_free_scores:
        raise ValueError("calibration needs the scores of at least one content-free input")
    normalised = [label_log_probs(s) for s in content_free_scores]
    n = len(normalised)
    return [_logsumexp([row[j] for row in normalised]) - math.log(n) for j in range(len(normalised[0]))]


def calibrated_scores(scores: Sequence[float], log_prior: Sequence[float]) -> list[float]:
    """log(p(label | x) / p_cf(label)) for each label."""
    if len(scores) != len(log_prior):
        raise ValueError(f"{len(scores)} label scores but a prior over {len(log_prior)} labels")
    return [p - q for p, q in zip(label_log_probs(scores), log_prior)]


def best_label(values: Sequence[float]) -> int:
    """The index of the highest value (the first label of a tie)."""
    return max(range(len(values)), key=values.__getitem__)
