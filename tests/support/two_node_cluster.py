"""A two-node Ray cluster on one machine: a head raylet and a second raylet joined with
`ray start --address`, each with its own CPU count, so tests can kill "a node" mid-job.

Other programs run Ray on the same machine, so this cluster is private: its own GCS port and
temp dir, its own auth token (Ray >= 2.59 turns token auth on for local clusters; sharing
~/.ray/auth_token with others would break when they regenerate it), free ports for every
fixed-port service, and teardown that kills only the processes it started (never `ray stop`,
which stops every Ray on the machine).

Loaded by tests/conftest.py: a test asks for the `two_node_cluster` fixture by name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import ray
from ray._raylet import AuthenticationTokenLoader, Config

from tests.support.paths import REPO
from tests.support.ports import free_port

RAY = str(Path(sys.executable).parent / "ray")


class TwoNodeCluster:
    def __init__(self, env: dict[str, str] | None = None, cpus_per_node: int = 1,
                 node_env: dict[str, dict[str, str]] | None = None):
        """env: for every node (and `ray` CLI calls); node_env: {"head"|"node2": env} on top."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray puts unix sockets under it, and socket paths are limited to ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rlb", dir="/tmp")
        self.cpus = cpus_per_node
        self.env = {
            **os.environ,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Notice a killed node in ~3 s instead of ~15 s, so its shards move on sooner.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.node_env = node_env or {}
        self.node2_pids: set[int] = set()

    # ---- processes ---------------------------------------------------------------------

    def _ours(self) -> set[psutil.Process]:
        """Every process of this cluster: those naming its temp dir, and their descendants."""
        me = os.getpid()
        found: set[psutil.Process] = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid != me and any(self.temp_dir in a for a in (p.info["cmdline"] or [])):
                found.add(p)
                try:
                    found.update(p.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        return {p for p in found if p.pid != me}

    def _ray_start(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--disable-usage-stats",
               f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}", *args]
        proc = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def start(self, nodes: int = 2) -> "TwoNodeCluster":
        """Start the head, then (nodes=2) the second raylet; nodes=1 gives a one-node baseline."""
        self._ray_start("--head", f"--port={self.port}", "--include-dashboard=false",
                        f"--dashboard-port={free_port()}",
                        '--resources={"head": 1}', env=self.node_env.get("head"))
        if nodes == 2:
            self.start_node2()
        return self

    def start_node2(self) -> None:
        before = {p.pid for p in self._ours()}
        self._ray_start(f"--address={self.address}", '--resources={"node2": 1}', env=self.node_env.get("node2"))
        self.node2_pids = {p.pid for p in self._ours()} - before
        self.wait_for_nodes(2)

    def node2_raylet(self) -> psutil.Process:
        for pid in self.node2_pids:
            try:
                p = psutil.Process(pid)
                if "raylet/raylet" in " ".join(p.cmdline()):
                    return p
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError("the second node's raylet is not running")

    def kill_node2(self) -> None:
        """SIGKILL the second node's raylet and everything it started (its workers, actors)."""
        raylet = self.node2_raylet()
        victims = [raylet, *raylet.children(recursive=True)]
        victims += [psutil.Process(pid) for pid in self.node2_pids if psutil.pid_exists(pid)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.node2_pids = set()

    def alive_nodes(self) -> int:
        return sum(1 for n in ray.nodes() if n["Alive"])

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        """Wait until the GCS lists n live nodes (queried in a subprocess: no driver needed)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env,
                                 capture_output=True, text=True, timeout=120).stdout.strip()
            if out.splitlines() and out.splitlines()[-1] == str(n):
                return
            time.sleep(1)
        raise TimeoutError(f"the cluster at {self.address} did not reach {n} live nodes")

    def connect_driver(self) -> None:
        """Point this process at the cluster (env for ray.init; any earlier Ray session is closed)."""
        if ray.is_initialized():
            ray.shutdown()
        for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            os.environ[k] = self.env[k]
        _reload_ray_auth()

    def stop(self) -> None:
        procs = self._ours()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(list(procs), timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _reload_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE/RAY_AUTH_TOKEN once per process; re-read them (what ray.init
    itself does when it turns token auth on) so a process that already imported ray can join."""
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def two_node_cluster(moto_server, tmp_path_factory):
    """Head + second raylet, one CPU each, with the S3 server's credentials in every worker's env.

    The nodes' env has no S3 endpoint: workers reach the server only through the S3Settings the
    driver passes to the actors it starts (a worker that ignored them would miss the server).

    Module-scoped: the driver leaves this cluster (and Ray's auth settings are restored) when
    the module ends, so later tests that start their own local Ray are not joined to it."""
    cache = tmp_path_factory.mktemp("node-cache")
    env = {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"], "AWS_ENDPOINT_URL": ""}
    # A model cache per node, as on separate machines: each node downloads a model once.
    node_env = {n: {"LLMBATCH_CACHE": str(cache / n)} for n in ("head", "node2")}
    saved_auth = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    cluster = TwoNodeCluster(env, node_env=node_env).start()
    cluster.cache_dirs = {n: cache / n for n in node_env}
    cluster.connect_driver()
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        for k, v in saved_auth.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        _reload_ray_auth()
