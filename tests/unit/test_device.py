"""Device and dtype choice (llm_core.device), shared by both engines, the classifier and training."""

from __future__ import annotations

import pytest
import torch

from llm_core import device


@pytest.fixture
def gpu(monkeypatch):
    """A machine whose GPU has bf16 unless the test says otherwise (no GPU needed to test the rule)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    return monkeypatch


def test_auto_device_is_the_gpu_when_there_is_one(gpu):
    assert device.pick_device() == "cuda"
    gpu.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device("auto") == "cpu"


def test_an_explicit_device_keeps_its_index(gpu):
    assert device.pick_device("cuda:1") == "cuda:1"
    assert device.pick_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_every_gpu_spelling_gets_bf16_where_supported_else_fp16(gpu, name):
    assert device.pick_dtype(name) == torch.bfloat16
    assert device.precision_name(name) == "bf16"
    gpu.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert device.pick_dtype(name) == torch.float16
    assert device.precision_name(name) == "fp16"


def test_cpu_gets_fp32(gpu):
    assert device.pick_dtype("cpu") == torch.float32
    assert device.precision_name("cpu") == "fp32"


def test_an_explicit_dtype_wins(gpu):
    assert device.pick_dtype("cpu", "bf16") == torch.bfloat16
    assert device.pick_dtype("cuda:0", "float32") == torch.float32
    assert device.pick_dtype("cuda", torch.float16) == torch.float16
    assert device.precision_name("cuda", "fp32") == "fp32"
    with pytest.raises(KeyError):
        device.pick_dtype("cpu", "int8")


# --- KV cache sizing from free GPU memory (llm_core.engine.native.cache_plan) ---

from llm_core.engine.native.cache_plan import (  # noqa: E402
    GIB, CachePlan, KVCacheMemoryError, activation_reserve, kv_bytes_per_token, plan_cache,
)
from llm_core.models.config import ModelConfig  # noqa: E402

QWEN_05B = ModelConfig.from_dict(dict(
    model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
))


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer():
    # 24 layers x 2 (k, v) x 2 kv heads x 64 dims x 2 bytes
    assert kv_bytes_per_token(QWEN_05B, torch.bfloat16) == 12288
    assert kv_bytes_per_token(QWEN_05B, torch.float32) == 24576


def test_cpu_sizing_is_every_slot_rounded_to_256():
    assert plan_cache(300, 64, 32768, 12288) == CachePlan(64, 512)
    assert plan_cache(256, 8, 512, 12288) == CachePlan(8, 256)


def test_gpu_sizing_keeps_every_slot_when_memory_allows():
    # 80 GiB free, 2 GiB reserved: 256 slots of 1024 tokens take 3 GiB.
    plan = plan_cache(700, 256, 32768, 12288, free_bytes=80 * GIB, reserve_bytes=2 * GIB)
    assert plan == CachePlan(256, 1024)  # next power of two: growth (and graph re-capture) stays rare


def test_gpu_sizing_gives_a_long_prompt_fewer_slots_instead_of_an_oom():
    # 32k-token sequences: 256 slots would need 96 GiB; 10 GiB free holds 24 of them.
    plan = plan_cache(30000, 256, 32768, 12288, free_bytes=10 * GIB)
    assert plan == CachePlan(24, 32768)
    assert plan.num_slots * plan.max_len * 12288 <= 0.9 * 10 * GIB


def test_gpu_sizing_falls_back_to_the_exact_length_then_refuses():
    # 0.7 GiB of budget: 20000 tokens fit, the power-of-two 32768 do not.
    free = int((20000 * 12288 + 1000) / 0.9) + 1
    assert plan_cache(20000, 64, 32768, 12288, free_bytes=free) == CachePlan(1, 20000)
    with pytest.raises(KVCacheMemoryError, match="20000 tokens .* shorten the prompt"):
        plan_cache(20000, 64, 32768, 12288, free_bytes=free // 2)
    with pytest.raises(KVCacheMemoryError):  # the reserve comes off the budget first
        plan_cache(1000, 64, 32768, 12288, free_bytes=2 * GIB, reserve_bytes=2 * GIB)


def test_activation_reserve_grows_with_the_prefill_budget_and_batch():
    small = activation_reserve(QWEN_05B, torch.bfloat16, 2048, 16)
    assert activation_reserve(QWEN_05B, torch.bfloat16, 16384, 16) > small
    assert activation_reserve(QWEN_05B, torch.bfloat16, 2048, 256) - small == 240 * 151936 * 4 * 8


def test_the_cache_plan_asks_the_gpu_the_engine_runs_on(gpu):
    """cuda:1 stays cuda:1: free memory is read from that device, not the current one."""
    from llm_core.engine.native.model_runner import ModelRunner

    asked = []
    gpu.setattr(torch.cuda, "mem_get_info", lambda dev=None: asked.append(dev) or (40 * GIB, 80 * GIB))
    runner = ModelRunner(None, QWEN_05B, "cuda:1", torch.bfloat16, 64, use_cuda_graphs=True)
    assert runner.plan(1000) == CachePlan(64, 1024)
    assert asked == [torch.device("cuda:1")]


@pytest.mark.parametrize("flags,native", [("fpu avx512f avx512_bf16 avx512_vnni", True),
                                          ("fpu amx_tile amx_bf16", True), ("fpu avx2 avx512f", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert device.cpu_bf16_native(str(info)) is native


@pytest.mark.parametrize("flags,vendor,fast", [
    ("fpu avx512f avx512_bf16 amx_tile amx_bf16", "GenuineIntel", True),  # Sapphire Rapids and later
    ("fpu avx512f avx512_bf16 avx512_vnni", "AuthenticAMD", True),  # Zen 4: 2.2x fp32 measured
    ("fpu avx512f avx512_bf16 avx512_vnni", "GenuineIntel", False),  # no AMX: 0.75x fp32 measured
    ("fpu avx2 avx512f", "AuthenticAMD", False),
    ("fpu avx512f avx512_bf16", None, False),  # no vendor line: only AMX is taken as fast
])
def test_fast_bf16_needs_amx_or_an_amd_cpu(tmp_path, flags, vendor, fast):
    info = tmp_path / "cpuinfo"
    vendor_line = f"vendor_id\t: {vendor}\n" if vendor else ""
    info.write_text(f"processor\t: 0\n{vendor_line}model name\t: test\nflags\t\t: {flags}\n")
    assert device.cpu_vendor(str(info)) == vendor
    assert device.cpu_bf16_fast(str(info)) is fast


def test_cpu_auto_stays_fp32_even_with_fast_bf16(monkeypatch):
    """Until measured on an idle machine: fp32 keeps greedy outputs token-exact with transformers."""
    monkeypatch.setattr(device, "cpu_bf16_fast", lambda: True)
    assert device.pick_dtype("cpu") == torch.float32
    monkeypatch.setattr(device, "CPU_AUTO_BF16", True)
    assert device.pick_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(device, "cpu_bf16_fast", lambda: False)
    assert device.pick_dtype("cpu") == torch.float32  # never slow bf16 by default


def test_bf16_on_intel_without_amx_is_honoured_with_a_warning(monkeypatch):
    from structlog.testing import capture_logs

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(device, "cpu_bf16_fast", lambda: False)
    with capture_logs() as logs:
        assert device.pick_dtype("cpu", "bfloat16") == torch.bfloat16
        assert device.pick_dtype("cpu", "float32") == torch.float32
    assert [e["event"] for e in logs] == ["device.cpu_bf16_slow"]


def test_bf16_on_a_cpu_without_it_is_honoured_with_a_warning(monkeypatch):
    from structlog.testing import capture_logs

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    with capture_logs() as logs:
        assert device.pick_dtype("cpu", "bfloat16") == torch.bfloat16
    assert [e["event"] for e in logs] == ["device.cpu_dtype_emulated"]
