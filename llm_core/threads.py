"""CPU threads of an engine process: how many, and how idle ones wait.

torch's CPU ops run on an OpenMP pool (libgomp). By default an idle libgomp thread spins for
about 300,000 iterations before it sleeps, so that the next parallel region starts at once. On an
idle machine that is free; on a busy one (more runnable processes than cores) every spin is CPU
time taken from the thread that is still working, and a step of the native engine is hundreds of
tiny parallel regions, each ending at a barrier that waits for its slowest, often descheduled,
thread. A native run went from 35 s to 200 s at a load of 4.5 that way. With
OMP_WAIT_POLICY=PASSIVE idle threads sleep at once and give their core back, but then every one of
those regions pays a futex wake-up: on an idle machine a bf16 run took 16.4 s passive against
11.2 s spinning (benchmarks/RESULTS.md). The default policy, `bounded`, spins a short while
(GOMP_SPINCOUNT=BOUNDED_SPINS, about 0.1 ms; the gaps between a step's regions are shorter) and
then sleeps: 12.6 s idle, and on a busy node at most a tenth of a millisecond per region is
taken from other work.

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

WAIT_POLICIES = ("bounded", "passive", "active", "default")
# libgomp's spins before an idle thread sleeps under `bounded` (its own estimate: about 100,000
# a millisecond; its default is 300,000, PASSIVE 0). Measured in benchmarks/RESULTS.md.
BOUNDED_SPINS = 10_000
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def thread_env(threads: int | None = None, policy: str = "bounded") -> dict[str, str]:
    """Environment variables for a process about to start (a Ray actor's runtime_env env_vars).
    An explicit GOMP_SPINCOUNT is what libgomp obeys whatever OMP_WAIT_POLICY says."""
    if policy not in WAIT_POLICIES:
        raise ValueError(f"OpenMP wait policy {policy!r}: one of {', '.join(WAIT_POLICIES)}")
    if policy == "bounded":
        env = {"GOMP_SPINCOUNT": str(BOUNDED_SPINS)}
    else:
        env = {"OMP_WAIT_POLICY": policy.upper()} if policy != "default" else {}
    if threads:
        count = str(max(1, int(threads)))
        env.update(OMP_NUM_THREADS=count, MKL_NUM_THREADS=count)
    return env


def worker_env(threads: int | None = None) -> dict[str, str]:
    """What a worker process started from here (a Ray actor) gets: the wait variables this
    process has, when the user set any (OMP_WAIT_POLICY=PASSIVE for a node shared with other
    work), else the `bounded` default."""
    mine = {key: os.environ[key] for key in WAIT_VARIABLES if key in os.environ}
    return {**thread_env(threads, "default"), **mine} if mine else thread_env(threads)


def set_wait_policy(policy: str = "bounded") -> bool:
    """Put the wait policy in this process's environment; True when it takes effect, i.e. torch
    (and with it libgomp) is not imported yet. A policy already in the environment (either
    variable) is kept: the user's choice wins."""
    if not any(key in os.environ for key in WAIT_VARIABLES):
        os.environ.update(thread_env(policy=policy))
    return "torch" not in sys.modules


def current_policy() -> str:
    """The policy this process's environment gives libgomp (GOMP_SPINCOUNT first, as libgomp)."""
    spins = os.environ.get("GOMP_SPINCOUNT")
    if spins is not None:
        return "bounded" if spins == str(BOUNDED_SPINS) else f"spincount {spins}"
    return os.environ.get("OMP_WAIT_POLICY", "default").lower()


def configure_threads(threads: int | None) -> dict:
    """Called where the engine process starts (the actor): torch's intra-op threads to the
    process's CPU allotment, and a log line saying how threads wait (and whether too late to
    change it). Returns what it logged."""
    import torch

    if threads:
        torch.set_num_threads(max(1, int(threads)))  # one actor per CPU slot, no oversubscription
    facts = dict(threads=torch.get_num_threads(), wait_policy=current_policy(),
                 omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), gomp_spincount=os.environ.get("GOMP_SPINCOUNT"))
    if facts["wait_policy"] in ("default", "active"):
        log.warning("threads.spinning", reason="idle OpenMP threads spin (OMP_WAIT_POLICY, GOMP_SPINCOUNT unset "
                    "or active when torch loaded), which slows the engine on a busy machine", **facts)
    else:
        log.info("threads.configured", **facts)
    return facts
