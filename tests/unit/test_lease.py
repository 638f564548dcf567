"""The writer lease of an output location, on local paths: one live job at a time, takeovers of
expired, released, same-job and dead-process leases, exactly one winner of a race."""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.support.lease_race import race_for_lease
from workers.output.lease import LeaseLost, OutputBusyError, OutputLease, current_lease, generations
from workers.output.location import OutputLocation


@pytest.fixture
def out(tmp_path):
    return OutputLocation.at(str(tmp_path / "o"))


def test_a_second_job_is_refused_with_the_holder_named(out):
    with OutputLease.acquire(out, "job-a", ttl_s=60, renew_every_s=30) as lease:
        with pytest.raises(OutputBusyError) as err:
            OutputLease.acquire(out, "job-b")
        message = str(err.value)
        holder = f"{socket.gethostname()}:{os.getpid()}"
        assert f"output {out.uri} is being written by job job-a (holder {holder})" in message
        assert re.search(r"until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; wait for it, cancel it, or choose another "
                         r"output.uri", message)
        assert err.value.job_id == "job-a" and pickle.loads(pickle.dumps(err.value)).args == err.value.args
        lease.check()  # still ours
    # released: the next job gets it at once, and the released generation was the last one
    nxt = OutputLease.acquire(out, "job-b", renew_every_s=30)
    assert generations(out) == [nxt.generation]
    nxt.release()
    nxt.release()  # idempotent


def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_it(out):
    old = OutputLease.acquire(out, "job-a", ttl_s=0.2, renew_every_s=3600)  # never renews in time
    time.sleep(0.3)
    new = OutputLease.acquire(out, "job-b", renew_every_s=3600)
    assert new.generation == old.generation + 1
    assert generations(out) == [new.generation]  # older generations deleted after the takeover
    with pytest.raises(LeaseLost, match="to job job-b"):
        old.check()
    assert old.lost and "job-b" in old.lost
    new.check()
    old.release()  # a lost lease's release writes nothing
    assert current_lease(out)[1]["job_id"] == "job-b"
    new.release()


def test_the_holder_renews_in_the_background(out):
    lease = OutputLease.acquire(out, "job-a", ttl_s=0.6, renew_every_s=0.1)
    first = lease.generation
    time.sleep(1.0)  # longer than the ttl: only renewals keep it
    with pytest.raises(OutputBusyError, match="job-a"):
        OutputLease.acquire(out, "job-b")
    assert lease.generation > first and generations(out) == [lease.generation]
    lease.release()


def test_the_same_job_takes_its_own_lease_over(out):
    """A runner restarted for the same job id continues at once."""
    OutputLease.acquire(out, "job-a", renew_every_s=3600)  # its process "died" without releasing
    again = OutputLease.acquire(out, "job-a", renew_every_s=3600)
    assert current_lease(out) == (again.generation, again.record)
    again.release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over(out, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"job_id": "job-gone", "holder": f"{socket.gethostname()}:{dead.pid}", "acquired_at": time.time(),
              "expires_at": time.time() + 3600, "released": False}
    os.makedirs(tmp_path / "o" / "_lease")
    (tmp_path / "o" / "_lease" / "000000000007.json").write_text(json.dumps(record))
    lease = OutputLease.acquire(out, "job-b", renew_every_s=3600)
    assert lease.generation == 8 and generations(out) == [8]
    lease.release()
    # a live lease of another host is never judged by its pid
    record["holder"] = f"elsewhere.example:{dead.pid}"
    (tmp_path / "o" / "_lease" / "000000000099.json").write_text(json.dumps(record))
    with pytest.raises(OutputBusyError, match="job-gone"):
        OutputLease.acquire(out, "job-c")


def test_racing_takeovers_have_exactly_one_winner(out):
    stale = OutputLease.acquire(out, "job-old", ttl_s=0.1, renew_every_s=3600)
    time.sleep(0.2)
    winners, refused = race_for_lease(out, 8)
    assert len(winners) == 1 and len(refused) == 7
    assert all(exc.job_id == winners[0].job_id for exc in refused)
    with pytest.raises(LeaseLost):
        stale.check()
    winners[0].check()
    winners[0].release()


def test_a_later_generation_makes_check_fail(out):
    lease = OutputLease.acquire(out, "job-a", renew_every_s=3600)
    intruder = {"job_id": "job-x", "holder": "other-host:1", "expires_at": time.time() + 60, "released": False}
    with open(os.path.join(out.uri, "_lease", f"{lease.generation + 5:012d}.json"), "w") as f:
        json.dump(intruder, f)
    with pytest.raises(LeaseLost, match="job-x"):
        lease.check()
    with pytest.raises(LeaseLost):
        lease.check()  # stays lost
