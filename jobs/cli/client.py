"""A small HTTP client for the service; the CLI's remote commands are built on it.

Job states come back as `JobState` values; `wait` and `follow` stop at a terminal one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import httpx

from jobs.lifecycle import JobState

DEFAULT_SERVER = "http://127.0.0.1:8080"


def _ended(state: str) -> bool:
    return JobState(state).terminal


class ClientError(Exception):
    """The service refused a request: its HTTP status, message and the fields at fault."""

    def __init__(self, status: int, message: str, fields: list[dict] | None = None):
        self.status, self.message, self.fields = status, message, fields or []
        lines = "".join(f"\n  - {f['path']}: {f['message']}" for f in self.fields)
        super().__init__(f"{message} (HTTP {status}){lines}")

    def __reduce__(self):  # rebuild from the same arguments (the message is derived from them)
        return (ClientError, (self.status, self.message, self.fields))


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.server = (server or os.environ.get("LLMBATCH_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token or os.environ.get("LLMBATCH_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw) -> dict:
        for attempt in range(5):  # ride out a service restart (connection refused) briefly
            try:
                r = self.http.request(method, path, **kw)
                break
            except httpx.TransportError:
                if attempt == 4:
                    raise
                time.sleep(1.0 * (attempt + 1))
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ClientError(r.status_code, err.get("message", r.text), err.get("fields"))
            except (ValueError, KeyError, TypeError):
                raise ClientError(r.status_code, r.text[:500]) from None
        return r.json()

    def submit(self, manifest: dict, **options) -> dict:
        body = {"manifest": manifest, **{k: v for k, v in options.items() if v is not None}}
        return self._call("POST", "/v1/jobs", json=body)

    def get(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def list(self, **filters) -> list[dict]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def audit(self, **params) -> dict:
        """A page of the audit log (admin tokens only): {"lines": [...], "next_before": seq | None}."""
        return self._call("GET", "/v1/audit", params=params)

    def events(self, job_id: str, after: int = 0) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/events", params={"after": after})

    def schedules(self, owner: str | None = None) -> list[dict]:
        """The caller's cron schedules (an admin's: everyone's, or `owner`'s)."""
        return self._call("GET", "/v1/schedules", params={"owner": owner} if owner else {})

    def schedule(self, schedule_id: str) -> dict:
        """One schedule with `skipped`: its recent periods that did not run, and why."""
        return self._call("GET", f"/v1/schedules/{schedule_id}")

    def delete_schedule(self, schedule_id: str) -> dict:
        """Stop a schedule (no further runs; runs already started go on)."""
        return self._call("DELETE", f"/v1/schedules/{schedule_id}")

    def follow(self, job_id: str, poll_s: float = 1.0) -> Iterator[dict]:
        """Every event of a job, waiting for new ones until the job has ended."""
        after = 0
        while True:
            page = self.events(job_id, after)
            for ev in page["events"]:
                after = ev["seq"]
                yield ev
            if _ended(page["state"]) and not page["events"]:
                return
            if not page["events"]:
                time.sleep(poll_s)

    def wait(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
             on_update: Callable[[dict], None] | None = None) -> dict:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if _ended(job["state"]):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s}s")
            time.sleep(poll_s)
