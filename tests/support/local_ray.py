"""`ray_base`: a base folder of a test's own for the local Rays that the code under test starts
(cluster/ray_session.py), and `pids_under`, which counts their processes by the session folder
each carries in its environment, so a test sees exactly its own Rays and never another test's."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from cluster.ray_session import SESSION_ENV


@pytest.fixture
def ray_base(monkeypatch) -> Path:
    """A short base folder for this test's local Rays (their socket paths must stay short)."""
    base = Path(f"/tmp/lbr-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("LLMBATCH_RAY_TMP", str(base))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield base
    left = pids_under(base)
    shutil.rmtree(base, ignore_errors=True)
    assert not left, f"the test left Ray processes behind: {left}"


def pids_under(base: Path) -> list[int]:
    """This user's processes that belong to any local Ray session under `base`."""
    prefix = f"{SESSION_ENV}={base}/".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if entry.stat().st_uid == os.getuid() and any(
                    v.startswith(prefix) for v in (entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found
