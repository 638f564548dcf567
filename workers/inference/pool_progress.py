"""Live counts of the shards in flight: the pool asks each busy actor `progress()` about once a
second and reads the answers that have arrived, never waiting for one (a slow or dead actor
only leaves its shard's counts where they were)."""

from __future__ import annotations

import time
from typing import Callable

import ray
from ray.exceptions import RayActorError, RayTaskError


class ProgressPoller:
    def __init__(self, on_progress: Callable[[dict], None] | None, every_s: float = 1.0):
        self.on_progress = on_progress
        self.every_s = every_s
        self.pending: dict = {}  # progress() future -> shard id
        self.counts: dict[str, tuple[int, int, int]] = {}  # shard id -> (rows, error rows, tokens)
        self.flying: set[str] = set()
        self.sent: dict[str, tuple[int, int, int]] | None = None
        self.asked_at = 0.0

    def poll(self, in_flight: dict) -> None:
        """`in_flight`: process() future -> (actor, shard id). Collects answers, asks again when
        due, and hands the counts to on_progress when they changed."""
        if self.on_progress is None:
            return
        self.flying = {sid for _, sid in in_flight.values()}
        self._collect()
        now = time.monotonic()
        if now - self.asked_at >= self.every_s:
            self.asked_at = now
            asked = set(self.pending.values())
            for actor, sid in in_flight.values():
                if sid not in asked:
                    self.pending[actor.progress.remote()] = sid
        current = {sid: c for sid, c in self.counts.items() if sid in self.flying}
        if current != self.sent:
            self.sent = current
            self.on_progress(dict(current))

    def forget(self, shard_id: str) -> None:
        """The shard's attempt ended (reported, failed or abandoned): its counts go."""
        self.counts.pop(shard_id, None)
        self.flying.discard(shard_id)
        for ref in [r for r, sid in self.pending.items() if sid == shard_id]:
            del self.pending[ref]

    def _collect(self) -> None:
        if not self.pending:
            return
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        for ref in ready:
            sid = self.pending.pop(ref)
            try:
                answer = ray.get(ref)  # ready: returns at once
            except (RayActorError, RayTaskError):
                continue  # the actor died or was killed: its shard is handled by the pool
            # An answer about another shard (the actor moved on) or a finished one is stale.
            if answer and answer[0] == sid and sid in self.flying:
                self.counts[sid] = (int(answer[1]), int(answer[2]), int(answer[3]))
