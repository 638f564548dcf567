"""The engine's CPU decode-attention kernel (llm_core/engine/native/csrc/decode_attention.cpp):
the same outputs as SDPA over the masked cache, reading only each sequence's valid entries; its
bad inputs refused; and the engine's SDPA path when the kernel is switched off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_core.engine.native import cpu_decode_kernel
from llm_core.engine.native.attention import DecodeAttention, KernelDecodeAttention
from llm_core.engine.native.cpu_decode_kernel import decode_kernel_available
from llm_core.engine.native.kv_cache import KVCache
from llm_core.models.config import ModelConfig

pytestmark = pytest.mark.skipif(not decode_kernel_available(), reason="the kernel did not build here (see the log)")


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


def test_switched_off_kernel_is_not_loaded(monkeypatch):
    monkeypatch.setenv("LLMBATCH_DECODE_KERNEL", "off")
    assert cpu_decode_kernel._load() is False


def test_a_failed_build_is_a_warning_not_an_error(monkeypatch, tmp_path):
    """No compiler (or a broken one): the engine keeps SDPA."""
    monkeypatch.delenv("LLMBATCH_DECODE_KERNEL", raising=False)
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_decode_kernel, "SOURCE", broken)
    monkeypatch.setattr(torch.ops, "llmbatch", type("NoOps", (), {})(), raising=False)
    assert cpu_decode_kernel._load() is False
