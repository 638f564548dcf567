"""Several completions per row (params.n) through the LLM facade on a tiny random Llama: lists of
n, and with a seed, per-row seeds that make each row's completions the same whatever the batch
size or the split of the rows into calls (shards)."""

from __future__ import annotations

import pytest

from llm_core.engine.sampling import SamplingParams
from llm_core.llm import LLM
from llm_core.tasks import TaskSpec

SPEC = TaskSpec("generate")
PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0, seed=11, n=3)


def _texts(n: int) -> list[str]:
    words = "Debian packages are maintained by volunteers around the world".split()
    return [" ".join(words[: 2 + (i * 5) % len(words)]) for i in range(n)]


def _completions(results) -> list:
    return [[s.text for s in r.samples] if r.error is None else r.error for r in results]


@pytest.fixture(scope="module")
def native(tiny_dir):
    return {size: LLM(tiny_dir, engine="native", batch_size=size) for size in (1, 4)}


def test_each_row_gets_n_distinct_completions(native):
    texts = _texts(5)
    out = native[4].run_task(SPEC, texts, PARAMS, row_ids=[f"r{i}" for i in range(5)])
    for r in out:
        assert r.error is None, r.error
        assert len(r.samples) == 3 and len({s.text for s in r.samples}) == 3  # sampled, not copies
        assert r.output == r.samples[0].text and r.finish_reason == r.samples[0].finish_reason
        assert r.completion_tokens == sum(s.completion_tokens for s in r.samples)
        assert all(s.finish_reason in ("stop", "length") for s in r.samples)


def test_seeded_rows_are_the_same_whatever_the_batch_size_and_split(native):
    texts, ids = _texts(7), [f"pkg-{i}" for i in range(7)]
    whole = _completions(native[4].run_task(SPEC, texts, PARAMS, row_ids=ids))
    one_by_one = _completions(native[1].run_task(SPEC, texts, PARAMS, row_ids=ids))
    # two "shards" in the other order, another batch size, progress callbacks on
    second = native[1].run_task(SPEC, texts[3:], PARAMS, row_ids=ids[3:], on_batch=lambda *c: None)
    first = native[4].run_task(SPEC, texts[:3], PARAMS, row_ids=ids[:3])
    assert whole == one_by_one == _completions(first) + _completions(second)
    assert whole == _completions(native[4].run_task(SPEC, texts, PARAMS, row_ids=ids))  # a rerun


def test_the_row_id_and_the_seed_choose_the_draws(native):
    same_text = ["Debian packages are maintained"] * 2
    twins = _completions(native[4].run_task(SPEC, same_text, PARAMS, row_ids=["a", "b"]))
    assert twins[0] != twins[1]  # same text, different rows: different completions
    reseeded = _completions(native[4].run_task(SPEC, same_text, PARAMS.with_updates(seed=12), row_ids=["a", "b"]))
    assert reseeded[0] != twins[0]


def test_one_completion_has_no_samples_and_errors_stay_per_row(native):
    out = native[4].run_task(SPEC, ["a text", None], PARAMS.with_updates(n=1), row_ids=["x", "y"])
    assert out[0].samples is None and isinstance(out[0].output, str)
    many = native[4].run_task(SPEC, ["a text", None], PARAMS, row_ids=["x", "y"])
    assert many[1].error == "text is null" and many[1].samples is None and many[1].output is None


def test_transformers_engine_gives_n_completions_too(tiny_dir):
    out = LLM(tiny_dir, engine="hf", batch_size=2).run_task(SPEC, _texts(3), PARAMS, row_ids=["a", "b", "c"])
    assert all(r.error is None and len(r.samples) == 3 for r in out), [r.error for r in out]
