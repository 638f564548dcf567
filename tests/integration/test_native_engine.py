"""NativeEngine on tiny random HF folders: greedy output token-exact with transformers'
generate, continuous batching, stopping, seeded sampling, n > 1 and scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_core.engine.native import NativeEngine
from llm_core.engine.native import model_runner
from llm_core.engine.native.cuda_graphs import DecodeGraphs
from llm_core.engine.sampling import SamplingParams
from tests.support.paths import REPO

VOCAB = 256
TINY = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
)


def make_folder(path: Path, model_type: str = "llama", **extra):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the default init: sharper, less tied logits
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(path)
    # One word per id; decoding joins words with spaces: "t5 t17 ...".
    Tokenizer(WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0")).save(str(path / "tokenizer.json"))
    return model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = make_folder(path, "llama", eos_token_id=None)
    return path, hf


@pytest.fixture(scope="module")
def engine(llama):
    return NativeEngine(llama[0], device="cpu", dtype="float32")


def prompts(count: int = 6, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (count,), generator=gen).tolist()
    return [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def hf_greedy(hf, prompt: list[int], params: SamplingParams) -> list[int]:
    kwargs = dict(
        max_new_tokens=params.max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
        repetition_penalty=params.repetition_penalty, no_repeat_ngram_size=params.no_repeat_ngram_size or None,
    )
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
    return out[0, len(prompt):].tolist()


def ids(results) -> list[list[int]]:
    return [[c.token_ids for c in per_prompt] for per_prompt in results]


@pytest.mark.parametrize("settings", [
    dict(), dict(repetition_penalty=1.1), dict(no_repeat_ngram_size=2),
])
def test_greedy_matches_transformers_generate(llama, engine, settings):
    _, hf = llama
    params = SamplingParams(max_new_tokens=24, **settings)
    batch = prompts(6)
    got = engine.generate(batch, params)
    for prompt, completions in zip(batch, got):
        assert completions[0].token_ids == hf_greedy(hf, prompt, params)
        assert completions[0].finish_reason == "length"
        assert completions[0].prompt_tokens == len(prompt)


def test_qwen2_greedy_matches_transformers(tmp_path):
    hf = make_folder(tmp_path, "qwen2", tie_word_embeddings=True, eos_token_id=None)
    engine = NativeEngine(tmp_path, device="cpu", dtype="float32")
    params = SamplingParams(max_new_tokens=16)
    batch = prompts(3, seed=5)
    for prompt, completions in zip(batch, engine.generate(batch, params)):
        assert completions[0].token_ids == hf_greedy(hf, prompt, params)


@pytest.mark.parametrize("settings", [dict(), dict(repetition_penalty=1.3, no_repeat_ngram_size=3)])
def test_continuous_batching_equals_one_at_a_time(llama, settings):
    # Two slots for seven prompts, and an EOS that ends some early: sequences join as others
    # leave, and their cache slots (and seen-token rows, with a penalty) get compacted.
    batch = prompts(7, seed=3)
    params = SamplingParams(max_new_tokens=20, **settings)
    alone_engine = NativeEngine(llama[0], device="cpu", dtype="float32")
    free_run = [alone_engine.generate([p], params)[0][0].token_ids for p in batch]
    counts = torch.bincount(torch.tensor([t for run in free_run for t in run]), minlength=VOCAB)
    eos = int(counts.argmax())
    alone_engine.eos_token_ids = (eos,)
    alone = [alone_engine.generate([p], params)[0] for p in batch]
    assert any(c[0].finish_reason == "stop" for c in alone)
    assert any(c[0].finish_reason == "length" for c in alone)
    batched_engine = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=2, max_batch_tokens=48)
    batched_engine.eos_token_ids = (eos,)
    assert ids(batched_engine.generate(batch, params)) == ids(alone)


def test_finish_reasons_stop_token_and_length(engine):
    prompt = prompts(1, seed=7)[0]
    full = engine.generate([prompt], SamplingParams(max_new_tokens=12))[0][0]
    assert full.finish_reason == "length" and len(full.token_ids) == 12
    stop_at = full.token_ids[5]
    first = full.token_ids.index(stop_at)
    stopped = engine.generate([prompt], SamplingParams(max_new_tokens=12, stop_token_ids=(stop_at,)))[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[:first]  # the stop token itself is not returned
    assert stopped.text == " ".join(f"t{t}" for t in full.token_ids[:first])


def test_eos_stops_unless_ignored(llama):
    engine = NativeEngine(llama[0], device="cpu", dtype="float32")
    prompt = prompts(1, seed=8)[0]
    full = engine.generate([prompt], SamplingParams(max_new_tokens=10))[0][0]
    engine.eos_token_ids = (full.token_ids[3],)
    cut = engine.generate([prompt], SamplingParams(max_new_tokens=10))[0][0]
    assert cut.finish_reason == "stop" and len(cut.token_ids) <= 3
    ignored = engine.generate([prompt], SamplingParams(max_new_tokens=10, ignore_eos=True))[0][0]
    assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"


def test_stop_string_cuts_text(engine):
    prompt = prompts(1, seed=9)[0]
    full = engine.generate([prompt], SamplingParams(max_new_tokens=12))[0][0]
    stop = f" t{full.token_ids[6]} "
    cut_at = full.text.index(stop)
    got = engine.generate([prompt], SamplingParams(max_new_tokens=12, stop=(stop,)))[0][0]
    assert got.finish_reason == "stop"
    assert got.text == full.text[:cut_at]
    assert got.token_ids == full.token_ids[: len(got.token_ids)] and len(got.token_ids) < 12


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    batch = prompts(4, seed=11)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=123)
    first = ids(engine.generate(batch, params))
    assert ids(engine.generate(batch, params)) == first
    assert ids(engine.generate(batch[2:3], params)) == first[2:3]
    assert ids(engine.generate(batch, params.with_updates(seed=124))) != first


def test_n_completions_per_prompt(engine):
    batch = prompts(2, seed=12)
    sampled = engine.generate(batch, SamplingParams(max_new_tokens=16, temperature=1.0, n=3, seed=1))
    assert [len(c) for c in sampled] == [3, 3]
    assert len({tuple(c.token_ids) for c in sampled[0]}) > 1
    greedy = engine.generate(batch, SamplingParams(max_new_tokens=8, n=2))
    assert all(c[0].token_ids == c[1].token_ids for c in greedy)


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    batch = prompts(3, seed=13)
    greedy = ids(engine.generate(batch, SamplingParams(max_new_tokens=10)))
    assert ids(engine.generate(batch, SamplingParams(max_new_tokens=10, temperature=0.8, top_k=1))) == greedy
    assert ids(engine.generate(batch, SamplingParams(max_new_tokens=10, temperature=0.8, top_p=1e-6))) == greedy


def test_score_equals_transformers_log_likelihood(llama, engine):
    _, hf = llama
    batch = prompts(3, seed=14)
    continuations = [[5], [7, 8, 9], [200, 3]]
    got = engine.score(batch, continuations)
    for prompt, row in zip(batch, got):
        for cont, value in zip(continuations, row):
            with torch.inference_mode():
                logits = hf(torch.tensor([prompt + cont])).logits[0, len(prompt) - 1 : -1]
            want = logits.log_softmax(-1).gather(1, torch.tensor(cont)[:, None]).sum().item()
            assert value == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("expand_kv", [True, False])
def test_score_with_expanded_kv_heads_equals_transformers(llama, monkeypatch, expand_kv):
    """expand_kv=True is the CUDA path (KV heads repeated, no enable_gqa, so SDPA's fused kernels
    can take the mask); both paths must give transformers' log-likelihoods."""
    import functools

    from llm_core.engine.native import attention

    monkeypatch.setattr(model_runner, "PrefillAttention",
                        functools.partial(attention.PrefillAttention, expand_kv=expand_kv))
    _, hf = llama
    engine = NativeEngine(llama[0], device="cpu", dtype="float32", max_num_seqs=2)  # 2 groups
    batch = prompts(3, seed=15)
    continuations = [[9, 8], [], [4, 4, 4, 1]]
    got = engine.score(batch, continuations)
    for prompt, row in zip(batch, got):
        assert row[1] == 0.0
        for cont, value in zip(continuations, row):
            if cont:
                with torch.inference_mode():
                    logits = hf(torch.tensor([prompt + cont])).logits[0, len(prompt) - 1 : -1]
                want = logits.log_softmax(-1).gather(1, torch.tensor(cont)[:, None]).sum().item()
                assert value == pytest.approx(want, abs=1e-4)


def test_score_reads_the_device_once_per_call(engine):
    from benchmarks.host_reads import HostReads

    batch = prompts(5, seed=16)
    with HostReads() as reads:
        engine.score(batch, [[1], [2, 3], [4, 5, 6]])
    assert dict(reads.counts) == {"tolist": 1}
    assert engine.score(prompts(2), []) == [[], []]


@pytest.mark.parametrize("settings", [dict(temperature=0.8, top_k=20, top_p=0.9, seed=1),
                                      dict(repetition_penalty=1.2, no_repeat_ngram_size=2)])
def test_generation_reads_the_device_once_per_step(engine, monkeypatch, settings):
    """The token list is the only read per prefill or decode step (on CUDA: one sync per step)."""
    from benchmarks.host_reads import HostReads

    steps = []
    for name in ("extend", "decode"):
        method = getattr(engine.runner, name)
        monkeypatch.setattr(engine.runner, name, lambda *a, _m=method, **k: steps.append(1) or _m(*a, **k))
    batch = prompts(4, seed=17)
    with HostReads() as reads:
        engine.generate(batch, SamplingParams(max_new_tokens=8, **settings))
    assert dict(reads.counts) == {"tolist": len(steps)}


def test_bfloat16_generation_runs_on_cpu(llama):
    engine = NativeEngine(llama[0], device="cpu", dtype="bfloat16")
    out = engine.generate(prompts(3), SamplingParams(max_new_tokens=6))
    assert engine.dtype == torch.bfloat16
    assert all(len(c[0].token_ids) == 6 for c in out)


def test_auto_device_and_dtype_on_cpu_only_machine(engine):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert engine.device == "cpu" and engine.dtype == torch.float32


def test_rejects_prompts_the_model_cannot_take(engine):
    with pytest.raises(ValueError):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ValueError):
        engine.generate([[1] * 600], SamplingParams())


def builtin_folder() -> Path | None:
    """The built-in model if it is already on disk (this test never downloads)."""
    candidates = []
    try:
        from cluster.model_cache import models_dir

        candidates.append(models_dir() / "smollm2-135m-instruct")
    except ImportError:
        pass
    candidates.append(Path("/tmp/conv"))
    return next((c for c in candidates if (c / "model.safetensors").exists()), None)


@pytest.mark.integration
def test_builtin_model_greedy_matches_transformers_on_debian_prompts():
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    from llm_core.tokenizer import ModelTokenizer

    folder = builtin_folder()
    data = next((d for d in (REPO / "examples/data/debian-summarize.parquet",
                             Path("/work/shared/datasets/debian/summarize.parquet")) if d.exists()), None)
    if folder is None or data is None:
        pytest.skip("built-in model or Debian data not on disk")
    tok = ModelTokenizer(folder)
    texts = pq.read_table(data, columns=["text"]).column("text").to_pylist()[:4]
    batch = tok.encode_batch([
        tok.apply_chat_template([{"role": "user", "content": f"Summarize the following Debian package "
                                  f"description in one sentence:\n\n{t}"}]) for t in texts
    ])
    params = SamplingParams(max_new_tokens=32, repetition_penalty=1.1)
    engine = NativeEngine(folder, device="cpu", dtype="float32")
    got = engine.generate(batch, params)
    assert engine.prefix_cache.entries  # the shared chat template and instruction, computed once
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for prompt, completions in zip(batch, got):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=32, do_sample=False, repetition_penalty=1.1,
                              eos_token_id=list(engine.eos_token_ids), pad_token_id=2)
        want = out[0, len(prompt):].tolist()
        if want and want[-1] in engine.eos_token_ids:
            want = want[:-1]  # the engine does not return the EOS token
        assert completions[0].token_ids == want


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
    graphed.runner.decode = lambda tokens, positions: sizes.append(len(tokens)) or decode(tokens, positions)
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
    tight.runner.decode = lambda tokens, positions: widths.append(len(tokens)) or decode(tokens, positions)
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


def test_transformers_engine_scores_like_the_native_one(llama, engine):
    from llm_core.engine.hf import HFEngine

    hf_engine = HFEngine(llama[0], device="cpu", dtype="float32", batch_size=2)
    batch = prompts(3, seed=19)
    continuations = [[5, 6], [7], []]
    got = hf_engine.score(batch, continuations)
    want = engine.score(batch, continuations)
    assert [len(row) for row in got] == [3, 3, 3]
    for got_row, want_row in zip(got, want):
        assert got_row == pytest.approx(want_row, abs=1e-4)
    assert hf_engine.score(batch, []) == [[], [], []]


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
    if settings.pop("graphs", False):
        monkeypatch.setattr(model_runner, "DecodeGraphs", EagerDecodeGraphs)
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
