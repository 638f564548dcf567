"""Length-sorted, token-budgeted batches: similar lengths together so padding stays small."""

from __future__ import annotations


def token_budget_batches(lengths: list[int], max_batch: int, max_tokens: int | None,
                         new_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of at most `max_batch` sequences whose padded size
    (longest prompt + new tokens) x count stays within `max_tokens` (when given)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        fits = len(current) < max_batch and (
            max_tokens is None or (longest + new_tokens) * (len(current) + 1) <= max_tokens
        )
        if current and not fits:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
