"""Decode attention over runs of neighbouring slots, each up to its own longest sequence
(llm_core/engine/native/attention.py): the same outputs as one call over the batch's longest."""

from __future__ import annotations

import torch

from llm_core.engine.native.attention import DecodeAttention, length_groups
from llm_core.engine.native.kv_cache import KVCache
from llm_core.models.config import ModelConfig

CFG = ModelConfig.from_dict(dict(model_type="llama", vocab_size=32, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64))


def test_length_groups_cut_runs_and_merge_equal_lengths():
    assert length_groups([3, 5, 9, 2, 2], 2) == [(0, 2, 6), (2, 4, 10), (4, 5, 3)]
    assert length_groups([4, 4, 4, 4], 1) == [(0, 4, 5)]  # one length: one call
    assert length_groups([7], 16) == [(0, 1, 8)]


def test_grouped_decode_attention_equals_one_call_over_the_longest():
    torch.manual_seed(0)
    positions = [3, 9, 4, 20, 21, 6, 15]
    batch, heads, kv_heads, dim = len(positions), 4, 2, 8
    outs = []
    for groups in (None, length_groups(positions, 2), length_groups(positions, 3)):
        cache = KVCache(CFG, num_slots=8, max_len=32, device="cpu", dtype=torch.float32)
        torch.manual_seed(1)
        cache.k.normal_()
        cache.v.normal_()
        pos = torch.tensor(positions)
        length = max(positions) + 1
        mask = (torch.arange(length)[None, :] <= pos[:, None])[:, None, None, :]
        q, k, v = torch.randn(batch, heads, dim), torch.randn(batch, kv_heads, dim), torch.randn(batch, kv_heads, dim)
        outs.append(DecodeAttention(cache, pos, mask, length, groups).attend(0, q, k, v))
    assert len(length_groups(positions, 2)) > 1
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-6, atol=1e-6)
