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
