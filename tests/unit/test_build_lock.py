"""The CPU kernels' build lock: a dead builder's locks never stall the next process, a live one's
are waited on for a bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from llm_core.engine.native import cpu_kernels
from llm_core.engine.native.build_lock import BuildLockTimeout, build_lock
from llm_core.engine.native.cpu_kernels import cpu_kernels_available

HOLD = """
import sys, time
from pathlib import Path
from llm_core.engine.native.build_lock import build_lock
with build_lock(Path(sys.argv[1]), wait_s=5):
    (Path(sys.argv[1]) / "lock").write_text("torch's lock, as a builder mid-build holds it")
    print("holding", flush=True)
    time.sleep(120)
"""


def holder(build_dir) -> subprocess.Popen:
    """A process that takes the lock, writes torch's lock file as a builder does, and sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(build_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_live_holder_is_waited_on_for_a_bounded_time(tmp_path):
    proc = holder(tmp_path / "build")
    try:
        start = time.monotonic()
        with pytest.raises(BuildLockTimeout, match="held the build lock"):
            with build_lock(tmp_path / "build", wait_s=1.0):
                pass
        assert 0.9 < time.monotonic() - start < 10
        assert (tmp_path / "build" / "lock").exists()  # a live builder's lock file is left alone
    finally:
        proc.kill()
        proc.wait()


def test_a_builder_killed_mid_build_leaves_nothing_that_blocks(tmp_path):
    proc = holder(tmp_path / "build")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "build" / "lock").exists()  # what torch's builder would wait on forever
    start = time.monotonic()
    with build_lock(tmp_path / "build", wait_s=5.0):
        assert not (tmp_path / "build" / "lock").exists()
    assert time.monotonic() - start < 2


def test_the_lock_is_released_after_use_and_on_errors(tmp_path):
    with pytest.raises(RuntimeError):
        with build_lock(tmp_path / "build", wait_s=1.0):
            raise RuntimeError("the build failed")
    with build_lock(tmp_path / "build", wait_s=0.5):
        pass


@pytest.mark.skipif(not cpu_kernels_available(), reason="the CPU kernels did not build here")
def test_the_engine_loads_its_kernels_past_a_killed_loaders_torch_lock():
    """The CI failure this lock fixes: an actor killed while torch's builder held its `lock` file
    (every process holds it while ninja checks the build) made every later actor wait forever."""
    build_dir = cpu_kernels._build_dir(cpu_kernels._build_name())
    (build_dir / "lock").write_text("")  # as a loader killed by SIGKILL leaves it
    load = "from llm_core.engine.native import cpu_kernels; print(cpu_kernels._load())"
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.stdout.strip().endswith("True"), result.stderr[-2000:]
    assert not (build_dir / "lock").exists()
