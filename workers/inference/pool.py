"""The inference actor pool: one shard per actor at a time, bounded retries, replaced actors.

An actor that dies (killed, OOM, its node lost) takes only its current shard with it: the shard
goes back to the queue for another actor and a replacement actor is started. So does an attempt
that runs past `shard_timeout_s` (a hung actor): the pool kills that actor itself. A shard whose
attempts all fail is reported as failed with its last error; the caller decides whether that
fails the job or is skipped. At the job's deadline the pool stops: shards not done are left as
they are (neither failed nor committed) and the outcome says `timed_out`.

While shards run, the pool asks their actors for their rows, errors and tokens so far (about
once a second, never waiting for an answer) and hands them to `on_progress`.
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

from cluster import logs, ray_cluster, storage
from workers.inference.pool_progress import ProgressPoller
from workers.inference.ray_actor import make_actor_class
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard

log = structlog.get_logger()

# shard id -> (rows_done, error_rows, completion_tokens) of the shards in flight
ProgressCallback = Callable[[dict[str, tuple[int, int, int]]], None]


class PoolError(RuntimeError):
    pass


@dataclass
class PoolOutcome:
    reports: dict[str, ShardReport] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # shard id -> last error
    attempts: Counter = field(default_factory=Counter)
    cancelled: bool = False
    timed_out: bool = False  # the job's deadline passed; shards not done were left undone
    shard_seconds: dict[str, float] = field(default_factory=dict)  # shard id -> its committing attempt's time
    log_file: str | None = None  # where the actors logged, when not to the driver


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
    shard_timeout_s: float | None = None  # an attempt running longer is abandoned, its actor replaced
    progress_every_s: float = 1.0
    # Built from the driver's environment, sent to every actor (never credentials).
    s3_settings: storage.S3Settings = field(default_factory=storage.s3_settings)
    # The job's scope (the driver's current one unless given): each actor runs under it.
    scope: storage.Scope = field(default_factory=storage.current_scope)


@dataclass
class _Attempt:
    actor: object
    shard: Shard
    started: float = field(default_factory=time.monotonic)


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
        self.log_file = None
        self.poller = ProgressPoller(None)

    def _start_actor(self) -> None:
        # Actors on other nodes must use the S3 endpoint/region the driver was given.
        actor = self.actor_cls.options(num_cpus=self.config.num_cpus, num_gpus=self.config.num_gpus).remote(
            self.config.s3_settings, self.config.scope, *self.config.actor_args,
            log_file=str(self.log_file) if self.log_file else None, **self.config.actor_kwargs
        )
        self.all_actors.append(actor)
        self.starting[actor.ready.remote()] = (actor, time.monotonic())

    def run(self, shards: list[Shard], work: ShardWork, on_report: Callable[[ShardReport], None],
            cancel: threading.Event | None = None, *, on_progress: ProgressCallback | None = None,
            deadline: float | None = None) -> PoolOutcome:
        """`deadline`: a time.monotonic() value; `on_progress`: the in-flight shards' counts."""
        out = PoolOutcome()
        self.log_file = ray_cluster.actor_log_file(self.job_id)
        out.log_file = str(self.log_file) if self.log_file else None
        follower = logs.follow(self.log_file) if self.log_file and logs.verbose() else None
        queue = deque(shards)
        in_flight: dict = {}  # process() future -> _Attempt
        self.poller = poller = ProgressPoller(on_progress, self.config.progress_every_s)
        for _ in range(min(self.config.workers, max(len(shards), 1))):
            self._start_actor()
        try:
            while queue or in_flight:
                if cancel is not None and cancel.is_set():
                    out.cancelled = True
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    out.timed_out = True
                    log.warning("pool.deadline", job_id=self.job_id, in_flight=len(in_flight), queued=len(queue))
                    break
                while queue and self.idle:
                    actor, shard = self.idle.pop(), queue.popleft()
                    out.attempts[shard.shard_id] += 1
                    in_flight[actor.process.remote(shard, work)] = _Attempt(actor, shard)
                if not in_flight and not self.starting:
                    raise PoolError("no inference actor could start: " + "; ".join(self.start_errors[-3:]))
                self._check_start_timeouts(in_flight)
                if self._check_shard_timeouts(in_flight, out, queue):
                    return out
                poller.poll({ref: (a.actor, a.shard.shard_id) for ref, a in in_flight.items()})
                ready, _ = ray.wait(list(in_flight) + list(self.starting), num_returns=1,
                                    timeout=self._wait_s(deadline))
                for ref in ready:
                    if ref in self.starting:
                        self._on_started(ref)
                    else:
                        attempt = in_flight.pop(ref)
                        poller.forget(attempt.shard.shard_id)
                        failed = self._on_finished(ref, attempt, out, queue, on_report)
                        if failed and self.config.stop_on_failure:
                            return out
        finally:
            self.shutdown()
            if follower is not None:
                follower.stop()
            if self.log_file:
                log.info("pool.actor_log", job_id=self.job_id, file=str(self.log_file))
        return out

    def _wait_s(self, deadline: float | None) -> float:
        """Short enough to poll progress and check timeouts; never past the deadline."""
        wait = min(0.5, self.config.progress_every_s)
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        return wait

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

    def _check_shard_timeouts(self, in_flight: dict, out: PoolOutcome, queue: deque) -> bool:
        """Abandon attempts running past shard_timeout_s: kill the (hung) actor, start another,
        retry the shard or fail it. True when a failure stops the pool."""
        limit = self.config.shard_timeout_s
        if not limit:
            return False
        now = time.monotonic()
        for ref, attempt in list(in_flight.items()):
            if now - attempt.started <= limit:
                continue
            del in_flight[ref]
            self.poller.forget(attempt.shard.shard_id)
            reason = f"timed out after {limit:g} s"
            log.warning("shard.timed_out", job_id=self.job_id, shard_id=attempt.shard.shard_id,
                        attempt=out.attempts[attempt.shard.shard_id], timeout_s=limit)
            self._kill(attempt.actor)
            self._start_actor()
            if self._retry_or_fail(attempt.shard, reason, out, queue) and self.config.stop_on_failure:
                return True
        return False

    def _on_finished(self, ref, attempt: _Attempt, out: PoolOutcome, queue: deque, on_report) -> bool:
        actor, shard = attempt.actor, attempt.shard
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
        seconds = time.monotonic() - attempt.started
        out.shard_seconds[shard.shard_id] = seconds
        report.seconds = seconds  # the shard's latency as the pool saw it (for the histogram)
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

    @staticmethod
    def _kill(actor) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead: nothing to stop
            pass

    def shutdown(self) -> None:
        for actor in self.all_actors:
            self._kill(actor)
        self.all_actors.clear()
        self.idle.clear()
        self.starting.clear()
