"""A small Ray actor that carries a training job's progress from rank 0 to the job runner.

Ray Train v2 runs user callbacks inside its controller actor, not in the caller's process, so
the runner polls this actor instead: rank 0 pushes events (fire and forget), the runner drains.
A cancel request travels the other way: the runner sets it, rank 0 reads it at each log step.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class ProgressSink:
    def __init__(self):
        self._events: list[dict] = []
        self._all: list[dict] = []
        self._cancelled = False

    def push(self, event: dict) -> None:
        self._events.append(event)
        self._all.append(event)

    def drain(self) -> list[dict]:
        out, self._events = self._events, []
        return out

    def history(self) -> list[dict]:
        return list(self._all)

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled
