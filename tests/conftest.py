"""Loads the shared fixtures of tests/support/ for every test; sets what every test process needs."""

from __future__ import annotations

import os

# Ray 2.60 turns token auth on for clusters started by ray.init() and writes ~/.ray/auth_token;
# clusters that tests start with `ray start` would then refuse drivers without the token.
# Tests run every cluster on loopback without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Fixtures live in these modules, never in test files: a test asks for one by name.
pytest_plugins = [
    "tests.support.session",  # ray_local, example_data, builtin_model_dir
    "tests.support.tiny_model",  # tiny_dir
    "tests.support.native_engine",  # llama, engine (tiny random HF folders for the native engine)
    "tests.support.s3_server",  # moto_server, s3_bucket
    "tests.support.two_node_cluster",  # two_node_cluster
    "tests.support.control_plane",  # ray_cluster, services, pg_url
    "tests.support.store_urls",  # db_as_written
    "tests.support.local_ray",  # ray_base
    "tests.support.infra_support",  # registry
    "tests.support.chromium",  # chromium
    "tests.support.s3_jobs",  # data_bucket (S3 job and chaos tests)
    "tests.support.run_report",  # failures printed as they happen; the session's deadline
]
