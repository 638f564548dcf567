"""How an engine process's OpenMP threads wait (llm_core/threads.py): the variables reach libgomp
when set before torch loads, and idle threads then sleep (at once, or after a short spin)
instead of spinning on a core."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_core import threads
from tests.support.paths import REPO

# A process that sets the policy, runs one parallel op on 2 threads, then sleeps 0.5 s: the CPU
# time it burns while asleep is what its idle OpenMP thread spent spinning.
SPIN_PROBE = """
import sys, time
from llm_core.threads import set_wait_policy
took = set_wait_policy(sys.argv[1])
import torch
torch.set_num_threads(2)
x = torch.randn(4_000_000)
for _ in range(5):
    x.exp()
before = time.process_time()
time.sleep(0.5)
print(took, time.process_time() - before)
"""


def spin_seconds(policy: str) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", SPIN_PROBE, policy], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return out[0] == "True", float(out[1])


def test_thread_env():
    assert threads.thread_env() == {"GOMP_SPINCOUNT": str(threads.BOUNDED_SPINS)}
    assert threads.thread_env(3, "passive") == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "3",
                                                "MKL_NUM_THREADS": "3"}
    assert threads.thread_env(policy="default") == {}
    with pytest.raises(ValueError, match="OpenMP wait policy 'lazy': one of bounded, passive, active, default"):
        threads.thread_env(policy="lazy")


def test_bounded_and_passive_threads_sleep_and_active_ones_spin():
    took, bounded = spin_seconds("bounded")  # spins about 0.1 ms, then sleeps like passive
    assert took and bounded < 0.05
    took, passive = spin_seconds("passive")
    assert took and passive < 0.05
    took, active = spin_seconds("active")  # the contrast: the variables do reach libgomp
    assert took and active > 0.15


def test_set_too_late_says_so(monkeypatch):
    import torch  # noqa: F401  (loaded: libgomp has read its environment)

    for key in threads.WAIT_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    assert threads.set_wait_policy() is False
    assert os.environ["GOMP_SPINCOUNT"] == str(threads.BOUNDED_SPINS)


def test_a_policy_the_user_set_is_kept(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    threads.set_wait_policy()
    assert "GOMP_SPINCOUNT" not in os.environ  # it would override the user's PASSIVE
    assert threads.current_policy() == "passive"
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")
    assert threads.current_policy() == "spincount 500"  # libgomp obeys the count, whatever the policy


def test_configure_threads_sets_torch_threads_and_reports_the_policy(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    try:
        facts = threads.configure_threads(1)
        assert torch.get_num_threads() == 1
        assert facts["threads"] == 1 and facts["wait_policy"] == "passive"
        monkeypatch.delenv("OMP_WAIT_POLICY")
        assert threads.configure_threads(None)["wait_policy"] == "default"
        monkeypatch.setenv("GOMP_SPINCOUNT", str(threads.BOUNDED_SPINS))
        assert threads.configure_threads(None)["wait_policy"] == "bounded"
    finally:
        torch.set_num_threads(before)


def test_the_inference_actor_starts_with_bounded_spinning_threads(monkeypatch):
    """The actor class carries the policy in its runtime_env (Ray merges it with the job's)."""
    pytest.importorskip("ray")
    from workers.inference.ray_actor import make_actor_class

    for key in threads.WAIT_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    options = make_actor_class()._default_options
    assert options["runtime_env"]["env_vars"] == {"GOMP_SPINCOUNT": str(threads.BOUNDED_SPINS)}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the user's choice (a shared node) reaches the actor
    options = make_actor_class()._default_options
    assert options["runtime_env"]["env_vars"] == {"OMP_WAIT_POLICY": "PASSIVE"}
