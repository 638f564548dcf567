"""The names inside an output location, spelled once (the layout is described in location.py).

Garbage collection deletes only objects whose relative path matches `PART_PATH_RE` or
`ERRORS_PATH_RE` exactly, so every name llmbatch writes under `data/` and `_errors/` is built
here, and run and snapshot ids have one fixed shape (`20261130T153000Z-1a2b3c4d`: UTC time of
creation, then random hex) that no user file is likely to share.
"""

from __future__ import annotations

import re
import secrets
import time

MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS.json"
PARTIAL_FILE = "_PARTIAL.json"
METRICS_FILE = "_metrics.json"
LEASE_DIR = "_lease"
DATA_DIR = "data"
ERRORS_DIR = "_errors"
SNAPSHOT_FORMAT = "llmbatch.snapshot/1"
MARKER_FILES = (SUCCESS_FILE, PARTIAL_FILE)

_STAMPED_ID = r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}"
_SHARD_ID = r"[0-9a-f]{1,64}"
RUN_ID_RE = re.compile(rf"^{_STAMPED_ID}$")
SHARD_ID_RE = re.compile(rf"^{_SHARD_ID}$")
PART_NAME_RE = re.compile(rf"^part-({_SHARD_ID})\.parquet$")
PART_PATH_RE = re.compile(rf"^{DATA_DIR}/({_STAMPED_ID})/part-({_SHARD_ID})\.parquet$")
ERRORS_PATH_RE = re.compile(rf"^{ERRORS_DIR}/({_STAMPED_ID})\.parquet$")


def _stamped_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def new_run_id() -> str:
    """The id of a new run: its parts go to `data/<run_id>/`."""
    return _stamped_id()


def new_snapshot_id() -> str:
    """The id of one published snapshot: its error rows go to `_errors/<snapshot_id>.parquet`."""
    return _stamped_id()


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id or ""):
        raise ValueError(f"run_id {run_id!r} is not one llmbatch made (expected e.g. 20261130T153000Z-1a2b3c4d)")
    return run_id


def check_shard_id(shard_id: str) -> str:
    if not SHARD_ID_RE.match(shard_id or ""):
        raise ValueError(f"shard_id {shard_id!r} is not a shard id (lowercase hex)")
    return shard_id


def run_dir(run_id: str) -> str:
    return f"{DATA_DIR}/{check_run_id(run_id)}"


def part_path(run_id: str, shard_id: str) -> str:
    """`data/<run_id>/part-<shard_id>.parquet`, relative to the output location."""
    return f"{run_dir(run_id)}/part-{check_shard_id(shard_id)}.parquet"


def errors_path(snapshot_id: str) -> str:
    """`_errors/<snapshot_id>.parquet`, relative to the output location."""
    if not RUN_ID_RE.match(snapshot_id or ""):
        raise ValueError(f"snapshot_id {snapshot_id!r} is not one llmbatch made")
    return f"{ERRORS_DIR}/{snapshot_id}.parquet"


def parse_part_path(path: str) -> tuple[str, str]:
    """(run_id, shard_id) of a part path; ValueError for any other path (a marker naming a file
    outside our layout, `..` included, is refused rather than read)."""
    m = PART_PATH_RE.match(path or "")
    if not m:
        raise ValueError(f"{path!r} is not an output part path (data/<run_id>/part-<shard_id>.parquet)")
    return m.group(1), m.group(2)


def is_ours(path: str) -> bool:
    """True for a relative path llmbatch writes under `data/` or `_errors/` (what GC may delete)."""
    return bool(PART_PATH_RE.match(path) or ERRORS_PATH_RE.match(path))
