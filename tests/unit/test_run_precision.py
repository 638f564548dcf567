"""`params.dtype: auto` decided once on the driver (jobs.run.precision): bf16 where every node
has it in hardware, recorded in the fingerprint, and kept by resume / retry_errors."""

from __future__ import annotations

import pytest

from cluster import ray_code
from jobs.manifest import parse_manifest
from jobs.run import precision
from llm_core.device import cpu_bf16_fast, cpu_bf16_native
from workers.output.layout import SUCCESS_FILE
from workers.output.location import OutputLocation


def manifest(tmp_path, mode="error_if_exists", **extra):
    data = {"name": "p", "task": "summarize", "model": "builtin", "input": {"uri": str(tmp_path / "in.parquet")},
            "output": {"uri": str(tmp_path / "out"), "mode": mode}}
    for key, value in extra.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return parse_manifest(data)


@pytest.fixture
def bf16_here(monkeypatch):
    """What this machine's CPU says, set by each test (the real one is probed in its own test)."""
    def set_native(value: bool):
        monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return set_native


def test_auto_on_cpu_actors_is_decided_here_and_an_explicit_choice_is_kept(tmp_path):
    assert precision.decided_on_driver(manifest(tmp_path))
    assert not precision.decided_on_driver(manifest(tmp_path, params={"dtype": "float32"}))
    assert not precision.decided_on_driver(manifest(tmp_path, resources={"gpus_per_worker": 1}))
    assert not precision.decided_on_driver(manifest(tmp_path, engine="vllm"))


@pytest.mark.parametrize(("native", "chosen"), [(True, "bfloat16"), (False, "float32")])
def test_a_local_cluster_runs_bf16_only_where_this_cpu_has_it(tmp_path, bf16_here, native, chosen):
    bf16_here(native)
    m = manifest(tmp_path)
    dtype = precision.run_dtype(m, OutputLocation.at(m.output.uri), None)
    assert dtype == chosen
    # fp32 is what `auto` meant before: not recorded, so older runs keep their fingerprints
    assert precision.fingerprint_entry(m, dtype) == ({"dtype": "bfloat16"} if native else {})


@pytest.mark.parametrize(("quantization", "chosen"), [("none", "float32"), ("int8", "float32"), ("w8a8", "bfloat16")])
def test_intel_avx512_bf16_without_amx_runs_fp32_but_w8a8_in_bf16(tmp_path, monkeypatch, quantization, chosen):
    """bf16 in hardware, not faster than fp32: only w8a8 (int8 matmuls either way) takes bf16."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: False)
    m = manifest(tmp_path, params={"quantization": quantization})
    assert precision.run_dtype(m, OutputLocation.at(m.output.uri), None) == chosen
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)  # no bf16 in hardware: fp32 for all
    assert precision.run_dtype(m, OutputLocation.at(m.output.uri), None) == "float32"


def test_an_explicit_dtype_is_passed_on_and_not_recorded(tmp_path, bf16_here):
    bf16_here(True)
    m = manifest(tmp_path, params={"dtype": "float32"})
    assert precision.run_dtype(m, OutputLocation.at(m.output.uri), None) == "float32"
    assert precision.fingerprint_entry(m, "float32") == {}


def recorded_run(out: OutputLocation, dtype_key: str | None, name: str = "manifest", params_dtype: str = "auto"):
    fingerprint = {"params": {"dtype": params_dtype}, **({"dtype": dtype_key} if dtype_key else {})}
    if name == "manifest":
        out.write_manifest({"run_id": "r", "fingerprint": fingerprint})
    else:
        out.write_json(SUCCESS_FILE, {"fingerprint": fingerprint, "files": []})


def test_resume_keeps_the_precision_its_run_recorded_on_another_machine(tmp_path, bf16_here):
    bf16_here(False)  # this machine would pick fp32 ...
    m = manifest(tmp_path, mode="resume")
    out = OutputLocation.at(m.output.uri)
    recorded_run(out, "bfloat16")  # ... but the run it continues ran bf16
    assert precision.run_dtype(m, out, None) == "bfloat16"


def test_resume_of_a_run_from_before_the_choice_keeps_fp32(tmp_path, bf16_here):
    bf16_here(True)
    m = manifest(tmp_path, mode="resume")
    out = OutputLocation.at(m.output.uri)
    recorded_run(out, None)  # `auto` without the key: fp32 on CPUs
    assert precision.run_dtype(m, out, None) == "float32"


def test_retry_errors_reads_the_published_run_and_overwrite_decides_anew(tmp_path, bf16_here):
    bf16_here(False)
    out = OutputLocation.at(str(tmp_path / "out"))
    recorded_run(out, "bfloat16", name="success")
    assert precision.run_dtype(manifest(tmp_path, mode="retry_errors"), out, None) == "bfloat16"
    assert precision.run_dtype(manifest(tmp_path, mode="overwrite"), out, None) == "float32"


def test_a_recorded_explicit_dtype_or_a_strange_value_is_not_adopted(tmp_path, bf16_here):
    bf16_here(False)
    m = manifest(tmp_path, mode="resume")
    out = OutputLocation.at(m.output.uri)
    recorded_run(out, None, params_dtype="bfloat16")  # that run named its dtype; this one says auto
    assert precision.run_dtype(m, out, None) == "float32"  # a different run: _resume refuses it
    recorded_run(out, "float8; rm -rf /")
    assert precision.run_dtype(m, out, None) == "float32"


def test_a_joined_cluster_runs_bf16_only_when_every_node_has_it(tmp_path, monkeypatch):
    # Ray is not started here: the joined cluster's nodes are what verify_workers found (stand-ins)
    monkeypatch.setattr(precision.ray_cluster, "connect", lambda address: {})
    found = {"a": {"cpu_bf16_fast": True}, "b": {"cpu_bf16_fast": False}}
    monkeypatch.setattr(precision.ray_code, "checked_nodes", lambda: found)
    m = manifest(tmp_path)
    assert precision.cluster_cpu_bf16("ray://head:10001") == (False, 2)
    found["b"]["cpu_bf16_fast"] = True
    assert precision.run_dtype(m, OutputLocation.at(m.output.uri), "ray://head:10001") == "bfloat16"
    found["b"]["cpu_bf16_fast"] = None  # a node that could not tell
    assert precision.cluster_cpu_bf16("ray://head:10001") == (False, 2)
    found["a"]["cpu_bf16_native"] = found["b"]["cpu_bf16_native"] = True  # w8a8 asks for bf16 in hardware
    w8a8 = manifest(tmp_path, params={"quantization": "w8a8"})
    assert precision.run_dtype(w8a8, OutputLocation.at(w8a8.output.uri), "ray://head:10001") == "bfloat16"


def test_the_nodes_code_check_reports_this_cpus_bf16():
    """cluster/ray_code.py's probe cannot import llmbatch, so it repeats bf16_fast: same answer here."""
    assert ray_code.driver_facts()["cpu_bf16_fast"] is cpu_bf16_fast()
    assert ray_code.driver_facts()["cpu_bf16_native"] is cpu_bf16_native()
