"""Polling until a condition holds, for tests that watch a real service or process from outside."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 90.0, every: float = 0.2):
    """The first truthy value of `predicate()`, polled every `every` s; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")
