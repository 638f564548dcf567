"""The inference actor pool: one shard per actor at a time, bounded retries, replaced actors.

An actor that dies (killed, OOM, its node lost) takes only its current shard with it: the shard
goes back to the queue for another actor and a replacement actor is started. A shard whose
attempts all fail is reported as failed with its last error; the caller decides whether that
fails the job or is skipped.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import ray
import structlog
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from cluster import storage
from workers.inference.ray_actor import make_actor_class
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard

log = structlog.get_logger()


class PoolError(RuntimeError):
    pass


@dataclass
class PoolOutcome:
    reports: dict[str, ShardReport] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # shard id -> last error
    attempts: Counter = field(default_factory=Counter)
    cancelled: bool = False


@dataclass
class PoolConfig:
    workers: int
    num_cpus: float
    num_gpus: float
    actor_args: tuple
    actor_kwargs: dict
    max_attempts: int = 3
    stop_on_failure: bool = True
    actor_start_timeout_s: float = 900.0
    # Built from the driver's environment, sent to every actor (never credentials).
    s3_settings: storage.S3Settings = field(default_factory=storage.s3_settings)
    # The job's scope (the driver's current one unless given): each actor runs under it.
    scope: storage.Scope = field(default_factory=storage.current_scope)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    if isinstance(exc, RayActorError):
        return "actor died: " + (str(exc).splitlines()[0][:400] if str(exc) else "unknown cause")
    return f"{type(exc).__name__}: {exc}"[:500]


class ActorPool:
    def __init__(self, config: PoolConfig, job_id: str):
        self.config = config
        self.job_id = job_id
        self.actor_cls = make_actor_class()
        self.starting: dict = {}  # ready() future -> (actor, started_at)
        self.idle: list = []
        self.all_actors: list = []
        self.start_errors: list[str] = []

    def _start_actor(self) -> None:
        # Actors on other nodes must use the S3 endpoint/region the driver was given.
        actor = self.actor_cls.options(num_cpus=self.config.num_cpus, num_gpus=self.config.num_gpus).remote(
            self.config.s3_settings, self.config.scope, *self.config.actor_args, **self.config.actor_kwargs
        )
        self.all_actors.append(actor)
        self.starting[actor.ready.remote()] = (actor, time.monotonic())

    def run(self, shards: list[Shard], work: ShardWork, on_report: Callable[[ShardReport], None],
            cancel: threading.Event | None = None) -> PoolOutcome:
        out = PoolOutcome()
        queue = deque(shards)
        in_flight: dict = {}  # process() future -> (actor, shard)
        for _ in range(min(self.config.workers, max(len(shards), 1))):
            self._start_actor()
        try:
            while queue or in_flight:
                if cancel is not None and cancel.is_set():
                    out.cancelled = True
                    break
                while queue and self.idle:
                    actor, shard = self.idle.pop(), queue.popleft()
                    out.attempts[shard.shard_id] += 1
                    in_flight[actor.process.remote(shard, work)] = (actor, shard)
                if not in_flight and not self.starting:
                    raise PoolError("no inference actor could start: " + "; ".join(self.start_errors[-3:]))
                self._check_start_timeouts(in_flight)
                ready, _ = ray.wait(list(in_flight) + list(self.starting), num_returns=1, timeout=0.5)
                for ref in ready:
                    if ref in self.starting:
                        self._on_started(ref)
                    else:
                        failed = self._on_finished(ref, in_flight.pop(ref), out, queue, on_report)
                        if failed and self.config.stop_on_failure:
                            return out
        finally:
            self.shutdown()
        return out

    def _on_started(self, ref) -> None:
        actor, _ = self.starting.pop(ref)
        try:
            name = ray.get(ref)
            self.idle.append(actor)
            log.info("actor.ready", job_id=self.job_id, actor=name)
        except (RayActorError, RayTaskError) as exc:
            self.start_errors.append(_reason(exc))
            log.error("actor.start_failed", job_id=self.job_id, error=_reason(exc))

    def _check_start_timeouts(self, in_flight: dict) -> None:
        # Without this, a pool whose actors can never be placed (no resources) would wait forever.
        if in_flight or self.idle or not self.starting:
            return
        oldest = min(t for _, t in self.starting.values())
        if time.monotonic() - oldest > self.config.actor_start_timeout_s:
            raise PoolError(f"no inference actor started within {self.config.actor_start_timeout_s:.0f}s "
                            f"(needs {self.config.num_cpus} CPU / {self.config.num_gpus} GPU per actor)")

    def _on_finished(self, ref, slot, out: PoolOutcome, queue: deque, on_report) -> bool:
        actor, shard = slot
        bound = log.bind(job_id=self.job_id, shard_id=shard.shard_id, attempt=out.attempts[shard.shard_id])
        try:
            report = ray.get(ref)
        except RayActorError as exc:
            bound.warning("shard.actor_died", error=_reason(exc))
            self._start_actor()  # keep the pool at strength; the dead actor is not reused
            return self._retry_or_fail(shard, _reason(exc), out, queue)
        except (RayTaskError, GetTimeoutError) as exc:
            bound.warning("shard.attempt_failed", error=_reason(exc))
            self.idle.append(actor)
            return self._retry_or_fail(shard, _reason(exc), out, queue)
        self.idle.append(actor)
        out.reports[shard.shard_id] = report
        on_report(report)
        return False

    def _retry_or_fail(self, shard: Shard, reason: str, out: PoolOutcome, queue: deque) -> bool:
        if out.attempts[shard.shard_id] < self.config.max_attempts:
            queue.append(shard)
            return False
        out.failed[shard.shard_id] = reason
        log.error("shard.failed", job_id=self.job_id, shard_id=shard.shard_id,
                  attempts=out.attempts[shard.shard_id], error=reason)
        return True

    def shutdown(self) -> None:
        for actor in self.all_actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead: nothing to stop
                pass
        self.all_actors.clear()
        self.idle.clear()
        self.starting.clear()
