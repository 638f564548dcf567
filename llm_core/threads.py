"""CPU threads of an engine process: how many, and how idle ones wait.

torch's CPU ops run on an OpenMP pool (libgomp). By default an idle libgomp thread spins for
about 300,000 iterations before it sleeps, so that the next parallel region starts at once. On an
idle machine that is free; on a busy one (more runnable processes than cores) every spin is CPU
time taken from the thread that is still working, and a step of the native engine is hundreds of
tiny parallel regions, each ending at a barrier that waits for its slowest, often descheduled,
thread. A native run went from 35 s to 200 s at a load of 4.5 that way. With
OMP_WAIT_POLICY=PASSIVE idle threads sleep at once and give their core back.

libgomp reads these variables once, when it is loaded (on `import torch`), so they must be in
the environment of a process before its first `import torch`: `thread_env()` is what a Ray actor
gets in its runtime_env, `set_wait_policy()` what a script calls before importing torch.
This module imports no torch at load time for that reason.
"""

from __future__ import annotations

import os
import sys

import structlog

log = structlog.get_logger()

WAIT_POLICIES = ("passive", "active", "default")


def thread_env(threads: int | None = None, policy: str = "passive") -> dict[str, str]:
    """Environment variables for a process about to start (a Ray actor's runtime_env env_vars)."""
    if policy not in WAIT_POLICIES:
        raise ValueError(f"OpenMP wait policy {policy!r}: one of {', '.join(WAIT_POLICIES)}")
    env = {"OMP_WAIT_POLICY": policy.upper()} if policy != "default" else {}
    if threads:
        count = str(max(1, int(threads)))
        env.update(OMP_NUM_THREADS=count, MKL_NUM_THREADS=count)
    return env


def set_wait_policy(policy: str = "passive") -> bool:
    """Put the wait policy in this process's environment; True when it takes effect, i.e. torch
    (and with it libgomp) is not imported yet. A policy already in the environment is kept."""
    for key, value in thread_env(policy=policy).items():
        os.environ.setdefault(key, value)
    return "torch" not in sys.modules


def configure_threads(threads: int | None) -> dict:
    """Called where the engine process starts (the actor): torch's intra-op threads to the
    process's CPU allotment, and a log line saying how threads wait (and whether too late to
    change it). Returns what it logged."""
    import torch

    if threads:
        torch.set_num_threads(max(1, int(threads)))  # one actor per CPU slot, no oversubscription
    facts = dict(threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
                 gomp_spincount=os.environ.get("GOMP_SPINCOUNT"))
    if facts["omp_wait_policy"] == "default":
        log.warning("threads.spinning", reason="OMP_WAIT_POLICY unset when torch loaded: idle OpenMP threads "
                    "spin, which slows the engine on a busy machine", **facts)
    else:
        log.info("threads.configured", **facts)
    return facts
