"""The chaos run of issue 13: `llmbatch run` on its own local Ray; mid-job an inference actor is
killed (its shard is redone elsewhere), then the runner itself and its Ray (as a machine crash
would); the same command with `--output-mode resume` finishes the job. The output then has each
input id exactly once in the files `_SUCCESS.json` lists, no part beside them, and the parts
committed before the crash were not redone."""

from __future__ import annotations

import json
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

from tests.support.local_ray import pids_under
from tests.support.output_files import assert_each_id_once, marker, part_files
from tests.support.paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

ROWS, GROUP = 240, 10  # 24 shards, each a couple of seconds of decoding


def parts(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("data/*/part-*.parquet")}


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)


def busy_actor(base: Path) -> int | None:
    """The pid of an inference actor of this test's Ray that is running a shard now."""
    for pid in pids_under(base):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::InferenceActor.process"):
            return pid
    return None


def test_actor_then_runner_killed_then_resume_gives_each_id_once(ray_base, tmp_path, tiny_dir):
    ids = [f"row-{i}" for i in range(ROWS)]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ids, "text": [f"Tool {i} copies files between folders." for i in range(ROWS)]}),
                   src, row_group_size=GROUP)
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "version": 1, "name": "chaos", "task": "summarize", "model": str(tiny_dir), "engine": "native",
        "input": {"uri": str(src)}, "output": {"uri": str(out)}, "params": {"max_new_tokens": 400},
        "resources": {"workers": 2, "batch_size": 2}, "max_shard_attempts": 3,
    }))
    cmd = [sys.executable, "-m", "jobs.cli.main", "run", str(job), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMBATCH_LOG_FORMAT": "json", "RAY_ADDRESS": ""}
    first_log = tmp_path / "first.log"
    with first_log.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: len(parts(out)) >= 2, "2 committed parts", proc)
        wait_for(lambda: busy_actor(ray_base) is not None, "busy inference actor", proc, timeout=30)
        os.kill(busy_actor(ray_base), signal.SIGKILL)  # an actor dies mid-shard
        after_actor = len(parts(out))
        wait_for(lambda: len(parts(out)) >= after_actor + 2, "progress after the actor was killed", proc)
        os.kill(proc.pid, signal.SIGKILL)  # then the runner, mid-job
        proc.wait()
    finally:
        for pid in [proc.pid, *pids_under(ray_base)]:  # and its Ray, as after a machine crash
            try:
                os.killpg(pid, signal.SIGKILL) if pid == proc.pid else os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    time.sleep(3)  # an in-flight put may still land
    before = parts(out)
    assert 4 <= len(before) < ROWS // GROUP, "the crash did not happen mid-job"
    assert marker(out) == (None, None)  # nothing was published
    died = [json.loads(line) for line in first_log.read_text().splitlines()
            if line.startswith("{") and '"shard.actor_died"' in line]
    assert died, "the pool did not see the actor die"

    resumed = subprocess.run(cmd + ["--output-mode", "resume"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    name, published = marker(out)
    assert name == "_SUCCESS.json" and published["rows"] == ROWS
    assert_each_id_once(out, ids)
    assert part_files(out) == sorted(f["path"] for f in published["files"])  # nothing beside the snapshot
    after = parts(out)
    for path, stamp in before.items():
        assert after[path] == stamp, f"{path} was recomputed"
