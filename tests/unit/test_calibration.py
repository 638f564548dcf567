"""Contextual calibration (llm_core.calibration) on known scores, and classify through the LLM facade
on a tiny random Llama: calibrated or raw, with the row's own examples in the content-free prompts."""

from __future__ import annotations

import math

import pytest

from llm_core.calibration import (CONTENT_FREE_TEXTS, best_label, calibrated_scores, content_free_log_prior,
                                  label_log_probs)
from llm_core.engine.sampling import SamplingParams
from llm_core.fewshot import Example, FewShotSpec
from llm_core.llm import LLM
from llm_core.prompting import chat_ids
from llm_core.tasks import TaskSpec

LABELS = ("net", "utils", "python")


def test_label_scores_are_normalised_over_the_labels():
    probs = [math.exp(x) for x in label_log_probs([math.log(0.2), math.log(0.05), math.log(0.25)])]
    assert probs == pytest.approx([0.4, 0.1, 0.5])


def test_the_prior_is_the_mean_normalised_distribution_of_the_content_free_inputs():
    # unnormalised scores: each row is normalised first, then the three are averaged
    rows = [[math.log(2), math.log(1), math.log(1)], [math.log(1), math.log(1), math.log(2)],
            [math.log(6), math.log(2), math.log(2)]]
    expected = [(0.5 + 0.25 + 0.6) / 3, (0.25 + 0.25 + 0.2) / 3, (0.25 + 0.5 + 0.2) / 3]
    assert [math.exp(x) for x in content_free_log_prior(rows)] == pytest.approx(expected)
    with pytest.raises(ValueError):
        content_free_log_prior([])


def test_calibration_turns_a_label_the_prompt_favours_into_the_one_the_input_favours():
    # p(label | x) = [0.6, 0.3, 0.1]: raw argmax "net"; the prompt alone gives [0.8, 0.1, 0.1]
    scores = [math.log(0.6), math.log(0.3), math.log(0.1)]
    prior = [math.log(0.8), math.log(0.1), math.log(0.1)]
    calibrated = calibrated_scores(scores, prior)
    assert calibrated == pytest.approx([math.log(0.75), math.log(3), math.log(1)])
    assert best_label(scores) == 0 and best_label(calibrated) == 1
    with pytest.raises(ValueError):
        calibrated_scores(scores, prior[:2])


def test_very_unlikely_labels_do_not_underflow():
    scores = [-9000.0, -9001.0, -12000.0]  # exp() of these is 0.0 in floats
    prior = content_free_log_prior([[-8000.0, -8003.0, -11000.0]])
    values = calibrated_scores(scores, prior)
    assert all(math.isfinite(v) for v in values)
    assert values[0] == pytest.approx(math.log(1 / (1 + math.e ** -1)) - math.log(1 / (1 + math.e ** -3)))


def test_a_tie_goes_to_the_first_label():
    assert best_label([0.5, 0.5, 0.1]) == 0


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(tiny_dir, engine="native", batch_size=2)


ROWS = ["a network daemon for routers", "small command line tools", "a python library", "mail server"]


def expected_labels(llm, spec, rows, shots) -> list[str]:
    """The choice computed from the engine's own scores of the prompts run_task builds."""
    end = list(llm.tokenizer.eos_token_ids[:1])
    continuations = [llm.tokenizer.encode(label) + end for label in spec.labels]
    labels = []
    for row, examples in zip(rows, shots):
        [raw] = llm.engine.score([chat_ids(llm.tokenizer, spec, row, None, examples)], continuations)
        if spec.calibrate:
            free = llm.engine.score([chat_ids(llm.tokenizer, spec, t, None, examples) for t in CONTENT_FREE_TEXTS],
                                    continuations)
            raw = calibrated_scores(raw, content_free_log_prior(free))
        labels.append(spec.labels[best_label(raw)])
    return labels


@pytest.mark.parametrize("calibrate", [True, False])
def test_classify_chooses_by_the_calibrated_or_the_raw_scores(llm, calibrate):
    spec = TaskSpec("classify", labels=LABELS, calibrate=calibrate)
    out = llm.run_task(spec, ROWS, SamplingParams())
    assert [r.output for r in out] == expected_labels(llm, spec, ROWS, [()] * len(ROWS))
    chunked = llm.run_task(spec, ROWS, SamplingParams(), on_batch=lambda *counts: None)
    assert [r.output for r in chunked] == [r.output for r in out]


def test_the_content_free_prompts_carry_the_rows_examples(llm, monkeypatch):
    pool = (Example("a router daemon", "net"), Example("python yaml parser", "python"),
            Example("file copy tool", "utils"))
    spec = TaskSpec("classify", labels=LABELS, fewshot=FewShotSpec(pool, k=1, select="similar"))
    seen: list = []
    real = llm.engine.score
    monkeypatch.setattr(llm.engine, "score", lambda prompts, conts: seen.extend(prompts) or real(prompts, conts))
    rows = ["a daemon for network routers", "python parser of yaml", "another router daemon"]
    out = llm.run_task(spec, rows, SamplingParams())
    free = [llm.tokenizer.decode(p) for p in seen[len(rows):]]
    shots = [(pool[0],), (pool[1],), (pool[0],)]
    assert [r.output for r in out] == expected_labels(llm, spec, rows, shots)
    # one prior per distinct set of examples: the router example's and the yaml example's
    assert len(free) == 2 * len(CONTENT_FREE_TEXTS)
    assert all("a router daemon" in text for text in free[:3]) and all("python yaml" in text for text in free[3:])
    assert all("[MASK]" in text for text in (free[2], free[5]))
