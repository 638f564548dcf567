"""engine: vllm against the native engine on the built-in model and Debian rows (bf16 both).

Runs only where vLLM is installed (an optional extra; skipped in CI), from that Python:
    python -m pytest -q -s -p no:tests.support.s3_server tests/integration/test_vllm_engine.py
(the S3 test server's flask proxies break vLLM's CPU kernel registration, which walks every module). On CPU the first vLLM
start compiles for minutes (cached afterwards under ~/.cache/vllm), so one engine serves the
whole module. Greedy bf16 outputs of two engines with different kernels can part where two
tokens are nearly tied: agreement is measured and bounded, not required token for token.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import pyarrow.parquet as pq  # noqa: E402

from llm_core.engine.sampling import SamplingParams  # noqa: E402
from llm_core.llm import LLM  # noqa: E402
from llm_core.tasks import TaskKind, TaskSpec, default_sampling  # noqa: E402

pytestmark = pytest.mark.integration

DEBIAN = Path("/work/shared/datasets/debian")
LABELS = ("python", "perl", "libs", "doc", "utils", "net")


def _builtin() -> Path | None:
    from cluster.model_cache import models_dir

    folder = models_dir() / "smollm2-135m-instruct"
    return folder if (folder / "model.safetensors").exists() else None


@pytest.fixture(scope="module")
def folder():
    found = _builtin()
    if found is None or not (DEBIAN / "summarize.parquet").exists():
        pytest.skip("built-in model or Debian data not on disk")
    return found


@pytest.fixture(scope="module")
def vllm_llm(folder):
    return LLM(folder, engine="vllm", device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def native_llm(folder):
    return LLM(folder, engine="native", device="cpu", dtype="bfloat16", batch_size=8)


def _prompts(llm: LLM, n: int = 8) -> list[list[int]]:
    texts = pq.read_table(DEBIAN / "summarize.parquet", columns=["text"]).column("text").to_pylist()[:n]
    tok = llm.tokenizer
    return tok.encode_batch([tok.apply_chat_template([{"role": "user", "content": "Summarize the following Debian "
                                                       f"package description in one sentence:\n\n{t[:1500]}"}])
                             for t in texts])


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_the_engine_is_vllm_in_bf16(vllm_llm):
    engine = vllm_llm.engine
    assert engine.name == "vllm" and engine.device == "cpu" and str(engine.dtype) == "torch.bfloat16"
    assert engine.max_context == 8192 and engine.eos_token_ids


def test_greedy_summaries_agree_with_the_native_engine(vllm_llm, native_llm):
    prompts = _prompts(vllm_llm)
    # the summarize task's defaults: repetition penalty and no-repeat-ngram (our logits processor)
    params = SamplingParams(max_new_tokens=32, **default_sampling(TaskKind.SUMMARIZE))
    finished = []
    got = vllm_llm.engine.generate(prompts, params, on_finished=finished.extend)
    want = native_llm.engine.generate(prompts, params)
    assert sorted(i for i, _ in finished) == list(range(len(prompts)))
    same = sum(g[0].token_ids == w[0].token_ids for g, w in zip(got, want))
    prefix = sum(_common_prefix(g[0].token_ids, w[0].token_ids) for g, w in zip(got, want))
    total = sum(len(w[0].token_ids) for w in want)
    print(f"\ngreedy bf16 vLLM vs native: {same}/{len(prompts)} identical, "
          f"common prefix {prefix}/{total} tokens ({prefix / total:.1%})")
    for g, w in zip(got, want):
        assert g[0].finish_reason in ("stop", "length") and g[0].prompt_tokens == w[0].prompt_tokens
        assert g[0].text == vllm_llm.tokenizer.decode(g[0].token_ids)  # our tokenizer's text
        assert not set(g[0].token_ids[-1:]) & set(vllm_llm.engine.eos_token_ids)  # EOS left out
    # measured on a CPU without native bf16 (the native engine emulates it): 2/8 identical, 58.5% of
    # tokens before the first difference; differences start where two tokens are nearly tied
    assert same >= 2 and prefix / total >= 0.5


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.1}, {"no_repeat_ngram_size": 4},
                                   {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4}])
def test_fp32_greedy_outputs_and_scores_are_the_native_engines(folder, extra):
    """In fp32 the two engines agree token for token: what differs in bf16 is numerics, not rules."""
    engines = _fp32_engines(folder)
    vllm_engine, native = engines["vllm"], engines["native"]
    prompts = _prompts(vllm_engine)
    params = SamplingParams(max_new_tokens=32, **extra)
    got, want = vllm_engine.generate(prompts, params), native.generate(prompts, params)
    assert [c[0].token_ids for c in got] == [c[0].token_ids for c in want]
    assert [c[0].text for c in got] == [c[0].text for c in want]
    continuations = [vllm_engine.tokenizer.encode(" This package provides"), vllm_engine.tokenizer.encode(" Python")]
    for gr, wr in zip(vllm_engine.score(prompts[:3], continuations), native.score(prompts[:3], continuations)):
        assert gr == pytest.approx(wr, abs=1e-3)


@functools.cache
def _fp32_engines(folder: Path) -> dict:
    from llm_core.engine.select import load_engine
    from llm_core.tokenizer import ModelTokenizer

    tok = ModelTokenizer(folder)
    return {"vllm": load_engine(folder, "vllm", "cpu", "float32", 8, tokenizer=tok),
            "native": load_engine(folder, "native", "cpu", "float32", 8, tokenizer=tok)}


def test_stop_strings_cut_the_text_as_the_native_engine_does(vllm_llm):
    prompts = _prompts(vllm_llm, 2)
    plain = vllm_llm.engine.generate(prompts, SamplingParams(max_new_tokens=24))
    # a stop string that occurs in each output: the text ends right before it
    stops = tuple(c[0].text.split()[2] for c in plain)
    cut = vllm_llm.engine.generate(prompts, SamplingParams(max_new_tokens=24, stop=stops))
    for before, after in zip(plain, cut):
        first = min(i for i in (before[0].text.find(s) for s in stops) if i >= 0)
        assert after[0].text == before[0].text[:first] and after[0].finish_reason == "stop"


def test_seeded_samples_are_reproducible_and_independent_of_the_batch(vllm_llm):
    prompts = _prompts(vllm_llm, 3)
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, n=2)
    seeds = [11, 22, 33]
    first = vllm_llm.engine.generate(prompts, params, seeds=seeds)
    again = vllm_llm.engine.generate(prompts, params, seeds=seeds)
    alone = vllm_llm.engine.generate(prompts[1:2], params, seeds=seeds[1:2])
    tokens = [[c.token_ids for c in row] for row in first]
    assert tokens == [[c.token_ids for c in row] for row in again]
    # Per-row seeds: alone, the row draws what it drew in the batch. Only the first tokens are
    # compared: vLLM's CPU kernels are not batch-invariant, and on the AVX-512 / AMX machine of
    # 2026-12-01 one of the two completions parted after 9 tokens (a near tie; the same prefix).
    # A batch-wide generator would part at the first token.
    assert [t[:4] for t in tokens[1]] == [c.token_ids[:4] for c in alone[0]]
    assert all(len(row) == 2 for row in tokens) and any(row[0] != row[1] for row in tokens)
    other = vllm_llm.engine.generate(prompts, params, seeds=[12, 23, 34])
    assert [[c.token_ids for c in row] for row in other] != tokens


def test_scores_are_close_to_the_native_engines(vllm_llm, native_llm):
    prompts = _prompts(vllm_llm, 3)
    tok = vllm_llm.tokenizer
    continuations = [tok.encode(" This package provides"), tok.encode(" Python"), tok.encode(" a library for Perl")]
    got = vllm_llm.engine.score(prompts, continuations)
    want = native_llm.engine.score(prompts, continuations)
    worst = max(abs(g - w) for gr, wr in zip(got, want) for g, w in zip(gr, wr))
    print(f"\nscore bf16 vLLM vs native: largest difference {worst:.3f} nats (values {got})")
    assert [len(r) for r in got] == [3, 3, 3]
    for gr, wr in zip(got, want):
        # Summed over the continuation's tokens: bf16 kernels differ by about 1% of the sum
        # (0.335 nats of -28 on the AMX machine of 2026-12-01, under 0.3 on AVX2).
        assert gr == pytest.approx(wr, rel=0.02, abs=0.1)
        assert max(range(3), key=gr.__getitem__) == max(range(3), key=wr.__getitem__)


def test_classify_labels_through_the_llm_facade(vllm_llm, native_llm):
    table = pq.read_table(DEBIAN / "classify.parquet", columns=["text", "label"]).to_pylist()
    rows = [r for r in table if r["label"] in LABELS][:8]
    spec = TaskSpec(kind=TaskKind.CLASSIFY, labels=LABELS)
    params = SamplingParams(max_new_tokens=8)
    texts = [r["text"] for r in rows] + [None]  # a bad row gets its own error and stops nothing
    got = vllm_llm.run_task(spec, texts, params)
    want = native_llm.run_task(spec, texts, params)
    assert got[-1].error and got[-1].error == want[-1].error
    agree = sum(g.output == w.output for g, w in zip(got[:-1], want[:-1]))
    right = sum(g.output == r["label"] for g, r in zip(got, rows))
    print(f"\nclassify: vLLM and native labels agree on {agree}/{len(rows)}; vLLM accuracy {right}/{len(rows)}")
    assert all(g.output in LABELS for g in got[:-1])
    assert agree >= 0.8 * len(rows)
