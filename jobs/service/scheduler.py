"""The job scheduler: one loop per service process that starts, watches and finishes job runners.

Each tick: renew this process's leases, poll its runners, adopt jobs whose scheduler died
(re-attach to a live runner by name, or re-queue to resume from committed shards), start the
due schedule runs, then admit queued jobs. A job is started only by the one process whose
conditional `claim` moved it queued -> running, so two processes never start it twice.
A runner reports how its run ended as a dict whose `status` is a `JobState` value; the
scheduler records the job's next state through the store, which follows jobs/lifecycle.py.
Only a failed run is retried (running -> queued, up to max_attempts); succeeded and partial
both published a snapshot and end the job.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import ray
import structlog

from cluster import ray_cluster
from jobs.lifecycle import IllegalTransition, JobState
from jobs.run.protocol import Runner
from jobs.service import runner_actors
from jobs.service.error_text import tenant_error
from jobs.service.outcome import partial_message, reported, tenant_summary
from jobs.service.queue import Admission, enqueue_schedule_runs
from jobs.service.store.job_store import Store, utcnow

log = structlog.get_logger()


@dataclass
class SchedulerConfig:
    ray_address: str | None = None
    runner: Runner | None = None  # None: the runner of each manifest's kind (tests give their own)
    admission: Admission = field(default_factory=Admission)
    lease_s: float = 30.0  # another process adopts a job this long after its scheduler went silent
    tick_s: float = 1.0
    cancel_grace_s: float = 30.0  # then the runner is killed outright
    reserve_s: float = 20.0  # resources of a just-started job count as used until Ray shows them


@dataclass
class Attached:
    handle: object
    last_progress: dict | None = None
    cancel_sent_at: float | None = None


class Scheduler:
    def __init__(self, store: Store, config: SchedulerConfig):
        self.store, self.cfg = store, config
        # host/pid/nonce: "/" never occurs in a hostname, so the host part parses back exactly.
        self.id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._attached: dict[str, Attached] = {}
        self._reserved: dict[str, tuple[float, float, float]] = {}  # job id -> (t, cpus, gpus)
        self._noted: set[str] = set()  # jobs told they do not fit the cluster
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if in_main else None
        ray_cluster.connect(self.cfg.ray_address)
        if in_main and previous is not None:
            # ray.init installs a SIGTERM handler that exits at once; keep the server's own
            # (uvicorn's), so SIGTERM shuts down gracefully through the app's lifespan.
            signal.signal(signal.SIGTERM, previous)
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduler.started", scheduler=self.id, ray_address=self.cfg.ray_address)

    def stop(self) -> None:
        """Stop watching and leave Ray. On a cluster the runners keep going and a later service
        re-attaches to them; a local Ray this process started ends with every process of it."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        ray_cluster.shutdown()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad tick (database blip, Ray hiccup) must not end the loop
                log.exception("scheduler.tick_failed")
            self._stop.wait(self.cfg.tick_s)

    def tick(self) -> None:
        held = self.store.renew_leases(self.id, self.cfg.lease_s, set(self._attached))
        for job_id in list(self._attached):
            if job_id not in held:  # finished elsewhere or our lease was taken over
                self._attached.pop(job_id, None)
        for job_id in list(self._attached):
            self._poll(job_id)
        self._adopt_orphans()
        enqueue_schedule_runs(self.store)
        self._admit()

    # ---- starting ------------------------------------------------------------------------

    def _admit(self) -> None:
        queued = self.store.queued_ready()
        if not queued:
            return
        free = dict(ray.available_resources())
        now = time.monotonic()
        self._reserved = {j: r for j, r in self._reserved.items() if now - r[0] < self.cfg.reserve_s}
        for _, cpus, gpus in self._reserved.values():
            free["CPU"] = free.get("CPU", 0.0) - cpus
            free["GPU"] = free.get("GPU", 0.0) - gpus
        claimed = []
        for job in self.cfg.admission.pick(queued, self.store.running_per_queue(), free):
            row = self.store.claim(job["id"], self.id, self.cfg.lease_s)
            if row is not None:  # else another process claimed it first
                self._reserved[row["id"]] = (now, row["cpus"], row["gpus"])
                claimed.append(row)
        # Create all runners first, then wait for them together: actor start-up takes seconds.
        pending = []
        for row in claimed:
            try:
                pending.append((row, runner_actors.create(row, self.cfg.runner, self.cfg.ray_address, self.store)))
            except Exception as exc:
                self._start_failed(row, exc)
        for row, handle in pending:
            try:
                self._start_runner(row, handle)
            except Exception as exc:
                self._start_failed(row, exc)
        self._note_too_big(queued)

    def _start_failed(self, row: dict, exc: Exception) -> None:
        """A runner that cannot be created or started counts as a failed run (retry policy)."""
        log.exception("runner.start_failed", job_id=row["id"])
        runner_actors.kill(runner_actors.find(row["id"]))  # None if it was never created
        self._end(row, JobState.FAILED, error=f"runner did not start: {type(exc).__name__}: {exc}", kill=False)

    def _note_too_big(self, queued: list[dict]) -> None:
        """Say once, in its event log, why a job that cannot fit the whole cluster is waiting."""
        total = ray.cluster_resources()
        for job in queued:
            if job["id"] in self._noted:
                continue
            if job["cpus"] > total.get("CPU", 0.0) or job["gpus"] > total.get("GPU", 0.0):
                self._noted.add(job["id"])
                self.store.add_event(job["id"], "info", f"waiting: needs {job['cpus']:g} CPUs and {job['gpus']:g} "
                                     f"GPUs; the cluster has {total.get('CPU', 0):g} and {total.get('GPU', 0):g}")

    def _start_runner(self, row: dict, handle) -> None:
        handle = runner_actors.start(row, handle, self.cfg.runner, self.cfg.ray_address, self.store)
        self._attached[row["id"]] = Attached(handle)
        log.info("runner.started", job_id=row["id"], attempt=row["attempts"], queue=row["queue"])

    # ---- watching ------------------------------------------------------------------------

    def _adopt_orphans(self) -> None:
        host = f"{socket.gethostname()}/"
        for job in self.store.orphans(owner_prefix=host):
            owner = job["lease_owner"] or ""
            lapsed = job["lease_until"] is None or job["lease_until"] <= utcnow()
            dead = None
            if owner == self.id:
                if job["id"] in self._attached:
                    continue  # ours and watched
            elif owner.startswith(host) and not lapsed:
                if _alive(owner, host):
                    continue  # a live scheduler on this host holds it
                dead = owner
            row = self.store.take_over(job["id"], self.id, self.cfg.lease_s, dead_owner=dead)
            if row is None:
                continue
            jlog = log.bind(job_id=row["id"])
            handle = runner_actors.find(row["id"])
            if handle is None:
                if row["state"] == JobState.CANCELLING:
                    self._finish(row, JobState.CANCELLED, message="cancelled (its runner was gone)")
                else:
                    self._finish(row, JobState.QUEUED,
                                 message="runner gone after a restart; re-queued to resume from committed shards")
                jlog.info("runner.gone_requeued", state=row["state"])
                continue
            handle.start.remote()  # a runner created just before its scheduler died may not have begun
            self._attached[row["id"]] = Attached(handle)
            self.store.add_event(row["id"], "info", f"re-attached to its runner (scheduler {self.id})")
            jlog.info("runner.reattached")

    def _poll(self, job_id: str) -> None:
        att = self._attached[job_id]
        row = self.store.get(job_id)
        if row is None:
            self._attached.pop(job_id, None)
            return
        try:
            progress, result = ray.get(att.handle.poll.remote(), timeout=10)
        except ray.exceptions.GetTimeoutError:
            return
        except ray.exceptions.RayActorError as exc:
            self._end(row, JobState.FAILED, error=f"runner died: {exc}", kill=False)
            return
        if progress and progress != att.last_progress:
            prev = att.last_progress or {}
            counts = ("shards_total", "shards_done", "shards_skipped", "shards_failed")
            moved = any(progress.get(k) != prev.get(k) for k in counts)  # an event per shard, not per poll
            self.store.set_progress(job_id, self.id, progress, event=moved)
            att.last_progress = progress
        if result is not None:
            status, error = reported(result)
            self._end(row, status, error=error, summary=tenant_summary(result.get("summary")),
                      output_uri=result.get("output_uri"))
            return
        now = time.monotonic()
        timed_out = row["timeout_s"] and (utcnow() - row["started_at"]).total_seconds() > row["timeout_s"]
        if att.cancel_sent_at is None and (row["state"] == JobState.CANCELLING or timed_out):
            att.handle.cancel.remote()
            att.cancel_sent_at = now
            if timed_out:
                self.store.add_event(job_id, "error", f"timed out after {row['timeout_s']}s; stopping its runner")
        elif att.cancel_sent_at is not None and now - att.cancel_sent_at > self.cfg.cancel_grace_s:
            self._end(row, JobState.CANCELLED, error="runner did not stop in time; killed")

    def _end(self, row: dict, status: JobState, *, error: str | None = None, summary: dict | None = None,
             output_uri: str | None = None, kill: bool = True) -> None:
        """Record how a run ended (terminal, or queued again for a retry), then drop its runner.
        The tenant sees the error without colour codes, hosts or pids; the log keeps it whole."""
        log.info("runner.ended", job_id=row["id"], status=status.value, error=error)
        error = tenant_error(error)
        common = {"summary": summary, "output_uri": output_uri}
        if row["state"] == JobState.CANCELLING:
            ok = self._finish(row, JobState.CANCELLED, **common)
        elif status == JobState.SUCCEEDED:
            ok = self._finish(row, JobState.SUCCEEDED, **common)
        elif status == JobState.PARTIAL:  # a published outcome, never retried: its reasons say what is missing
            ok = self._finish(row, JobState.PARTIAL, message=partial_message(summary, error), error=error, **common)
        elif status == JobState.CANCELLED:  # only a timeout cancels a job that is not cancelling
            ok = self._finish(row, JobState.FAILED, message="timed out", failed_run=True,
                              error=f"timed out after {row['timeout_s']}s", **common)
        elif row["failures"] + 1 < row["max_attempts"] and not (summary or {}).get("refused"):
            # (a refusal before any work — pre-flight, the output held or changed — would only repeat)
            delay = row["retry_backoff_s"] * 2 ** row["failures"]
            ok = self._finish(row, JobState.QUEUED, message=f"run failed; retry in {delay:.0f}s", error=error,
                              failed_run=True, event_kind="retry", not_before=utcnow() + timedelta(seconds=delay))
        else:
            ok = self._finish(row, JobState.FAILED, error=error or JobState.FAILED.value, failed_run=True,
                              **common)
        if ok is None:
            return  # the job moved meanwhile (a cancel): the next poll decides again
        att = self._attached.pop(row["id"], None)
        self._reserved.pop(row["id"], None)
        # The state is recorded first: dying between the two leaves a finished runner behind
        # (harmless; replaced on the next start) rather than a job whose runner vanished.
        if ok and kill and att is not None:
            runner_actors.kill(att.handle)

    def _finish(self, row: dict, to_state: JobState, *, message: str | None = None, **how) -> bool | None:
        """store.finish (the event's message defaults to the state's name); None when the job's
        state changed since `row` was read and the lifecycle no longer allows the move (a cancel
        came in between)."""
        try:
            return self.store.finish(row["id"], self.id, to_state, message=message or to_state.value, **how)
        except IllegalTransition as exc:
            log.info("job.moved_meanwhile", job_id=row["id"], wanted=to_state.value, error=str(exc))
            return None


def _alive(owner: str, host: str) -> bool:
    """Whether the scheduler process named `owner` (host/pid/nonce) on this host still runs.
    A restarted service adopts its predecessor's jobs at once instead of waiting out the lease."""
    try:
        pid = int(owner[len(host):].split("/")[0])
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
