"""Stop strings: cut generated text at the first one (the stop string itself is dropped).

Both engines cut here: the transformers engine once per finished completion, the native engine
after every decode step, where `start` skips text already searched.
"""

from __future__ import annotations

from typing import Sequence


def truncate_at_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[str, bool]:
    """(text before the earliest stop string found at or after `start`, whether one was found).
    Empty stop strings are ignored."""
    cut = min((i for i in (text.find(s, start) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
