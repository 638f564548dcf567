"""Several jobs trying to take one output's lease at the same instant (unit and S3 tests)."""

from __future__ import annotations

import threading

from workers.output.lease import OutputBusyError, OutputLease


def race_for_lease(out, takers: int) -> tuple[list[OutputLease], list[OutputBusyError]]:
    """`takers` threads call OutputLease.acquire together (job-0, job-1, ...): (winners, refusals)."""
    barrier, winners, refused = threading.Barrier(takers), [], []

    def take(i: int) -> None:
        barrier.wait()
        try:
            winners.append(OutputLease.acquire(out, f"job-{i}", renew_every_s=3600))
        except OutputBusyError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return winners, refused
