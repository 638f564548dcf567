"""tests/support/run_report.py: a failure is printed when it happens, and the session stops with
pytest's summary past its deadline."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.support.paths import REPO

TESTS = '''
def test_fails():
    assert 1 == 2, "one is not two"

def test_passes():
    pass
'''


def run(tmp_path, **env):
    (tmp_path / "test_sample.py").write_text(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.support.run_report", "-p", "no:cacheprovider",
                           str(tmp_path / "test_sample.py")], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_a_failure_is_printed_before_the_next_test_runs(tmp_path):
    out = run(tmp_path).stdout
    # The test's id is relative to pytest's rootdir, which depends on where the checkout lies.
    assert re.search(r"^FAILED \S*test_sample\.py::test_fails \(call, \d+ s\): AssertionError: one is not two",
                     out, re.MULTILINE), out
    # Printed as the failure happened: before the passing test's dot and pytest's own summary.
    assert out.index("AssertionError: one is not two") < out.index("short test summary")


def test_past_the_deadline_the_session_stops_with_a_reason(tmp_path):
    result = run(tmp_path, LLMBATCH_TEST_DEADLINE_S="0")
    assert result.returncode != 0
    assert "past its deadline" in result.stdout + result.stderr and "stopped before" in result.stdout + result.stderr
