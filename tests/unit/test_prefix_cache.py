"""Prefix caching (llm_core.engine.native.prefix_cache): a cached prefix's K/V copied into a
slot plus a prefill of the rest equals a full prefill; which prefixes get computed, matched,
kept and evicted; the batcher's token budget counts only the tokens a prefill computes."""

from __future__ import annotations

import pytest
import torch

from llm_core.engine.native.batcher import ContinuousBatcher
from llm_core.engine.native.model_runner import ModelRunner, shared_prefix
from llm_core.engine.native.prefix_cache import CachedPrefix, PrefixCache, shared_prefix_length
from llm_core.engine.native.sequence import Sequence
from llm_core.engine.sampling import SamplingParams
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM

VOCAB = 128


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    cfg = ModelConfig.from_dict(dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
    ))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    runner = ModelRunner(model, cfg, "cpu", torch.float32, max_num_seqs=4, use_cuda_graphs=False)
    runner.ensure_cache(128)
    return runner


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class CountingCompute:
    """The runner's real prefix computation, counting its calls."""

    def __init__(self, runner: ModelRunner):
        self.runner, self.calls = runner, []

    def __call__(self, prefix: list[int]):
        self.calls.append(len(prefix))
        return self.runner.prefix_kv(prefix)


def test_shared_prefix_length_leaves_a_token_of_every_prompt_to_prefill():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts (n > 1)
    assert shared_prefix_length([[1, 2], [1, 2, 3, 4]]) == 1
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([]) == 0


@torch.inference_mode()
def test_cached_prefix_plus_suffix_prefill_equals_a_full_prefill(runner):
    prefix = tokens(20, seed=1)
    prompts = [prefix + tokens(5, seed=2), prefix + tokens(11, seed=3), tokens(9, seed=4)]
    full = runner.extend([(slot, 0, p) for slot, p in enumerate(prompts)])
    full_k = runner.cache.k[:, :3].clone()
    cache = PrefixCache(min_tokens=8)
    cache.prepare(prompts[:2], runner.prefix_kv)
    found = [cache.match(p) for p in prompts]
    assert [None if f is None else len(f) for f in found] == [20, 20, None]
    runner.cache.k.zero_()
    runner.cache.v.zero_()
    split = runner.prefill([(slot, p, f) for slot, (p, f) in enumerate(zip(prompts, found))])
    for a, b in zip(full, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for slot, p in enumerate(prompts):  # every prompt position of every slot holds the same K
        torch.testing.assert_close(runner.cache.k[:, slot, :, : len(p)], full_k[:, slot, :, : len(p)],
                                   rtol=1e-5, atol=1e-5)


def test_a_prefix_is_computed_once_and_only_when_shared_and_long_enough(runner):
    compute = CountingCompute(runner)
    cache = PrefixCache(min_tokens=8)
    prefix = tokens(12, seed=5)
    cache.prepare([prefix + [1, 2]], compute)  # one sequence: nothing to share
    cache.prepare([prefix[:5] + [1], prefix[:5] + [2]], compute)  # shared, but under min_tokens
    assert compute.calls == []
    batch = [prefix + tokens(4, seed=6), prefix + tokens(7, seed=7)]
    cache.prepare(batch, compute)
    cache.prepare(batch, compute)  # the next shard of the same job: already cached
    cache.prepare([prefix + [3, 4, 5], prefix + [3, 4, 6]], compute)  # 2 more shared tokens: not worth it
    assert compute.calls == [12]
    longer = prefix + tokens(10, seed=8)
    cache.prepare([longer + [1], longer + [2]], compute)  # 10 more shared tokens: a new entry
    assert compute.calls == [12, 22]
    assert len(cache.match(longer + [9])) == 22  # the longest entry wins
    assert len(cache.match(prefix + [9])) == 12
    assert cache.match(prefix) is None  # a prompt equal to an entry still prefills its last token
    assert cache.match(tokens(30, seed=9)) is None


def test_least_recently_used_entries_leave_past_the_entry_and_byte_limits(runner):
    prefixes = [tokens(10, seed=20 + i) for i in range(4)]
    cache = PrefixCache(min_tokens=8, max_entries=3)
    for p in prefixes[:3]:
        cache.prepare([p + [1], p + [2]], runner.prefix_kv)
    assert cache.match(prefixes[0] + [5]) is not None  # now the most recently used
    cache.prepare([prefixes[3] + [1], prefixes[3] + [2]], runner.prefix_kv)
    assert [len(cache.entries), cache.match(prefixes[1] + [5])] == [3, None]
    assert cache.match(prefixes[0] + [5]) is not None
    one_entry = next(iter(cache.entries.values())).nbytes
    small = PrefixCache(min_tokens=8, max_bytes=one_entry)
    for p in prefixes[:2]:
        small.prepare([p + [1], p + [2]], runner.prefix_kv)
    assert list(small.entries) == [tuple(prefixes[1])]
    tiny = PrefixCache(min_tokens=8, max_bytes=1)  # the newest entry stays even alone over budget
    tiny.prepare([prefixes[0] + [1], prefixes[0] + [2]], runner.prefix_kv)
    assert len(tiny.entries) == 1


def test_the_token_budget_counts_only_tokens_a_prefill_computes(runner):
    cache = PrefixCache(min_tokens=8)
    prefix = tokens(30, seed=30)
    prompts = [prefix + tokens(4, seed=31 + i) for i in range(4)]
    cache.prepare(prompts, runner.prefix_kv)
    seqs = [Sequence(p, SamplingParams(), i, 0, "cpu") for i, p in enumerate(prompts)]
    for seq in seqs:
        seq.prefix = cache.match(seq.prompt)
    batcher = ContinuousBatcher(max_num_seqs=4, max_batch_tokens=16)
    for seq in seqs:
        batcher.add(seq)
    kind, batch = batcher.next_step()
    assert kind == "prefill" and len(batch) == 4  # 4 x 4 computed tokens, not 4 x 34
    assert [s.prefill_tokens for s in batch] == [4] * 4


def test_decode_reads_the_prefix_most_of_its_slots_hold():
    """model_runner.shared_prefix: one prefix per decode call (KernelAttention reads it from its copy)."""

    def entry(n, dtype=torch.float32):
        return CachedPrefix(tuple(range(n)), torch.zeros(2, 1, n, 4, dtype=dtype), torch.zeros(2, 1, n, 4, dtype=dtype))

    a, b = entry(20), entry(30)
    chosen, lengths = shared_prefix([b, a, None, a], torch.float32)
    assert chosen is a and lengths.tolist() == [0, 20, 0, 20] and lengths.dtype == torch.long
    assert shared_prefix([None, None], torch.float32) is None and shared_prefix(None, torch.float32) is None
    assert shared_prefix([a, a], torch.bfloat16) is None  # another dtype than the cache's: slots' copies
