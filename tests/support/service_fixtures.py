"""Real parts for the control-plane tests: a fresh PostgreSQL database, a Ray cluster that
outlives the service (started with `ray start`, stopped by pid), the service as a uvicorn
subprocess, and `echo_run_job`: a small, real, resumable runner with run_job's signature.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from cluster import storage
from tests.support.paths import REPO
from tests.support.ports import free_port

PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
ECHO_RUNNER = "tests.support.service_fixtures:echo_run_job"
# Ray 2.60 turns on token auth for `ray start` whenever ~/.ray/auth_token exists (any local
# ray.init() on this machine may create it); our cluster and its clients agree on "disabled".
LOG_DIR = Path(tempfile.gettempdir()) / "llmbatch-test-services"  # one log per service process
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# ---- PostgreSQL ----------------------------------------------------------------------------


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def create_pg_database() -> tuple[str, str]:
    """A fresh database on the local server; returns (name, url)."""
    name = f"llmbatch_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return name, f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


# ---- a Ray cluster of our own --------------------------------------------------------------


class RayCluster:
    """`ray start --head` on free ports with a private temp dir; stop() kills only its processes."""

    def __init__(self, num_cpus: int = 2):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = f"/tmp/lbray_{uuid.uuid4().hex[:6]}"
        taken = {self.port}

        def distinct_port() -> int:  # a port just closed can come back: one Ray port given twice fails start
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        ports = {f"--{name}": str(distinct_port()) for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
        cmd = [str(Path(PY).parent / "ray"), "start", "--head", f"--port={self.port}", f"--num-cpus={num_cpus}",
               "--include-dashboard=false", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               *[f"{k}={v}" for k, v in ports.items()]]
        env = {**os.environ, "PYTHONPATH": str(REPO), **RAY_ENV}
        subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, timeout=180)

    def pids(self) -> list[int]:
        mine = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            if self.temp_dir in cmdline or f":{self.port}" in cmdline and "ray" in cmdline:
                mine.append(proc.info["pid"])
        return mine

    def stop(self) -> None:
        procs = []
        for pid in self.pids():
            try:
                proc = psutil.Process(pid)
                proc.kill()
                procs.append(proc)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ---- the service as a subprocess -----------------------------------------------------------


class Service:
    def __init__(self, db_url: str, ray_address: str | None, *, runner: str | None = ECHO_RUNNER,
                 extra: list[str] = (), log_path: Path | None = None, lease_s: float = 4.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port), "--db", db_url, "--lease-s", str(lease_s), "--tick-s", "0.3"]
        if ray_address:
            args += ["--ray-address", ray_address]
        if runner:
            args += ["--runner", runner]
        self.log_path = log_path or LOG_DIR / f"service-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO), "LLMBATCH_LOG_FORMAT": "json", **RAY_ENV}
        self.proc = subprocess.Popen(cli_command(*args, *extra), cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"service not ready: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown hooks, no goodbye to the database
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def cli_command(*args: str) -> list[str]:
    """`llmbatch ARGS` (jobs.cli.main:main, the console script's target) with the venv's Python."""
    return [PY, "-m", "jobs.cli.main", *args]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cli_command(*args), cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


# ---- data and a small real runner ----------------------------------------------------------


def write_inputs(folder: Path, files: int = 4, rows_per_file: int = 5) -> list[str]:
    """Parquet files of (id, text); returns every id."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for f in range(files):
        rows = [f"f{f}-r{r}" for r in range(rows_per_file)]
        ids += rows
        pq.write_table(pa.table({"id": rows, "text": [f"text of {i}" for i in rows]}), folder / f"in-{f:03d}.parquet")
    return ids


def echo_manifest(name: str, inputs: Path, output: str, *, shard_delay_s: float = 0.0, fail_runs: int = 0,
                  workers: int = 1) -> dict:
    """A manifest for echo_run_job: the delay per shard and the number of runs that fail first are
    carried in fields it does not otherwise use (max_new_tokens, prompt_template)."""
    return {"name": name, "task": {"kind": "generate", "prompt_template": f"{{text}} #fail={fail_runs}"},
            "input": {"uri": str(inputs)}, "output": {"uri": output},
            "params": {"max_new_tokens": max(1, int(shard_delay_s * 100))},
            "resources": {"workers": workers, "cpus_per_worker": 1}}


def echo_run_job(manifest, *, job_id, ray_address=None, on_progress=None, cancel=None, show_progress=False):
    """One shard per input file, each committed once with put_if_absent as part-<n>.parquet;
    committed shards are skipped. Appends one line per call to _runs.log (the tests count them)."""
    out = manifest.output.uri
    delay = manifest.params.max_new_tokens / 100.0
    fail_runs = int(manifest.task.prompt_template.rsplit("#fail=", 1)[1])
    os.makedirs(storage.normalize(out), exist_ok=True)
    runs_log = Path(storage.normalize(out)) / "_runs.log"
    with open(runs_log, "a") as f:
        f.write(json.dumps({"job_id": job_id, "mode": manifest.output.mode, "pid": os.getpid()}) + "\n")
    previous_runs = len(runs_log.read_text().splitlines()) - 1
    committed = {n for n in storage.list_names(out) if n.startswith("part-")}
    if manifest.output.mode == "error_if_exists" and committed:
        return {"status": "failed", "error": f"output {out} already has parts", "summary": {}, "output_uri": out}
    files = storage.list_files(manifest.input.uri)
    progress = {"shards_total": len(files), "shards_done": 0, "shards_failed": 0, "shards_skipped": 0,
                "rows": 0, "error_rows": 0, "completion_tokens": 0, "elapsed_s": 0.0, "tokens_per_s": 0.0}
    start = time.monotonic()
    for n, ref in enumerate(files):
        name = f"part-{n:05d}.parquet"
        if name in committed:
            progress["shards_skipped"] += 1
            continue
        if cancel is not None and cancel.is_set():
            return {"status": "cancelled", "error": None, "summary": progress, "output_uri": out}
        if previous_runs < fail_runs and n == len(files) - 1:
            return {"status": "failed", "error": f"planned failure of run {previous_runs + 1}", "summary": {},
                    "output_uri": out}
        table = pq.read_table(ref.uri, columns=["id", "text"])
        time.sleep(delay)
        result = pa.table({"id": table["id"], "output": [t.upper() for t in table["text"].to_pylist()]})
        sink = pa.BufferOutputStream()
        pq.write_table(result, sink)
        storage.put_if_absent(storage.join(out, name), sink.getvalue().to_pybytes())
        progress["shards_done"] += 1
        progress["rows"] += table.num_rows
        progress["completion_tokens"] += table.num_rows * 4
        progress["elapsed_s"] = time.monotonic() - start
        progress["tokens_per_s"] = progress["completion_tokens"] / max(progress["elapsed_s"], 1e-6)
        if on_progress:
            on_progress(dict(progress))
    storage.write_bytes(storage.join(out, "_SUCCESS.json"), json.dumps(progress).encode())
    return {"status": "succeeded", "error": None, "summary": progress, "output_uri": out}


def output_ids(output: Path) -> list[str]:
    ids: list[str] = []
    for part in sorted(output.glob("part-*.parquet")):
        ids += pq.read_table(part)["id"].to_pylist()
    return ids


def runs(output: Path) -> list[dict]:
    path = output / "_runs.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
