"""Stopping the service (SIGTERM, SIGINT) or a `llmbatch run` (normal end, Ctrl-C) leaves no
process of the local Ray it started; after a kill -9 of the service its watchdog, or else the
next start, ends the orphaned Ray. Processes are counted by the session folder each carries
in its environment, under a base folder of this test's own (other tests' Rays are untouched)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cluster.ray_session import session_pids
from jobs.cli.client import Client
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from tests.support.local_ray import pids_under
from tests.support.paths import REPO
from tests.support.service_fixtures import Service, echo_manifest, write_inputs
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]


def session_of(base: Path, pid: int) -> Path:
    """The session folder that process `pid` started, once its Ray is up (agents included)."""
    def find():
        for s in base.glob("s-*"):
            owner = (s / "owner").read_text().split() if (s / "owner").exists() else []
            if owner and int(owner[0]) == pid and len(session_pids(s)) >= 5:
                return s
        return None
    return wait_for(find, timeout=120)


def watchdog_of(session: Path) -> int:
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"watch\0{session}".encode() in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no watchdog for {session}")


def gone(session: Path, timeout: float) -> bool:
    """Whether every process of `session` has ended and its folder is removed within `timeout`."""
    try:
        wait_for(lambda: not session_pids(session) and not session.exists(), timeout=timeout)
    except TimeoutError:
        return False
    return True


def test_service_stop_by_sigterm_and_sigint(ray_base, tmp_path):
    db = f"sqlite:///{tmp_path}/jobs.db"
    secret = create_token(Store(db), "alice", input_prefixes=[str(tmp_path)], output_prefixes=[str(tmp_path)])
    write_inputs(tmp_path / "in", files=4)
    for sig in (signal.SIGTERM, signal.SIGINT):
        svc = Service(db, None)  # no --ray-address: it starts a local Ray of its own
        try:
            session = session_of(ray_base, svc.proc.pid)
            client = Client(svc.url, secret)
            job = client.submit(echo_manifest(f"slow-{sig.name}", tmp_path / "in", str(tmp_path / f"out-{sig.name}"),
                                              shard_delay_s=5.0))["job"]
            wait_for(lambda: client.get(job["id"])["state"] == "running")  # a runner actor and its worker
            svc.proc.send_signal(sig)
            assert svc.proc.wait(timeout=90) is not None
            assert gone(session, timeout=5), f"Ray processes left after {sig.name}"
        finally:
            svc.stop()


def test_service_kill9_watchdog_or_next_start_ends_orphans(ray_base, tmp_path):
    db = f"sqlite:///{tmp_path}/jobs.db"
    first = Service(db, None)
    try:
        session = session_of(ray_base, first.proc.pid)
        first.kill9()
        assert gone(session, timeout=30), "the watchdog did not end the dead service's Ray"
    finally:
        first.stop()

    second = Service(db, None)  # this time its watchdog dies with it: the next start must reap
    try:
        session = session_of(ray_base, second.proc.pid)
        os.kill(watchdog_of(session), signal.SIGKILL)
        second.kill9()
        time.sleep(3)
        leftovers = session_pids(session)  # Ray's agents outlive a driver killed with -9
    finally:
        second.stop()
    third = Service(db, None)
    try:
        assert gone(session, timeout=5), f"the next start left {leftovers} of the orphaned Ray"
        own = session_of(ray_base, third.proc.pid)
    finally:
        third.stop()
    assert gone(own, timeout=5)


def _run_job_file(tmp_path: Path, tiny_dir: Path, rows: int, tokens: int) -> Path:
    src = tmp_path / f"in-{rows}.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"text {i}" for i in range(rows)]}),
                   src, row_group_size=10)
    spec = {"version": 1, "name": "shutdown", "task": "summarize", "model": str(tiny_dir),
            "input": {"uri": str(src)}, "output": {"uri": str(tmp_path / f"out-{rows}")},
            "params": {"max_new_tokens": tokens}, "resources": {"workers": 1, "batch_size": 4}}
    path = tmp_path / f"job-{rows}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_llmbatch_run_normal_end_and_ctrl_c(ray_base, tmp_path, tiny_dir):
    cmd = [sys.executable, "-m", "jobs.cli.main", "run", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(cmd + [str(_run_job_file(tmp_path, tiny_dir, rows=10, tokens=4))], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not pids_under(ray_base) and not list(ray_base.glob("s-*"))

    log = tmp_path / "run.log"
    # 10,000 rows (1,000 shards, minutes of work on a fast CPU): still running when Ctrl-C comes, however
    # slow the first part was to appear. 1,000 rows (42 s) once ended before the test sent it.
    rows = 10_000
    proc = subprocess.Popen(cmd + [str(_run_job_file(tmp_path, tiny_dir, rows=rows, tokens=96))], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        started = time.monotonic()
        session = session_of(ray_base, proc.pid)
        seen = time.monotonic() - started
        wait_for(lambda: list((tmp_path / f"out-{rows}").glob("data/*/part-*")), timeout=240)  # mid-job
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        sent = time.monotonic() - started
        code = proc.wait(timeout=120)
        assert code == 130, (f"exit {code}: Ray seen {seen:.1f} s and Ctrl-C sent {sent:.1f} s after the start, "
                             f"ended {time.monotonic() - started:.1f} s after; {log.read_text()[-2000:]}")
        assert gone(session, timeout=5), f"Ray processes left after Ctrl-C: {log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
