"""ROUGE-N and ROUGE-L F-measure, matching Google's `rouge-score` package.

Tokenization follows `rouge_score.tokenize`: lowercase, every run of characters outside
[a-z0-9] becomes a separator (so accented letters split words, as there), and optionally
Porter stemming of tokens longer than three characters. Scores are per pair; the corpus
figure is the mean F-measure over pairs, which is what `rouge-score`'s aggregator reports
as its central estimate without bootstrap noise.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_ROUGE_N_NAME = re.compile(r"rouge([1-9])$")


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


@lru_cache(maxsize=1)
def _porter_stem() -> Callable[[str], str]:
    # nltk is what rouge-score itself stems with; importing it only when stemming is asked
    # keeps it out of the default path.
    from nltk.stem import porter

    return porter.PorterStemmer().stem


def tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    tokens = _NON_ALPHANUMERIC.sub(" ", text.lower()).split()
    if use_stemmer:
        stem = _porter_stem()
        # Short words are left alone, as in the original ROUGE-1.5.5 script.
        tokens = [stem(token) if len(token) > 3 else token for token in tokens]
        # A stem can in principle leave characters outside [a-z0-9]; drop such tokens as
        # rouge-score does.
        tokens = [token for token in tokens if token and not _NON_ALPHANUMERIC.search(token)]
    return tokens


def _fmeasure(precision: float, recall: float) -> float:
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(reference_tokens: Sequence[str], prediction_tokens: Sequence[str], n: int) -> RougeScore:
    reference_ngrams = _ngrams(reference_tokens, n)
    prediction_ngrams = _ngrams(prediction_tokens, n)
    overlap = sum((reference_ngrams & prediction_ngrams).values())
    # max(..., 1): an empty side scores 0 rather than dividing by zero.
    precision = overlap / max(sum(prediction_ngrams.values()), 1)
    recall = overlap / max(sum(reference_ngrams.values()), 1)
    return RougeScore(precision, recall, _fmeasure(precision, recall))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            if token_a == token_b:
                current.append(previous[j - 1] + 1)
            else:
                current.append(max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(reference_tokens: Sequence[str], prediction_tokens: Sequence[str]) -> RougeScore:
    if not reference_tokens or not prediction_tokens:
        return RougeScore(0.0, 0.0, 0.0)
    common = lcs_length(reference_tokens, prediction_tokens)
    precision = common / len(prediction_tokens)
    recall = common / len(reference_tokens)
    return RougeScore(precision, recall, _fmeasure(precision, recall))


def rouge_pair(
    reference: str, prediction: str, rouge_types: Sequence[str], use_stemmer: bool = False
) -> dict[str, RougeScore]:
    """Scores of one prediction against one reference, per type ("rouge1", "rouge2", "rougeL")."""
    reference_tokens = tokenize(reference, use_stemmer)
    prediction_tokens = tokenize(prediction, use_stemmer)
    scores: dict[str, RougeScore] = {}
    for rouge_type in rouge_types:
        if rouge_type == "rougeL":
            scores[rouge_type] = rouge_l(reference_tokens, prediction_tokens)
        elif match := _ROUGE_N_NAME.match(rouge_type):
            scores[rouge_type] = rouge_n(reference_tokens, prediction_tokens, int(match.group(1)))
        else:
            raise ValueError(f"unknown ROUGE type {rouge_type!r}; use rouge1..rouge9 or rougeL")
    return scores


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
