"""Joining a cluster ships llmbatch's own code to its workers (cluster.ray_code), and a worker that
cannot run it is named before any work.

The cluster is a real `ray start --head` with no PYTHONPATH. Its workers could import the
editable install of this checkout, so "the code came through runtime_env" is proved with a copy
of the four packages that carries a marker: the driver runs on the copy (PYTHONPATH, from an
empty cwd, so Ray does not add the copy's folder to the workers' path), and a worker sees the
marker only when the copy reached it through `py_modules`. Without runtime_env it does not, and
`verify_workers` says so (the control that shows the check can fail).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster.ray_code import KEY_DEPS, PACKAGES, ClusterCodeMismatch, differences, driver_facts, runtime_env
from tests.support.paths import REPO
from tests.support.two_node_cluster import TwoNodeCluster

DRIVER = """
import json, sys
import ray
import cluster
from cluster.ray_code import ClusterCodeMismatch, checked_nodes, driver_facts, runtime_env, verify_workers

ship = sys.argv[2] == "ship"
ray.init(address=sys.argv[1], logging_level="ERROR", **({"runtime_env": runtime_env()} if ship else {}))

@ray.remote(num_cpus=0)
def seen():
    import cluster
    return getattr(cluster, "RAY_CODE_MARKER", None), cluster.__file__

marker, path = ray.get(seen.remote())
try:
    verify_workers(timeout_s=120)
    error = None
except ClusterCodeMismatch as exc:
    error = str(exc)
print("RESULT " + json.dumps({"driver_marker": getattr(cluster, "RAY_CODE_MARKER", None),
                              "driver_file": cluster.__file__, "marker": marker, "file": path, "error": error,
                              "bf16": [f.get("cpu_bf16_fast") for f in checked_nodes().values()],
                              "driver_bf16": driver_facts()["cpu_bf16_fast"]}))
"""


@pytest.fixture(scope="module")
def bare_head():
    """A one-node cluster started with no PYTHONPATH (nothing of this checkout on its path)."""
    head = TwoNodeCluster(cpus_per_node=2)
    head.env.pop("PYTHONPATH", None)
    head.start(nodes=1)
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture()
def marked_copy(tmp_path):
    """The four packages copied, with a marker in cluster/__init__.py; and an empty cwd."""
    code = tmp_path / "code"
    for name in PACKAGES:
        shutil.copytree(REPO / name, code / name, ignore=shutil.ignore_patterns("__pycache__"))
    marker = uuid.uuid4().hex
    with open(code / "cluster" / "__init__.py", "a") as f:
        f.write(f"\nRAY_CODE_MARKER = {marker!r}\n")
    (tmp_path / "cwd").mkdir()
    return code, marker, tmp_path / "cwd"


def _drive(head: TwoNodeCluster, code: Path, cwd: Path, mode: str, extra_path: str = "") -> dict:
    env = {**head.env, "PYTHONPATH": os.pathsep.join(p for p in (str(code), extra_path) if p)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, head.address, mode], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.integration
def test_workers_get_the_drivers_code_through_runtime_env(bare_head, marked_copy):
    code, marker, cwd = marked_copy
    got = _drive(bare_head, code, cwd, "ship")
    assert got["driver_marker"] == marker and got["driver_file"].startswith(str(code))
    assert got["marker"] == marker, got  # the worker imported the copy: it came with the job
    assert not got["file"].startswith(str(code)) and not got["file"].startswith(str(REPO)), got
    assert got["error"] is None
    # each node also told its CPU's bf16 (what a job's dtype: auto comes to): this machine's
    assert got["bf16"] and all(flag is got["driver_bf16"] for flag in got["bf16"]), got


@pytest.mark.integration
def test_without_runtime_env_the_workers_run_other_code_and_verify_says_so(bare_head, marked_copy):
    code, marker, cwd = marked_copy
    got = _drive(bare_head, code, cwd, "bare")
    assert got["marker"] is None and got["file"].startswith(str(REPO)), got  # the checkout's, not the driver's
    assert "import other llmbatch code" in got["error"] and "runtime_env" in got["error"], got["error"]


@pytest.mark.integration
def test_a_worker_missing_a_dependency_is_named(bare_head, marked_copy, tmp_path):
    code, _, cwd = marked_copy
    only_here = tmp_path / "driver-only"
    only_here.mkdir()
    module = f"dep_{uuid.uuid4().hex[:8]}"
    (only_here / f"{module}.py").write_text("")
    with open(code / "jobs" / "__init__.py", "a") as f:  # llmbatch needing a library the cluster lacks
        f.write(f"\nimport {module}  # noqa\n")
    got = _drive(bare_head, code, cwd, "ship", extra_path=str(only_here))
    assert "cannot import llmbatch's code" in got["error"], got["error"]
    assert f"No module named '{module}'" in got["error"], got["error"]


def test_runtime_env_ships_the_four_packages_without_bytecode():
    env = runtime_env()
    assert [Path(p).name for p in env["py_modules"]] == list(PACKAGES)
    assert all((Path(p) / "__init__.py").is_file() for p in env["py_modules"])
    assert "__pycache__" in env["excludes"]


def test_differences_name_each_library_and_what_to_install():
    mine = driver_facts()
    assert differences(mine, mine) == []
    theirs = json.loads(json.dumps(mine))
    theirs["versions"]["pyarrow"] = "15.0.2"
    theirs["versions"]["pydantic"] = None
    lines = differences(mine, theirs, "the cluster's workers")
    assert any(f"have pyarrow 15.0.2 but this driver {mine['versions']['pyarrow']}" in ln
               and f"install pyarrow=={mine['versions']['pyarrow']}" in ln for ln in lines), lines
    assert any("have no pydantic" in ln for ln in lines), lines
    build_tag = json.loads(json.dumps(mine))
    if mine["versions"].get("torch"):  # a local build tag (+cu121 / +cpu) is not a difference
        build_tag["versions"]["torch"] = mine["versions"]["torch"].split("+")[0] + "+cu121"
    assert differences(mine, build_tag) == []
    assert set(KEY_DEPS) >= {"pyarrow", "pydantic"}


def test_mismatch_error_survives_pickling():
    exc = ClusterCodeMismatch("the cluster's workers have pyarrow 15.0 but this driver 21.0", ("a", "b"))
    back = pickle.loads(pickle.dumps(exc))
    assert str(back) == str(exc) and back.differences == ("a", "b")
