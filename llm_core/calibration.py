"""Calibration of label scores: the label choice corrected for the prompt's own prior.

A model's label choice carries a prior of its prompt (the instructions, the examples and their
order, the labels' spelling) whatever the input. The calibrated choice is
argmax p(label | x) / p_prior(label), where p_prior is the mean, over some inputs put in the
same prompt, of the label distribution normalised over the labels. Two ways to get those inputs:

- `batch` (the default), Batch Calibration (Zhou et al. 2024, "Batch Calibration: Rethinking
  Calibration for In-Context Learning and Prompt Engineering", ICLR): the job's own rows, i.e.
  the mean label distribution of real in-domain inputs. A job measures it on one seeded sample
  of its rows (`sample_indices`, up to CALIBRATION_ROWS), the same for every shard, so a row's
  label never depends on the shard it is in.
- `content_free`, contextual calibration ("Calibrate Before Use", Zhao et al. 2021): the
  content-free texts "N/A", "" and "[MASK]", with each row's own examples.

On the Debian classify set (SmolLM2-135M, zero-shot, benchmarks/RESULTS.md) `batch` beats
`content_free`; random in-domain words (domain-context calibration, Fei et al. 2023) did worse
than no calibration there.

Scores here are log-likelihoods of each label's tokens (llm_core engines' `score`); everything
is computed in log space, so no probability underflows to zero.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

# The paper's content-free inputs; each row's prompt with one of these as the text.
CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")

BATCH, CONTENT_FREE = "batch", "content_free"
METHODS = (BATCH, CONTENT_FREE)
DEFAULT_METHOD = BATCH  # `calibrate: true`
# batch: rows of a job in its calibration sample, and the characters kept of each (every
# worker receives the sample and scores it once per process).
CALIBRATION_ROWS = 256
CALIBRATION_TEXT_CHARS = 2048
CALIBRATION_SEED = 0


def calibration_method(value: bool | str | None) -> str | None:
    """The method a `calibrate` setting names: True is DEFAULT_METHOD, False/None no calibration."""
    if value is True:
        return DEFAULT_METHOD
    if value is False or value is None:
        return None
    if isinstance(value, str) and value in METHODS:
        return value
    raise ValueError(f"calibrate must be true, false or one of {', '.join(METHODS)} (got {value!r})")


def sample_indices(total: int, k: int = CALIBRATION_ROWS, seed: int = CALIBRATION_SEED) -> list[int]:
    """Which of `total` rows form the calibration sample: all when there are at most k, else k
    drawn by `seed`; ascending. Depends on nothing but its arguments (not on shards)."""
    if total <= k:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), k))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def label_log_probs(scores: Sequence[float]) -> list[float]:
    """log p(label | x), normalised over the labels (a log-softmax of the label scores)."""
    total = _logsumexp(scores)
    return [s - total for s in scores]


def log_prior(scores: Sequence[Sequence[float]]) -> list[float]:
    """log p_prior(label): log of the mean of the normalised label distributions of the inputs
    (content-free texts, or the rows of a batch)."""
    if not scores:
        raise ValueError("calibration needs the scores of at least one input")
    normalised = [label_log_probs(s) for s in scores]
    n = len(normalised)
    return [_logsumexp([row[j] for row in normalised]) - math.log(n) for j in range(len(normalised[0]))]


content_free_log_prior = log_prior  # the name of Zhao et al.'s use


def calibrated_scores(scores: Sequence[float], prior: Sequence[float]) -> list[float]:
    """log(p(label | x) / p_prior(label)) for each label (`prior`: log_prior's)."""
    if len(scores) != len(prior):
        raise ValueError(f"{len(scores)} label scores but a prior over {len(prior)} labels")
    return [p - q for p, q in zip(label_log_probs(scores), prior)]


def best_label(values: Sequence[float]) -> int:
    """The index of the highest value (the first label of a tie)."""
    return max(range(len(values)), key=values.__getitem__)
