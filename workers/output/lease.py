"""The writer lease of an output location: one live job writes an output at a time.

`_lease/<generation:012d>.json` holds {job_id, holder (host:pid), acquired_at, renewed_at,
expires_at, released}. The current lease is the highest generation. Every change of hands, and
every renewal, creates the next generation with a create-if-absent put, so of two writers that
race for generation g+1 exactly one wins: a lease is never shared, on local disks or on S3.

A live lease of another job refuses with `OutputBusyError` (job, holder, expiry). A lease is
taken over when it expired, was released, is held by the same job id (the job's runner was
restarted), or by a process of this host that is gone. The holder renews in a background
thread (by default every 15 s for 60 s), and `check()` renews at once: if someone else created a
later generation, the holder has lost the lease and `check()` raises `LeaseLost`; the publish
checks it before the marker and before garbage collection.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from datetime import UTC, datetime

import structlog

from cluster import storage
from workers.output.layout import LEASE_DIR

log = structlog.get_logger()

GENERATION_RE = re.compile(r"^([0-9]{12})\.json$")


class OutputBusyError(RuntimeError):
    """Another live job holds the output's lease."""

    def __init__(self, uri: str, job_id: str, holder: str, until: str):
        super().__init__(f"output {uri} is being written by job {job_id} (holder {holder}) until {until}; "
                         "wait for it, cancel it, or choose another output.uri")
        self.uri, self.job_id, self.holder, self.until = uri, job_id, holder, until

    def __reduce__(self):
        return type(self), (self.uri, self.job_id, self.holder, self.until)


class LeaseLost(RuntimeError):
    """This job no longer holds the output's lease: it must not publish."""


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(holder: str) -> bool:
    """True when `holder` (host:pid) is a process of this host that no longer exists."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def takeover_reason(record: dict | None, job_id: str, now: float | None = None) -> str | None:
    """Why the lease in `record` may be taken by `job_id` (None: it may not)."""
    now = time.time() if now is None else now
    if record is None:
        return "no lease"
    if record.get("released"):
        return "released"
    if float(record.get("expires_at", 0)) <= now:
        return "expired"
    if record.get("job_id") == job_id:
        return "same job"
    if _process_gone(str(record.get("holder", ""))):
        return "holder process gone"
    return None


def _path(location, generation: int) -> str:
    return location.path(f"{LEASE_DIR}/{generation:012d}.json")


def generations(location) -> list[int]:
    names = storage.list_names(location.path(LEASE_DIR), scope=location.scope)
    return sorted(int(m.group(1)) for n in names if (m := GENERATION_RE.match(n)))


def current_lease(location) -> tuple[int, dict | None]:
    """(highest generation, its record); (0, None) when there is none."""
    for _ in range(5):  # the newest may be deleted between list and read only when a newer exists
        gens = generations(location)
        if not gens:
            return 0, None
        try:
            raw = storage.read_bytes(_path(location, gens[-1]), scope=location.scope)
        except FileNotFoundError:
            continue
        try:
            return gens[-1], json.loads(raw)
        except ValueError:  # unreadable: nobody can prove they hold it
            return gens[-1], {"released": True}
    raise RuntimeError(f"output {location.uri}: the lease keeps changing hands; try again")


class OutputLease:
    """This job's lease on one output location (use `acquire`; a context manager releasing it)."""

    def __init__(self, location, job_id: str, generation: int, record: dict, ttl_s: float, renew_every_s: float):
        self.location, self.job_id, self.generation, self.record = location, job_id, generation, record
        self.ttl_s, self.renew_every_s = ttl_s, renew_every_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lost: str | None = None
        self._released = False
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{job_id}", daemon=True)

    @classmethod
    def acquire(cls, location, job_id: str, ttl_s: float = 60.0, renew_every_s: float = 15.0) -> "OutputLease":
        """Take the lease (renewed in the background from now on) or raise OutputBusyError."""
        for _ in range(10):
            generation, record = current_lease(location)
            reason = takeover_reason(record, job_id)
            if reason is None:
                raise OutputBusyError(location.uri, str(record.get("job_id")), str(record.get("holder")),
                                      _utc(float(record.get("expires_at", 0))))
            now = time.time()
            mine = {"job_id": job_id, "holder": holder_name(), "acquired_at": now, "renewed_at": now,
                    "expires_at": now + ttl_s, "released": False}
            if storage.put_if_absent(_path(location, generation + 1), _json(mine), scope=location.scope):
                lease = cls(location, job_id, generation + 1, mine, ttl_s, renew_every_s)
                lease._delete_older()
                log.info("output.lease_acquired", job_id=job_id, output=location.uri, generation=generation + 1,
                         taken_because=reason, previous_job=(record or {}).get("job_id"))
                lease._thread.start()
                return lease
            # another writer created that generation first: look again (it may be live now)
        raise RuntimeError(f"output {location.uri}: could not take the lease (too many concurrent takers)")

    # ---- holding it ------------------------------------------------------------------------------

    @property
    def lost(self) -> str | None:
        """Why the lease was lost (None while held)."""
        return self._lost

    def _renew(self) -> None:
        """Create the next generation (a renewal is a takeover from ourselves); LeaseLost if
        another writer got there first, or a later generation exists."""
        with self._lock:
            if self._released:
                raise LeaseLost(f"the lease on {self.location.uri} was released")
            if self._lost:
                raise LeaseLost(self._lost)
            self._adopt_or_lose(generations(self.location))
            now = time.time()
            record = {**self.record, "renewed_at": now, "expires_at": now + self.ttl_s}
            nxt = self.generation + 1
            if not storage.put_if_absent(_path(self.location, nxt), _json(record), scope=self.location.scope):
                self._adopt_or_lose([nxt])
                return
            old, self.generation, self.record = self.generation, nxt, record
            self._adopt_or_lose(generations(self.location))  # a newer holder may have deleted ours and moved on
            storage.delete(_path(self.location, old), scope=self.location.scope)

    def _adopt_or_lose(self, gens: list[int]) -> None:
        """Nothing when our generation is the highest; when the highest is our own (a renewal
        whose answer was lost), take it as ours; else the lease is lost (LeaseLost)."""
        if not gens or gens[-1] <= self.generation:  # ours is the newest (or was deleted by hand)
            return
        other = self._read(gens[-1])
        if all(other.get(k) == self.record.get(k) for k in ("job_id", "holder", "acquired_at")) \
                and not other.get("released"):
            self.generation, self.record = gens[-1], other
            self._delete_older()
            return
        self._lose(gens[-1], other)

    def _read(self, generation: int) -> dict:
        try:
            return json.loads(storage.read_bytes(_path(self.location, generation), scope=self.location.scope))
        except (OSError, ValueError):
            return {}

    def _lose(self, generation: int, other: dict) -> None:
        self._lost = (f"job {self.job_id} lost the lease on {self.location.uri} to job {other.get('job_id', '?')} "
                      f"(holder {other.get('holder', '?')}, generation {generation}); it publishes nothing")
        log.error("output.lease_lost", job_id=self.job_id, output=self.location.uri, taken_by=other.get("job_id"))
        self._stop.set()
        raise LeaseLost(self._lost)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self._renew()
            except LeaseLost:
                return
            except Exception as exc:  # a storage outage: try again next time; check() will tell
                log.warning("output.lease_renew_failed", job_id=self.job_id, output=self.location.uri, error=str(exc))

    def check(self) -> None:
        """Renew now: raises LeaseLost unless this job still holds the lease (call before publish)."""
        try:
            self._renew()
        except LeaseLost:
            raise
        except Exception as exc:
            raise LeaseLost(f"job {self.job_id} could not renew its lease on {self.location.uri}: {exc}") from exc

    def _delete_older(self) -> None:
        for gen in generations(self.location):
            if gen < self.generation:
                storage.delete(_path(self.location, gen), scope=self.location.scope)

    def release(self) -> None:
        """Give the lease up (a released generation lets the next job in at once); idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if self._released or self._lost:
                self._released = True
                return
            self._released = True
            record = {**self.record, "released": True, "renewed_at": time.time()}
            try:
                if storage.put_if_absent(_path(self.location, self.generation + 1), _json(record),
                                         scope=self.location.scope):
                    storage.delete(_path(self.location, self.generation), scope=self.location.scope)
            except Exception as exc:  # the lease then simply expires
                log.warning("output.lease_release_failed", job_id=self.job_id, output=self.location.uri,
                            error=str(exc))

    def __enter__(self) -> "OutputLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _json(record: dict) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True).encode()
