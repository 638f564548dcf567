"""The native engine's caches on tiny random HF folders: CUDA-graph buffers and buckets (run
eagerly on this CPU), KV-cache admission by the slots memory allows, and prefix caching; each
keeps the tokens of the plain engine (and of transformers' generate)."""

from __future__ import annotations

import pytest
import torch

from llm_core.engine.native import NativeEngine
from llm_core.engine.native import model_runner
from llm_core.engine.native.cuda_graphs import DecodeGraphs
from llm_core.engine.sampling import SamplingParams
from tests.support.native_engine import VOCAB, hf_greedy, ids, prompts


class EagerDecodeGraphs(DecodeGraphs):
    """DecodeGraphs whose 'graphs' run their step eagerly on replay. CUDA graphs cannot run on
    this CPU-only machine; what this keeps real is everything around them: the static input
    buffers, padding a batch up to its bucket with rows in free slots, the masked attention span
    of the length bucket, the one logits buffer all buckets share, lazy capture."""

    def _capture(self, key: tuple[int, int]) -> None:
        outer = self

        class Replay:
            def replay(self) -> None:
                outer._step(*key)

        self.graphs[key] = Replay()


@pytest.mark.parametrize("settings", [dict(), dict(repetition_penalty=1.3)])
def test_decode_graph_buffers_and_buckets_give_the_eager_tokens(llama, monkeypatch, settings):
    batch = prompts(7, seed=4)  # 7 running sequences: the bucket of 8 gets one padding row
    params = SamplingParams(max_new_tokens=18, **settings)
    eager = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=8)
    free_run = [t for c in eager.generate(batch, params) for t in c[0].token_ids]
    eos = int(torch.bincount(torch.tensor(free_run)).argmax())  # ends sequences at different steps
    eager.eos_token_ids = (eos,)
    want = ids(eager.generate(batch, params))
    monkeypatch.setattr(model_runner, "DecodeGraphs", EagerDecodeGraphs)
    graphed = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=8)
    graphed.runner.use_cuda_graphs = True
    graphed.eos_token_ids = (eos,)
    sizes = []
    decode = graphed.runner.decode
    graphed.runner.decode = lambda tokens, *rest: sizes.append(len(tokens)) or decode(tokens, *rest)
    assert ids(graphed.generate(batch, params)) == want
    graphs = graphed.runner.graphs
    assert isinstance(graphs, EagerDecodeGraphs)
    assert graphs.buckets == [1, 2, 4, 8]
    assert len(set(sizes) - {1, 2, 4, 8}) >= 2  # several batches were padded up to a bucket
    assert {size for size, _ in graphs.graphs} == {next(b for b in (1, 2, 4, 8) if b >= s) for s in sizes}
    assert graphs.logits.shape == (8, VOCAB)  # one output buffer, the largest bucket's


def test_decode_graphs_are_kept_across_calls_and_scoring(llama, monkeypatch):
    monkeypatch.setattr(model_runner, "DecodeGraphs", EagerDecodeGraphs)
    engine = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=4)
    engine.runner.use_cuda_graphs = True
    params = SamplingParams(max_new_tokens=6)
    first = ids(engine.generate(prompts(3, seed=20), params))
    graphs = engine.runner.graphs
    captured = dict(graphs.graphs)
    engine.score(prompts(2, seed=21), [[5], [6, 7]])
    assert ids(engine.generate(prompts(3, seed=20), params)) == first
    assert engine.runner.graphs is graphs and all(graphs.graphs[k] is g for k, g in captured.items())


def test_attention_length_buckets():
    from llm_core.engine.native.cuda_graphs import length_bucket

    assert [length_bucket(n, 4096) for n in (1, 256, 257, 1000, 4096)] == [256, 256, 512, 1024, 4096]
    assert length_bucket(3000, 2304) == 2304  # never past the cache


def test_admission_follows_the_cache_slots_memory_allows(llama, engine, monkeypatch):
    """On a full GPU the cache plan gives fewer slots than max_num_seqs; the batcher must admit
    no more than that, and outputs stay those of an unconstrained run."""
    from llm_core.engine.native.cache_plan import CachePlan

    batch = prompts(7, seed=18)
    params = SamplingParams(max_new_tokens=12)
    want = ids(engine.generate(batch, params))
    tight = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=8)
    monkeypatch.setattr(tight.runner, "plan", lambda needed: CachePlan(2, 256))
    widths = []
    decode = tight.runner.decode
    tight.runner.decode = lambda tokens, *rest: widths.append(len(tokens)) or decode(tokens, *rest)
    assert ids(tight.generate(batch, params)) == want
    assert tight.runner.cache.num_slots == 2 and max(widths) == 2
    tight_scores = [row[0] for row in tight.score(batch, [[3, 4]])]  # 7 prompts in groups of 2
    assert tight_scores == pytest.approx([row[0] for row in engine.score(batch, [[3, 4]])], abs=1e-5)


def test_a_sequence_too_long_for_memory_is_refused_clearly(llama, monkeypatch):
    from llm_core.engine.native.cache_plan import KVCacheMemoryError, plan_cache

    engine = NativeEngine(llama[0], device="cpu", dtype="float32")
    monkeypatch.setattr(engine.runner, "plan", lambda needed: plan_cache(needed, 64, 512, 4096, free_bytes=10**6))
    with pytest.raises(KVCacheMemoryError, match="shorten the prompt"):
        engine.generate(prompts(2), SamplingParams(max_new_tokens=300))


def shared_prefix_prompts(count: int, seed: int, prefix_len: int = 30) -> list[list[int]]:
    """A job's prompts: one shared head (system prompt, instruction), then each row's own text."""
    prefix = torch.randint(1, VOCAB, (prefix_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [prefix + own for own in prompts(count, seed=seed + 1)]


@pytest.mark.parametrize("settings", [
    dict(), dict(repetition_penalty=1.2, no_repeat_ngram_size=3), dict(n=2), dict(graphs=True),
])
def test_prefix_caching_keeps_greedy_outputs_token_exact(llama, monkeypatch, settings):
    """Two slots for seven prompts (admission, compaction), the shared prefix computed once and
    copied into each slot: the same tokens as without the cache and as transformers."""
    settings = dict(settings)
    graphs = settings.pop("graphs", False)
    if graphs:
        monkeypatch.setattr(model_runner, "DecodeGraphs", EagerDecodeGraphs)
    shared = []  # what each kernel decode step read from the prefix's one copy (KernelAttention)
    real_shared_prefix = model_runner.shared_prefix
    monkeypatch.setattr(model_runner, "shared_prefix",
                        lambda prefixes, dtype: shared.append(real_shared_prefix(prefixes, dtype)) or shared[-1])
    batch = shared_prefix_prompts(7, seed=40)
    params = SamplingParams(max_new_tokens=16, **settings)
    engines = {}
    for caching in (False, True):
        engines[caching] = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=2,
                                        max_batch_tokens=48, prefix_caching=caching)
        engines[caching].runner.use_cuda_graphs = model_runner.DecodeGraphs is EagerDecodeGraphs
    want = ids(engines[False].generate(batch, params))
    assert ids(engines[True].generate(batch, params)) == want
    assert engines[False].prefix_cache is None
    assert [len(e) for e in engines[True].prefix_cache.entries.values()] == [30]
    if engines[True].runner.attention_kernel and not graphs:  # decode read the prefix from its copy
        assert any(entry is not None and entry[1].tolist() == [30, 30] for entry in shared)
    if params.n == 1:
        for prompt, completions in zip(batch, want):
            assert completions[0] == hf_greedy(llama[1], prompt, params)


def test_prefix_is_reused_by_the_next_call_and_by_scoring(llama):
    from benchmarks.host_reads import HostReads

    engine = NativeEngine(llama[0], device="cpu", dtype="float32")
    plain = NativeEngine(llama[0], device="cpu", dtype="float32", prefix_caching=False)
    first, second = shared_prefix_prompts(4, seed=50), shared_prefix_prompts(5, seed=50)[1:]
    params = SamplingParams(max_new_tokens=10)
    assert ids(engine.generate(first, params)) == ids(plain.generate(first, params))
    entry = next(iter(engine.prefix_cache.entries.values()))
    with HostReads() as reads:  # reusing the prefix adds no host-device sync
        got = engine.generate(second, params)
    assert ids(got) == ids(plain.generate(second, params))
    assert dict(reads.counts) == {"tolist": 10}  # one per step: a prefill, then 9 decodes
    assert list(engine.prefix_cache.entries.values()) == [entry]  # the next shard: not recomputed
    continuations = [[5], [7, 8, 9], []]
    scored = engine.score(second, continuations)
    for got_row, want_row in zip(scored, plain.score(second, continuations)):
        assert got_row == pytest.approx(want_row, abs=1e-4)
    assert list(engine.prefix_cache.entries.values()) == [entry]
