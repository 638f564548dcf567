"""Identity "translation": the source text, unchanged.

The floor any translation must clear. Against a real translation it still scores above zero
(names, numbers, code and loanwords survive translation), which shows how much of a metric
is earned by copying.
"""

from __future__ import annotations

from typing import Sequence


def identity_translation(text: str) -> str:
    return text


def identity_translations(texts: Sequence[str]) -> list[str]:
    return list(texts)
