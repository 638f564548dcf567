"""The engine's CPU kernels (llm_core/engine/native/csrc/): decode attention gives SDPA's outputs
over the masked cache, reading only each sequence's valid entries; the fused RMSNorm gives the
model's module's outputs; the W8A8 quantize / rescale passes give
their eager twins'; bad inputs are refused; a failed build or the switch leaves torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_core.engine.native import cpu_kernels
from llm_core.engine.native.attention import DecodeAttention, KernelDecodeAttention
from llm_core.engine.native.cpu_kernels import cpu_kernels_available
from llm_core.engine.native.fused_layers import FusedRMSNorm, fuse_layers
from llm_core.engine.native.kv_cache import KVCache
from llm_core.engine.native.w8a8_linear import quantize_rows_u8_eager
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM, RMSNorm

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="the kernel did not build here (see the log)")


def reference(q, k, v, positions):
    """SDPA in fp32 over each sequence's entries 0..positions[b] (the mask DecodeAttention uses)."""
    batch = q.shape[0]
    length = int(positions.max()) + 1
    mask = (torch.arange(length)[None, :] <= positions[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(q.float(), k[:batch, :, :length].float(), v[:batch, :, :length].float(),
                                          attn_mask=mask)


@pytest.mark.parametrize("group,head_dim", [(1, 64), (3, 64), (4, 128), (2, 40)])  # 40: the generic head size
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_kernel_matches_sdpa_and_ignores_entries_past_each_position(group, head_dim, dtype, tol):
    torch.manual_seed(0)
    slots, kv_heads, max_len = 9, 2, 70
    positions = torch.tensor([0, 5, 69, 17, 33, 2, 64])  # one at the cache's last entry, one at its first
    q = torch.randn(len(positions), kv_heads, group, head_dim).to(dtype)
    k = torch.randn(slots, kv_heads, max_len, head_dim).to(dtype)
    v = torch.randn(slots, kv_heads, max_len, head_dim).to(dtype)
    expected = reference(q, k, v, positions)
    # Entries past a sequence's position are stale (a finished sequence's, a longer prompt's):
    # poisoning them must change nothing.
    for b, p in enumerate(positions.tolist()):
        k[b, :, p + 1:] = float("nan")
        v[b, :, p + 1:] = 1e30
    out = torch.ops.llmbatch.decode_attention(q, k, v, positions, head_dim**-0.5)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


def test_kernel_refuses_bad_inputs():
    q = torch.randn(2, 2, 3, 64)
    cache = torch.randn(4, 2, 16, 64)
    op = torch.ops.llmbatch.decode_attention
    with pytest.raises(RuntimeError, match="position out of the cache"):
        op(q, cache, cache, torch.tensor([3, 16]), 0.125)
    with pytest.raises(RuntimeError, match="position out of the cache"):
        op(q, cache, cache, torch.tensor([-1, 3]), 0.125)
    with pytest.raises(RuntimeError, match="pos must be int64"):
        op(q, cache, cache, torch.tensor([3, 4], dtype=torch.int32), 0.125)
    with pytest.raises(RuntimeError, match="cache shape"):
        op(q, torch.randn(4, 3, 16, 64), torch.randn(4, 3, 16, 64), torch.tensor([3, 4]), 0.125)
    with pytest.raises(RuntimeError, match="dtype"):
        op(q.bfloat16(), cache, cache, torch.tensor([3, 4]), 0.125)
    with pytest.raises(RuntimeError, match="contiguous"):
        strided = torch.randn(4, 2, 64, 16).transpose(2, 3)
        op(q, strided, strided, torch.tensor([3, 4]), 0.125)


def test_kernel_backend_equals_the_sdpa_backend_and_writes_the_cache():
    cfg = ModelConfig.from_dict(dict(model_type="llama", vocab_size=32, hidden_size=48, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                                     max_position_embeddings=64))
    positions = [3, 9, 4, 20, 21]
    outs, caches = [], []
    for kernel in (False, True):
        cache = KVCache(cfg, num_slots=6, max_len=32, device="cpu", dtype=torch.float32)
        torch.manual_seed(1)
        cache.k.normal_()
        cache.v.normal_()
        q, k, v = torch.randn(5, 6, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
        pos = torch.tensor(positions)
        if kernel:
            backend = KernelDecodeAttention(cache, pos)
        else:
            length = max(positions) + 1
            mask = (torch.arange(length)[None, :] <= pos[:, None])[:, None, None, :]
            backend = DecodeAttention(cache, pos, mask, length)
        outs.append(backend.attend(1, q, k, v))
        caches.append(cache)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(caches[1].k, caches[0].k) and torch.equal(caches[1].v, caches[0].v)


def test_switched_off_kernels_are_not_loaded(monkeypatch):
    monkeypatch.setenv("LLMBATCH_CPU_KERNELS", "off")
    assert cpu_kernels._load() is False


def test_a_failed_build_is_a_warning_not_an_error(monkeypatch, tmp_path):
    """No compiler (or a broken one): the engine keeps SDPA."""
    monkeypatch.delenv("LLMBATCH_CPU_KERNELS", raising=False)
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCES", (broken,))
    monkeypatch.setattr(torch.ops, "llmbatch", type("NoOps", (), {})(), raising=False)
    assert cpu_kernels._load() is False


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_fused_rms_norm_matches_the_models_module(dtype, tol):
    torch.manual_seed(0)
    norm = RMSNorm(96, 1e-5)
    with torch.no_grad():
        norm.weight.normal_(1, 0.5)
    norm = norm.to(dtype)
    for rows in (1, 7, 300):  # 300: more rows than one task takes, so several threads share them
        x = (torch.randn(rows, 96) * 3).to(dtype)
        with torch.no_grad():
            torch.testing.assert_close(FusedRMSNorm(norm)(x), norm(x), rtol=tol, atol=tol)
    x3 = torch.randn(2, 5, 96).to(dtype)  # any leading shape, as the modules take
    assert FusedRMSNorm(norm)(x3).shape == (2, 5, 96)


def test_fuse_layers_swaps_every_norm_and_keeps_the_logits():
    cfg = ModelConfig.from_dict(dict(model_type="llama", vocab_size=64, hidden_size=48, intermediate_size=80,
                                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=64))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (9,))
    from llm_core.models.attention import PackedCausalAttention

    with torch.no_grad():
        before = model.compute_logits(model(ids, torch.arange(9), PackedCausalAttention([9])))
        assert fuse_layers(model) == 3 * 2 + 1  # two norms a layer, the final norm
        assert not any(type(m) is RMSNorm for m in model.modules())
        after = model.compute_logits(model(ids, torch.arange(9), PackedCausalAttention([9])))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_quantize_rows_matches_its_eager_twin_and_rescales_in_place():
    torch.manual_seed(0)
    x = torch.randn(70, 300).bfloat16()
    x[3] = 0  # an all-zero row: scale at its floor, every value at the zero point
    q, scales = torch.ops.llmbatch.quantize_rows_u8(x)
    q_ref, scales_ref = quantize_rows_u8_eager(x)
    assert q.dtype == torch.uint8 and scales.shape == (70, 1)
    torch.testing.assert_close(scales, scales_ref, rtol=1e-6, atol=0)  # -ffast-math: x / 127 as x * (1 / 127)
    # Rounding ties may break the other way (vectorized multiply vs torch's): one step at most.
    assert int((q.int() - q_ref.int()).abs().max()) <= 1 and float((q != q_ref).float().mean()) < 1e-3
    assert bool((q[3] == 128).all())
    assert int(q.min()) >= 1 and int(q.max()) <= 255  # symmetric: -127..127 around 128
    dequantized = (q.float() - 128) * scales
    assert float((dequantized - x.float()).abs().max()) <= float(scales.max()) / 2 + 1e-6
    out = torch.randn(70, 40).bfloat16()
    expected = (out.float() * scales).bfloat16()
    assert torch.ops.llmbatch.scale_rows_(out, scales) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="one a row"):
        torch.ops.llmbatch.scale_rows_(out, scales[:5])
