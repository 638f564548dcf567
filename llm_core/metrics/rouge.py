"""ROUGE-N and ROUGE-L F-measure through Google's `rouge-score` package, the reference implementation.

Its tokenizer lowercases, splits at every character outside [a-z0-9] (so accented letters split
words) and, with `use_stemmer`, Porter-stems tokens longer than three characters (nltk, which
rouge-score depends on). The corpus figure is the mean F-measure over pairs, which is what
rouge-score's aggregator reports as its central estimate without bootstrap noise.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from rouge_score.rouge_scorer import RougeScorer
from rouge_score.scoring import Score
from rouge_score.tokenizers import DefaultTokenizer


@lru_cache(maxsize=8)
def _scorer(rouge_types: tuple[str, ...], use_stemmer: bool) -> RougeScorer:
    # An explicit tokenizer: the same one RougeScorer would build, without its log line per scorer.
    return RougeScorer(list(rouge_types), tokenizer=DefaultTokenizer(use_stemmer))


def rouge_pair(
    reference: str, prediction: str, rouge_types: Sequence[str], use_stemmer: bool = False
) -> dict[str, Score]:
    """Scores (precision, recall, fmeasure) of one prediction against one reference, per type
    ("rouge1".."rouge9", "rougeL"); an unknown type raises ValueError."""
    return _scorer(tuple(rouge_types), use_stemmer).score(reference, prediction)


def corpus_rouge(
    references: Sequence[str],
    predictions: Sequence[str],
    rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean F-measure over pairs, per type; 0.0 for every type when there are no pairs."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    totals = dict.fromkeys(rouge_types, 0.0)
    for reference, prediction in zip(references, predictions):
        for rouge_type, score in rouge_pair(reference, prediction, rouge_types, use_stemmer).items():
            totals[rouge_type] += score.fmeasure
    count = len(references)
    return {rouge_type: (total / count if count else 0.0) for rouge_type, total in totals.items()}
