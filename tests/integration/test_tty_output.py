"""`llmbatch run` as a user sees it on a terminal: log lines above the live bar in the readable
format, no JSON, no Ray banner or warning, the actors' lines in a log file named at the end
(shown with LLMBATCH_VERBOSE=1, `llmbatch -v`); JSON lines when stderr is not a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.paths import REPO

pytestmark = pytest.mark.integration

COLUMNS, ROWS = 160, 60
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
RAY_NOISE = ("repeated", "across cluster", "Token authentication", "(InferenceActor", "pid=", "RAY_DEDUP")


@pytest.fixture(scope="module")
def job(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tty")
    rows = 40
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)],
                             "text": [f"Debian package {i} ships tools for the shell." for i in range(rows)]}),
                   root / "in.parquet")
    spec = {"version": 1, "name": "tty", "task": "summarize", "model": str(tiny_dir),
            "input": {"uri": str(root / "in.parquet"), "rows_per_shard": 10},
            "output": {"uri": str(root / "out"), "mode": "overwrite"}, "params": {"max_new_tokens": 24},
            "resources": {"workers": 1, "batch_size": 4}}
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    return root


def _env(root, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "LLMBATCH_LOG_FORMAT", "LLMBATCH_VERBOSE", "RAY_ADDRESS")}
    return {**env, "LLMBATCH_LOG_DIR": str(root / "logs"), "TERM": "xterm-256color",
            "PYTHONPATH": str(REPO), **extra}


def _run_on_a_terminal(root, **env) -> str:
    """Run `llmbatch run` with stdout and stderr on a pseudo-terminal; its raw output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli.main", "run", str(root / "job.yaml")], cwd=REPO,
                            env=_env(root, **env), stdin=follower, stdout=follower, stderr=follower,
                            start_new_session=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed: the program ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return b"".join(chunks).decode("utf-8", errors="replace")


def screen(raw: str) -> list[str]:
    """The lines a terminal shows for `raw` (the few controls rich's live display uses)."""
    lines, row, col = [""], 0, 0
    pos = 0
    while pos < len(raw):
        match = CSI.match(raw, pos)
        if match:
            args, op = match.groups()
            n = int(args) if args.isdigit() else 1
            if op == "A":
                row = max(row - n, 0)
            elif op == "K":
                lines[row] = lines[row][:col] if args in ("", "0") else ""
            pos = match.end()
            continue
        ch = raw[pos]
        pos += 1
        if ch == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif ch == "\r":
            col = 0
        elif ch >= " " or ch == "\t":
            line = lines[row].ljust(col)
            lines[row] = line[:col] + ch + line[col + 1:]
            col += 1
    return [line.rstrip() for line in lines if line.strip()]


def test_a_terminal_shows_readable_lines_above_a_clean_bar(job):
    shown = screen(_run_on_a_terminal(job))
    text = "\n".join(shown)
    assert not [line for line in shown if line.lstrip().startswith("{")], text  # no JSON lines
    assert not [noise for noise in RAY_NOISE if noise in text], text  # no Ray banner, no actor lines
    bars = [line for line in shown if line.startswith("tty ") and "rows" in line]
    assert len(bars) == 1 and "40/40 rows" in bars[0] and "0 error rows" in bars[0], text
    assert re.search(r"tok/s", bars[0]) and "[info" not in bars[0], text  # nothing printed into it
    events = [line for line in shown if re.match(r"\d\d:\d\d:\d\d \[(info|warning)", line)]
    assert any("job.planned" in line for line in events), text
    assert shown.index(bars[0]) > max(shown.index(line) for line in events if "job.succeeded" in line)
    log_file = next(iter((job / "logs").glob("tty-*.actors.log")))
    assert str(log_file) in text  # named at the end
    actor_lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert sum(e["event"] == "shard.committed" for e in actor_lines) == 4


def test_verbose_shows_the_actor_lines_readable(job):
    shown = screen(_run_on_a_terminal(job, LLMBATCH_VERBOSE="1"))
    text = "\n".join(shown)
    assert re.search(r"\d\d:\d\d:\d\d \[info\s*\] shard.committed .*pid=\d+", text), text
    assert not [line for line in shown if line.lstrip().startswith("{")] and "Token authentication" not in text


def test_without_a_terminal_stderr_is_json_lines(job):
    done = subprocess.run([sys.executable, "-m", "jobs.cli.main", "run", str(job / "job.yaml"), "--no-progress"],
                          cwd=REPO, env=_env(job), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    events = [json.loads(line[line.index("{"):]) for line in lines]  # Ray's "(Actor pid=..)" prefix aside
    assert {"job.planned", "shard.committed", "job.succeeded"} <= {e["event"] for e in events}
    assert not [line for line in lines if "repeated" in line]
