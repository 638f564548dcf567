"""Corpus-level BLEU and chrF through sacrebleu.

Scores are on sacrebleu's 0-100 scale, so they can be compared with published figures.
Each hypothesis has exactly one reference, the shape of llmbatch's translate outputs.
"""

from __future__ import annotations

from typing import Sequence

import sacrebleu


def _check_lengths(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's default BLEU (13a tokenizer, exponential smoothing); 0.0 on no pairs."""
    _check_lengths(hypotheses, references)
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's default chrF (character 6-grams, beta 2); 0.0 on no pairs."""
    _check_lengths(hypotheses, references)
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)
