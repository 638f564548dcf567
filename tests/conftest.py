"""Shared fixtures: one local Ray per test session, a private model cache, sample data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray 2.60 turns token auth on for clusters started by ray.init() and writes ~/.ray/auth_token;
# clusters that tests start with `ray start` would then refuse drivers without the token.
# Tests run every cluster on loopback without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DATA = REPO / "examples" / "data" / "debian-summarize.parquet"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 CPUs), started once and shared by every test that asks."""
    import ray

    from cluster import ray_cluster

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray_cluster.shutdown()


@pytest.fixture(scope="session")
def example_data() -> Path:
    return EXAMPLE_DATA


@pytest.fixture(scope="session")
def builtin_model_dir() -> Path:
    """The built-in SmolLM2-135M-Instruct, fetched and converted once into the model cache."""
    from workers.model_resolver import resolve_model

    return resolve_model("builtin:smollm2-135m-instruct")
