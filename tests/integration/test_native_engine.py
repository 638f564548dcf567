"""NativeEngine on tiny random HF folders: greedy output token-exact with transformers'
generate, continuous batching, stopping, seeded sampling, n > 1 and scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_core.engine.native import NativeEngine
from llm_core.engine.native import model_runner
from llm_core.engine.sampling import SamplingParams
from tests.support.native_engine import VOCAB, hf_greedy, ids, make_folder, prompts
from tests.support.paths import REPO


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
