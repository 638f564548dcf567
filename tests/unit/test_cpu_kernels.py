"""The engine's CPU kernels (llm_core/engine/native/csrc/): cache attention (decode and prefill)
gives SDPA's outputs, each token reading only its own sequence's valid entries, causally; the fused RMSNorm gives the
model's module's outputs; the W8A8 quantize / rescale passes give
their eager twins'; bad inputs are refused; a failed build or the switch leaves torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_core.engine.native import cpu_kernels
from llm_core.engine.native.attention import DecodeAttention, KernelAttention, PrefillAttention, packed_tokens
from llm_core.engine.native.cpu_kernels import cpu_kernels_available
from llm_core.engine.native.fused_layers import FusedRMSNorm, fuse_layers
from llm_core.engine.native.kv_cache import KVCache
from llm_core.engine.native.w8a8_linear import quantize_rows_u8_eager
from llm_core.models.config import ModelConfig
from llm_core.models.llama import MLP, Attention, LlamaForCausalLM, RMSNorm
from llm_core.models.rope import apply_rotary

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="the kernel did not build here (see the log)")


def reference(q, k_cache, v_cache, slots, positions):
    """SDPA in fp32, each token alone over its slot's entries 0..positions[i]."""
    outs = []
    for i, (s, p) in enumerate(zip(slots.tolist(), positions.tolist())):
        keys, values = k_cache[s, :, : p + 1].float(), v_cache[s, :, : p + 1].float()  # [H_kv, n, D]
        outs.append(F.scaled_dot_product_attention(q[i].float()[:, :, None], keys[:, None], values[:, None])[:, :, 0])
    return torch.stack(outs)


def poisoned_cache(slots, positions, kv_heads, max_len, head_dim, dtype, num_slots=9):
    """A random cache whose entries past each slot's last token are stale (a finished sequence's,
    a longer prompt's): NaN keys, huge values. Reading any of them shows in the output."""
    k = torch.randn(num_slots, kv_heads, max_len, head_dim).to(dtype)
    v = torch.randn(num_slots, kv_heads, max_len, head_dim).to(dtype)
    last = {}
    for s, p in zip(slots.tolist(), positions.tolist()):
        last[s] = max(last.get(s, -1), p)
    for s, p in last.items():
        k[s, :, p + 1:] = float("nan")
        v[s, :, p + 1:] = 1e30
    return k, v


def run_kernel(slots, positions, group, head_dim, dtype, kv_heads=2, max_len=150):
    q = torch.randn(len(slots), kv_heads, group, head_dim).to(dtype)
    k_new = torch.randn(len(slots), kv_heads, head_dim).to(dtype)
    v_new = torch.randn(len(slots), kv_heads, head_dim).to(dtype)
    k_cache, v_cache = poisoned_cache(slots, positions, kv_heads, max_len, head_dim, dtype)
    out = torch.ops.llmbatch.cache_attention(q, k_new, v_new, k_cache, v_cache, slots, positions, head_dim**-0.5)
    # The new keys and values were stored at (slot, position) before anyone read them.
    assert torch.equal(k_cache[slots, :, positions], k_new) and torch.equal(v_cache[slots, :, positions], v_new)
    return out, reference(q, k_cache, v_cache, slots, positions), q


@pytest.mark.parametrize("group,head_dim", [(1, 64), (3, 64), (4, 128), (2, 40)])  # 40: the generic head size
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_decode_matches_sdpa_and_ignores_entries_past_each_position(group, head_dim, dtype, tol):
    torch.manual_seed(0)
    positions = torch.tensor([0, 5, 149, 17, 33, 2, 64])  # one at the cache's last entry, one at its first
    slots = torch.tensor([6, 0, 1, 8, 2, 3, 4])  # not in order: each token reads its own slot
    out, expected, q = run_kernel(slots, positions, group, head_dim, dtype)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("group,head_dim", [(1, 64), (3, 64), (4, 128), (2, 40), (16, 64)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_prefill_is_causal_over_cached_prefix_and_new_tokens(group, head_dim, dtype, tol):
    """Packed prefill tokens: runs of one sequence (longer than one task's rows, so split), some
    after a cached prefix, one token alone; each token sees its prefix, the earlier new tokens of its
    sequence and itself, nothing later and nothing past its sequence."""
    torch.manual_seed(1)
    chunks = [(3, 0, 70), (0, 40, 9), (5, 12, 1), (7, 0, 2), (1, 100, 49)]  # (slot, start, new tokens)
    slots = torch.tensor([s for s, _, n in chunks for _ in range(n)])
    positions = torch.cat([torch.arange(st, st + n) for _, st, n in chunks])
    out, expected, _ = run_kernel(slots, positions, group, head_dim, dtype)
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


def test_kernel_refuses_bad_inputs():
    q = torch.randn(2, 2, 3, 64)
    new = torch.randn(2, 2, 64)
    cache = torch.randn(4, 2, 16, 64)
    slots = torch.tensor([0, 1])

    def op(q=q, k_cache=cache, slots=slots, pos=torch.tensor([3, 4]), new=new):
        return torch.ops.llmbatch.cache_attention(q, new, new, k_cache, k_cache.clone(), slots, pos, 0.125)

    with pytest.raises(RuntimeError, match="position out of the cache"):
        op(pos=torch.tensor([3, 16]))
    with pytest.raises(RuntimeError, match="position out of the cache"):
        op(pos=torch.tensor([-1, 3]))
    with pytest.raises(RuntimeError, match="slot out of the cache"):
        op(slots=torch.tensor([0, 4]))
    with pytest.raises(RuntimeError, match="slots and pos must be int64"):
        op(pos=torch.tensor([3, 4], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="cache shape"):
        op(k_cache=torch.randn(4, 3, 16, 64))
    with pytest.raises(RuntimeError, match="dtype"):
        op(q=q.bfloat16())
    with pytest.raises(RuntimeError, match="like q"):
        op(new=torch.randn(3, 2, 64))
    with pytest.raises(RuntimeError, match="contiguous"):
        op(k_cache=torch.randn(4, 2, 64, 16).transpose(2, 3))


CFG = dict(model_type="llama", vocab_size=32, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)


def random_cache(cfg):
    cache = KVCache(cfg, num_slots=6, max_len=32, device="cpu", dtype=torch.float32)
    torch.manual_seed(1)
    cache.k.normal_()
    cache.v.normal_()
    return cache


def test_kernel_backend_equals_the_sdpa_backends_and_writes_the_cache():
    cfg = ModelConfig.from_dict(CFG)
    # Decode: one token per slot 0..4.
    positions = [3, 9, 4, 20, 21]
    outs, caches = [], []
    for kernel in (False, True):
        cache = random_cache(cfg)
        q, k, v = torch.randn(5, 6, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
        pos = torch.tensor(positions)
        if kernel:
            backend = KernelAttention(cache, torch.arange(5), pos)
        else:
            length = max(positions) + 1
            mask = (torch.arange(length)[None, :] <= pos[:, None])[:, None, None, :]
            backend = DecodeAttention(cache, pos, mask, length)
        outs.append(backend.attend(1, q, k, v))
        caches.append(cache)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(caches[1].k, caches[0].k) and torch.equal(caches[1].v, caches[0].v)
    # Prefill: continuations of cached prefixes in slots 4, 1, 0.
    slots, starts, lens = [4, 1, 0], [5, 0, 11], [7, 3, 12]
    outs, caches = [], []
    for kernel in (False, True):
        cache = random_cache(cfg)
        q, k, v = torch.randn(22, 6, 8), torch.randn(22, 2, 8), torch.randn(22, 2, 8)
        if kernel:
            backend = KernelAttention(cache, *packed_tokens(slots, starts, lens, "cpu"))
        else:
            backend = PrefillAttention(cache, slots, starts, lens, "cpu")
        outs.append(backend.attend(0, q, k, v))
        caches.append(cache)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(caches[1].k, caches[0].k) and torch.equal(caches[1].v, caches[0].v)


def test_switched_off_kernels_are_not_loaded(monkeypatch):
    monkeypatch.setenv("LLMBATCH_CPU_KERNELS", "off")
    assert cpu_kernels._load() is False


def test_a_failed_build_is_a_warning_not_an_error(monkeypatch, tmp_path):
    """No compiler (or a broken one): the engine keeps SDPA."""
    monkeypatch.delenv("LLMBATCH_CPU_KERNELS", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # not the user's cache
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCES", (broken,))
    monkeypatch.setattr(torch.ops, "llmbatch", type("NoOps", (), {})(), raising=False)
    assert cpu_kernels._load() is False
    build_dir = cpu_kernels._build_dir(cpu_kernels._build_name())
    assert build_dir.is_relative_to(tmp_path / "extensions") and (build_dir / "build.ninja").exists()
    assert not (build_dir / "lock").exists()  # the failed build released torch's lock too


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


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
def test_silu_mul_matches_eager(dtype, tol):
    torch.manual_seed(0)
    for rows, inner in ((1, 64), (5, 37), (300, 1536)):  # 37: a partial vector; 300: several tasks
        x = (torch.randn(rows, 2 * inner) * 6).to(dtype)
        x[0, :4] = torch.tensor([0.0, -100.0, 100.0, -0.0])  # the sigmoid's ends and zero
        gate, up = x.chunk(2, dim=-1)
        torch.testing.assert_close(torch.ops.llmbatch.silu_mul(x), F.silu(gate) * up, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 40)])
def test_rotary_qkv_is_apply_rotary_bit_for_bit(dtype, heads, kv_heads, head_dim):
    torch.manual_seed(0)
    tokens = 70
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype)
    angles = torch.rand(tokens, head_dim) * 6
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    q, k, v = torch.ops.llmbatch.rotary_qkv(qkv, cos, sin, heads, kv_heads)
    qk, v_ref = qkv.split([(heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
    qk = apply_rotary(qk.reshape(tokens, heads + kv_heads, head_dim), cos, sin)
    assert torch.equal(q, qk[:, :heads]) and torch.equal(k, qk[:, heads:])
    assert torch.equal(v, v_ref.reshape(tokens, kv_heads, head_dim)) and v.is_contiguous() and k.is_contiguous()
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        torch.ops.llmbatch.rotary_qkv(qkv, cos, sin, heads + 1, kv_heads)


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
        assert fuse_layers(model) == 3 * 4 + 1  # two norms, the MLP and attention a layer; the final norm
        assert not any(type(m) in (RMSNorm, MLP, Attention) for m in model.modules())
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


@pytest.mark.parametrize("group,head_dim", [(3, 64), (4, 128), (2, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_reads_a_shared_prefix_from_its_one_copy_bit_for_bit(group, head_dim, dtype):
    """Slots that hold a cached prefix: with shared_k / shared_v the decode tokens read the prefix's
    entries from that copy (their slot's copies are then poisoned and must not matter), and the
    output is the same, bit for bit, as reading the slot's own copy. Token 2 holds no prefix."""
    torch.manual_seed(2)
    kv_heads, max_len, prefix_len = 2, 150, 37
    slots, positions = torch.tensor([4, 0, 2, 1]), torch.tensor([60, 37, 149, 100])
    q = torch.randn(4, kv_heads, group, head_dim).to(dtype)
    k_new, v_new = (torch.randn(4, kv_heads, head_dim).to(dtype) for _ in range(2))
    k_cache, v_cache = poisoned_cache(slots, positions, kv_heads, max_len, head_dim, dtype)
    shared_k, shared_v = (torch.randn(kv_heads, prefix_len, head_dim).to(dtype) for _ in range(2))
    holders = [4, 0, 1]
    k_cache[holders, :, :prefix_len] = shared_k
    v_cache[holders, :, :prefix_len] = shared_v
    op = torch.ops.llmbatch.cache_attention
    expected = op(q, k_new, v_new, k_cache.clone(), v_cache.clone(), slots, positions, head_dim**-0.5)
    k_cache[holders, :, :prefix_len] = float("nan")
    v_cache[holders, :, :prefix_len] = 1e30
    lengths = torch.tensor([prefix_len, prefix_len, 0, prefix_len])
    out = op(q, k_new, v_new, k_cache, v_cache, slots, positions, head_dim**-0.5,
             shared_k=shared_k, shared_v=shared_v, shared_len=lengths)
    assert torch.equal(out, expected)


def test_kernel_refuses_a_bad_shared_prefix():
    q, new = torch.randn(2, 2, 3, 64), torch.randn(2, 2, 64)
    cache, slots, pos = torch.randn(4, 2, 16, 64), torch.tensor([0, 1]), torch.tensor([5, 3])
    shared = torch.randn(2, 4, 64)

    def op(shared_k=shared, shared_v=shared, shared_len=torch.tensor([4, 3])):
        return torch.ops.llmbatch.cache_attention(q, new, new, cache, cache.clone(), slots, pos, 0.125,
                                                  shared_k=shared_k, shared_v=shared_v, shared_len=shared_len)

    op()
    with pytest.raises(RuntimeError, match="past the token's position"):
        op(shared_len=torch.tensor([4, 4]))  # token 1 is at position 3: its own key is never shared
    with pytest.raises(RuntimeError, match="shared_len out of the shared prefix"):
        op(shared_len=torch.tensor([5, 0]))
    with pytest.raises(RuntimeError, match="go together"):
        op(shared_v=None)
    with pytest.raises(RuntimeError, match=r"\[H_kv, P, D\] in q's dtype"):
        op(shared_k=shared.bfloat16())
    with pytest.raises(RuntimeError, match=r"\[H_kv, P, D\] in q's dtype"):
        op(shared_k=torch.randn(3, 4, 64), shared_v=torch.randn(3, 4, 64))
    with pytest.raises(RuntimeError, match="shared_len must be int64"):
        op(shared_len=torch.tensor([4, 3], dtype=torch.int32))


def test_the_build_compiles_copies_in_its_own_folder(tmp_path):
    """Two checkouts (or Ray's per-session package copies) share one build only if torch's build
    file records the same source paths: the copies in the build folder, refreshed when changed."""
    copies = cpu_kernels._source_copies(tmp_path / "src")
    assert [c.name for c in copies] == [s.name for s in cpu_kernels.SOURCES]
    for original in (*cpu_kernels.SOURCES, *cpu_kernels.HEADERS):
        assert (tmp_path / "src" / original.name).read_bytes() == original.read_bytes()
    stale = tmp_path / "src" / cpu_kernels.HEADERS[0].name
    stale.write_text("// a half-written or older copy")
    cpu_kernels._source_copies(tmp_path / "src")
    assert stale.read_bytes() == cpu_kernels.HEADERS[0].read_bytes()
    assert not list((tmp_path / "src").glob("*.partial"))
