"""Session-wide fixtures: one local Ray, the example dataset and the built-in model, each made once
and shared by every test that asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from cluster import ray_cluster
from tests.support.paths import EXAMPLE_DATA
from workers.model_resolver import resolve_model


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (4 CPUs), started once and shared by every test that asks."""
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
    return resolve_model("builtin:smollm2-135m-instruct")
