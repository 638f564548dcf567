"""The no-repeat-ngram rule every engine that lacks it applies (`no_repeat_ngram_size`): a
token that would complete an n-gram already present in prompt + output is banned. One pure
implementation, shared by the native sampler and vLLM's logits processor so both ban alike."""

from __future__ import annotations

from collections.abc import Sequence


class NgramIndex:
    """The n-grams of one growing token list (prompt + output), indexed by their first n - 1
    tokens. Each call indexes only the n-grams completed since the last one, so a step costs
    the new tokens, not the whole list."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no-repeat n-gram size must be at least 1, got {n}")
        self.n = n
        self.indexed = 0  # the n-grams ending at or before this many tokens are in `next`
        self.next: dict[tuple[int, ...], set[int]] = {}

    def banned(self, tokens: Sequence[int]) -> list[int]:
        """The tokens that may not come next after `tokens`. Each call's `tokens` must start
        with the previous call's (the same sequence, grown)."""
        n = self.n
        if len(tokens) + 1 < n:
            return []
        for end in range(max(self.indexed + 1, n), len(tokens) + 1):
            self.next.setdefault(tuple(tokens[end - n:end - 1]), set()).add(tokens[end - 1])
        self.indexed = len(tokens)
        return list(self.next.get(tuple(tokens[len(tokens) - n + 1:]), ()))
