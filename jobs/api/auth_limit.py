"""Failed authentication, limited per client address: guessing tokens costs a minute per 20 tries.

In memory, per service process (each replica limits on its own; behind a proxy, set uvicorn's
FORWARDED_ALLOW_IPS to the proxy's address so the client address is the caller's, taken from
X-Forwarded-For, not the proxy's). Once an address
is over the limit it gets 429 with Retry-After before its token is even looked at, so a valid
token from that address waits too; other addresses are not affected.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

DEFAULT_FAILURES_PER_MINUTE = 20
WINDOW_S = 60.0
MAX_ADDRESSES = 10_000  # the oldest address is forgotten first: memory stays bounded under a flood


class FailureLimiter:
    def __init__(self, max_failures: int = DEFAULT_FAILURES_PER_MINUTE, window_s: float = WINDOW_S,
                 clock=time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it may try now."""
        now = self.clock()
        with self._lock:
            seen = self._failures.get(address)
            if seen is None:
                return None
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            if len(seen) < self.max_failures:
                return None
            return max(1, math.ceil(seen[0] + self.window_s - now))

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            seen = self._failures.setdefault(address, deque(maxlen=self.max_failures))
            self._failures.move_to_end(address)
            seen.append(now)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)
