"""Per-row errors and batching through the LLM facade, on a tiny random Llama (real weights files)."""

from __future__ import annotations

import pytest

from llm_core.llm import LLM
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskSpec


@pytest.mark.parametrize("engine", ["hf", "auto"])
def test_bad_rows_get_errors_and_the_rest_go_on(tiny_dir, engine):
    llm = LLM(tiny_dir, engine=engine, batch_size=4)
    long_text = "word " * 400
    texts = ["A real sentence about Debian.", None, "", "   ", 42, long_text, "Another one."]
    params = SamplingParams(max_new_tokens=5)
    out = llm.run_task(TaskSpec("summarize"), texts, params, max_input_tokens=120, on_long_input="error")
    assert [r.error for r in out[1:5]] == ["text is null", "text is empty", "text is empty",
                                           "text is not a string (int)"]
    assert out[5].error.startswith("input too long")
    for ok in (out[0], out[6]):
        assert ok.prompt_tokens > 0 and ok.completion_tokens > 0
        assert ok.finish_reason in ("stop", "length")
        assert (ok.output is None) == (ok.error is not None)


def test_long_input_is_truncated_to_fit(tiny_dir):
    llm = LLM(tiny_dir, engine="hf")
    out = llm.run_task(TaskSpec("summarize"), ["word " * 400], SamplingParams(max_new_tokens=3),
                       max_input_tokens=120, on_long_input="truncate")
    assert out[0].prompt_tokens <= 120 and out[0].prompt_tokens > 60
    assert out[0].error is None or out[0].error == "model produced an empty output"


def test_classify_always_returns_one_of_the_labels(tiny_dir):
    llm = LLM(tiny_dir, engine="hf")
    labels = ("net", "utils", "python")
    out = llm.run_task(TaskSpec("classify", labels=labels), ["a network daemon", "a python lib", None],
                       SamplingParams())
    assert out[0].output in labels and out[1].output in labels
    assert out[2].error == "text is null"


def test_translate_per_row_language_missing(tiny_dir):
    llm = LLM(tiny_dir, engine="hf")
    out = llm.run_task(TaskSpec("translate"),
                       ["hello", "world"], SamplingParams(max_new_tokens=2), target_languages=["fr", None])
    assert out[1].error == "target language is missing for this row"
    assert out[0].prompt_tokens > 0


def _texts(n: int) -> list:
    words = "Debian packages are maintained by volunteers around the world".split()
    return [" ".join(words[: 2 + (i * 7) % len(words)]) for i in range(n)]


@pytest.mark.parametrize("engine", ["hf", "native"])
def test_on_batch_counts_rows_as_batches_finish_with_unchanged_outputs(tiny_dir, engine):
    llm = LLM(tiny_dir, engine=engine, batch_size=2)
    texts = _texts(21) + [None, ""]
    params = SamplingParams(max_new_tokens=4)
    plain = llm.run_task(TaskSpec("summarize"), texts, params)
    calls: list[tuple[int, int, int]] = []
    counted = llm.run_task(TaskSpec("summarize"), texts, params, on_batch=lambda *c: calls.append(c))
    assert [(r.output, r.error, r.completion_tokens) for r in counted] == \
        [(r.output, r.error, r.completion_tokens) for r in plain]
    # the two refused rows first, then one call per engine batch (several per call, not one)
    assert calls[0] == (2, 2, 0)
    assert len(calls) >= 4
    assert all(a[0] < b[0] and a[2] <= b[2] for a, b in zip(calls, calls[1:]))
    assert calls[-1] == (len(texts), sum(r.error is not None for r in counted),
                         sum(r.completion_tokens for r in counted))


def test_on_batch_for_classify_ends_with_the_labels_tokens(tiny_dir):
    llm = LLM(tiny_dir, engine="hf", batch_size=2)
    spec = TaskSpec("classify", labels=("net", "utils"))
    texts = _texts(5)
    plain = llm.run_task(spec, texts, SamplingParams())
    calls: list = []
    counted = llm.run_task(spec, texts, SamplingParams(), on_batch=lambda *c: calls.append(c))
    assert [r.output for r in counted] == [r.output for r in plain]
    assert [c[0] for c in calls] == [0, 2, 4, 5, 5][-len(calls):] and calls[-1][0] == 5
    assert calls[-1][2] == sum(r.completion_tokens for r in counted) > 0


def test_error_kinds_permanent_for_input_retriable_for_the_model(tiny_dir):
    llm = LLM(tiny_dir, engine="native")
    texts = ["fine", None, "", "word " * 400]
    out = llm.run_task(TaskSpec("summarize"), texts, SamplingParams(max_new_tokens=0),
                       max_input_tokens=120, on_long_input="error")
    assert [r.error_kind for r in out] == ["retriable", "permanent", "permanent", "permanent"]
    assert out[0].error == "model produced an empty output"
    missing = llm.run_task(TaskSpec("translate"), ["hello"], SamplingParams(max_new_tokens=2),
                           target_languages=[None])
    assert missing[0].error_kind == "permanent"
    ok = llm.run_task(TaskSpec("summarize"), ["a real text"], SamplingParams(max_new_tokens=3))
    assert ok[0].error is not None or ok[0].error_kind is None


@pytest.mark.parametrize("engine", ["hf", "native"])
def test_seeded_sampling_gives_the_same_rows_batch_by_batch(tiny_dir, engine):
    llm = LLM(tiny_dir, engine=engine, batch_size=2)
    texts = _texts(7)
    params = SamplingParams(max_new_tokens=5, temperature=0.9, top_k=20, seed=7)
    plain = llm.run_task(TaskSpec("generate"), texts, params)
    counted = llm.run_task(TaskSpec("generate"), texts, params, on_batch=lambda *c: None)
    assert [r.output for r in counted] == [r.output for r in plain]
