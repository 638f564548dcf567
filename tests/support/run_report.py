"""What a cut-off test run still tells: each failure printed the moment it happens (CI keeps the
tail of a run's output, and a run stopped by CI's time limit never reaches pytest's summary), and
a deadline for the whole session (LLMBATCH_TEST_DEADLINE_S, 80 minutes by default, under CI's 90)
past which pytest stops with its summary instead of being killed without one."""

from __future__ import annotations

import os
import time

import pytest

DEADLINE_S = float(os.environ.get("LLMBATCH_TEST_DEADLINE_S", 4800))
_started = time.monotonic()
_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config


def failure_line(report: pytest.TestReport) -> str:
    """One line: the test, its phase and time, and the exception pytest would show for it."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = crash.message if crash is not None else (report.longreprtext.strip().splitlines() or ["?"])[-1]
    message = " ".join(message.split())
    return f"FAILED {report.nodeid} ({report.when}, {report.duration:.0f} s): {message[:400]}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and _config is not None:
        reporter = _config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(failure_line(report))


def pytest_runtest_setup(item: pytest.Item) -> None:
    elapsed = time.monotonic() - _started
    if elapsed > DEADLINE_S:
        pytest.exit(f"the test session ran {elapsed / 60:.0f} minutes, past its deadline of {DEADLINE_S / 60:.0f} "
                    f"(LLMBATCH_TEST_DEADLINE_S); stopped before {item.nodeid}", returncode=1)
