"""Progress of one `generate` call, per prompt: an engine reports a prompt once all of its
params.n completions are done, so a caller counts rows, not sequences."""

from __future__ import annotations

from collections.abc import Callable, Iterable

OnFinished = Callable[[list[tuple[int, int]]], None]


class FinishedPrompts:
    """Collects finished completions and calls `on_finished([(prompt index, tokens), ...])`."""

    def __init__(self, n: int, on_finished: OnFinished | None):
        self.n, self.on_finished = n, on_finished
        self._left: dict[int, int] = {}
        self._tokens: dict[int, int] = {}

    def add(self, completions: Iterable[tuple[int, int]]) -> None:
        """`completions`: (prompt index, completion tokens) of each completion just finished."""
        if self.on_finished is None:
            return
        done = []
        for index, tokens in completions:
            self._left[index] = self._left.get(index, self.n) - 1
            self._tokens[index] = self._tokens.get(index, 0) + tokens
            if self._left[index] == 0:
                done.append((index, self._tokens.pop(index)))
        if done:
            self.on_finished(done)
