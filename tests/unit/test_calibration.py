"""Calibration (llm_core.calibration) on known scores, and classify through the LLM facade on a tiny
random Llama: batch-calibrated (the same labels whatever the split of the rows), content-free
(the row's own examples in the content-free prompts) or raw."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from jobs.manifest import parse_manifest
from jobs.run import calibration as job_calibration
from jobs.run.preflight.inputs import check_input
from jobs.run.preflight.plan import Plan
from jobs.run.work import build_work
from llm_core import llm as llm_module
from llm_core.calibration import (CALIBRATION_ROWS, CONTENT_FREE_TEXTS, best_label, calibrated_scores,
                                  calibration_method, content_free_log_prior, label_log_probs, log_prior,
                                  sample_indices)
from llm_core.engine.sampling import SamplingParams
from llm_core.fewshot import Example, FewShotSpec
from llm_core.llm import LLM
from llm_core.prompting import chat_ids
from llm_core.tasks import TaskSpec
from workers.output.location import OutputLocation

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


def test_batch_calibration_takes_away_what_every_row_shares():
    # every row leans to label 0 by the prompt; divided by the rows' mean distribution
    # [0.5, 0.3, 0.2], the second row goes to label 1 and the third to label 2
    rows = [[math.log(0.7), math.log(0.2), math.log(0.1)], [math.log(0.45), math.log(0.45), math.log(0.1)],
            [math.log(0.35), math.log(0.25), math.log(0.4)]]
    prior = log_prior(rows)
    assert [math.exp(x) for x in prior] == pytest.approx([0.5, 0.3, 0.2])
    assert [best_label(r) for r in rows] == [0, 0, 2]
    assert [best_label(calibrated_scores(r, prior)) for r in rows] == [0, 1, 2]
    assert content_free_log_prior is log_prior


@pytest.mark.parametrize("value, method", [(True, "batch"), ("batch", "batch"), ("content_free", "content_free"),
                                           (False, None), (None, None)])
def test_calibrate_settings_name_a_method(value, method):
    assert calibration_method(value) == method
    assert TaskSpec("classify", labels=LABELS, calibrate=value).calibrate == (method or False)


@pytest.mark.parametrize("value", ["domain", "true", 1, 0])
def test_an_unknown_calibrate_setting_is_refused(value):
    with pytest.raises(ValueError, match="calibrate must be true, false or one of batch, content_free"):
        TaskSpec("classify", labels=LABELS, calibrate=value)


def test_the_calibration_sample_is_every_row_up_to_its_size_then_a_seeded_draw():
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    drawn = sample_indices(10_000)
    assert len(drawn) == CALIBRATION_ROWS == len(set(drawn)) and drawn == sorted(drawn)
    assert drawn == sample_indices(10_000) and drawn != sample_indices(10_000, seed=1)
    assert max(drawn) > 5_000  # spread over the rows, not the first ones


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(tiny_dir, engine="native", batch_size=2)


ROWS = ["a network daemon for routers", "small command line tools", "a python library", "mail server"]


def expected_labels(llm, spec, rows, shots, calibration_rows=None) -> list[str]:
    """The choice computed from the engine's own scores of the prompts run_task builds;
    batch calibration's prior from `calibration_rows` (no examples), else from `rows`."""
    end = list(llm.tokenizer.eos_token_ids[:1])
    continuations = [llm.tokenizer.encode(label) + end for label in spec.labels]
    every = llm.engine.score([chat_ids(llm.tokenizer, spec, row, None, examples) for row, examples in zip(rows, shots)],
                             continuations)
    if spec.calibrate == "batch":
        sample = every if calibration_rows is None else llm.engine.score(
            [chat_ids(llm.tokenizer, spec, row, None) for row in calibration_rows], continuations)
        prior = log_prior(sample)
    labels = []
    for raw, examples in zip(every, shots):
        if spec.calibrate == "content_free":
            free = llm.engine.score([chat_ids(llm.tokenizer, spec, t, None, examples) for t in CONTENT_FREE_TEXTS],
                                    continuations)
            raw = calibrated_scores(raw, content_free_log_prior(free))
        elif spec.calibrate == "batch":
            raw = calibrated_scores(raw, prior)
        labels.append(spec.labels[best_label(raw)])
    return labels


@pytest.mark.parametrize("calibrate", ["batch", "content_free", False])
def test_classify_chooses_by_the_calibrated_or_the_raw_scores(llm, calibrate):
    spec = TaskSpec("classify", labels=LABELS, calibrate=calibrate)
    out = llm.run_task(spec, ROWS, SamplingParams())
    assert [r.output for r in out] == expected_labels(llm, spec, ROWS, [()] * len(ROWS))
    chunked = llm.run_task(spec, ROWS, SamplingParams(), on_batch=lambda *counts: None)
    assert [r.output for r in chunked] == [r.output for r in out]


SAMPLE = ("a daemon that routes mail", "python bindings for a C library", "command line tools to copy files",
          "network time daemon", "fonts for the terminal")


def test_batch_calibration_on_a_job_sample_gives_each_row_one_label_whatever_the_split(llm):
    # a job's shards each call run_task on their own rows with the job's sample: a row's label
    # must not depend on which rows share its call, how they are batched, or the order of calls
    spec = TaskSpec("classify", labels=LABELS, calibration_texts=SAMPLE)
    whole = [r.output for r in llm.run_task(spec, ROWS, SamplingParams())]
    assert whole == expected_labels(llm, spec, ROWS, [()] * len(ROWS), calibration_rows=SAMPLE)
    fresh = LLM(llm.model_dir, engine="native", batch_size=1)  # another worker, another batch size
    split = [r.output for part in (ROWS[3:], ROWS[:1], ROWS[1:3]) for r in fresh.run_task(spec, part, SamplingParams())]
    assert split[1:] + split[:1] == whole
    one_by_one = [llm.run_task(spec, [row], SamplingParams(), on_batch=lambda *c: None)[0].output for row in ROWS]
    assert one_by_one == whole
    # without a sample, the prior is the call's own rows: the split then matters (why jobs send one)
    assert [r.output for r in llm.run_task(TaskSpec("classify", labels=LABELS), ROWS, SamplingParams())] == \
        expected_labels(llm, TaskSpec("classify", labels=LABELS), ROWS, [()] * len(ROWS))


def test_the_batch_prior_is_measured_once_per_process_and_sample(llm, monkeypatch):
    spec = TaskSpec("classify", labels=LABELS, calibration_texts=SAMPLE + ("  ",))  # a blank text is left out
    calls: list[int] = []
    real = llm.engine.score
    monkeypatch.setattr(llm.engine, "score", lambda prompts, conts: calls.append(len(prompts)) or real(prompts, conts))
    llm._batch_priors.clear()
    llm.run_task(spec, ROWS[:2], SamplingParams())
    llm.run_task(spec, ROWS[2:], SamplingParams())
    assert calls == [2, len(SAMPLE), 2]
    with pytest.raises(ValueError, match="calibration_texts holds no usable text"):
        llm.run_task(TaskSpec("classify", labels=LABELS, calibration_texts=("", " ")), ROWS[:1], SamplingParams())


def test_the_batch_prior_digests_each_spec_once_and_scores_each_sample_once(llm, monkeypatch):
    # a shard's many calls share one spec object: its pool and sample are digested once, not per call
    digests: list[TaskSpec] = []
    real_digest = llm_module.batch_prior_digest
    monkeypatch.setattr(llm_module, "batch_prior_digest", lambda spec: digests.append(spec) or real_digest(spec))
    scored: list[int] = []
    real = llm.engine.score
    monkeypatch.setattr(llm.engine, "score", lambda prompts, conts: scored.append(len(prompts)) or real(prompts, conts))
    llm._batch_priors.clear()
    spec = TaskSpec("classify", labels=LABELS, calibration_texts=SAMPLE)
    first = [llm.run_task(spec, [row], SamplingParams())[0].output for row in ROWS]
    assert len(digests) == 1 and scored == [1, len(SAMPLE), 1, 1, 1]
    same = TaskSpec("classify", labels=LABELS, calibration_texts=SAMPLE)  # the next shard's copy
    assert [r.output for r in llm.run_task(same, ROWS, SamplingParams())] == first
    assert len(digests) == 2 and scored[5:] == [len(ROWS)]  # digested again, the prior kept
    other = TaskSpec("classify", labels=LABELS, calibration_texts=SAMPLE[:3])  # another job
    llm.run_task(other, ROWS[:1], SamplingParams())
    llm.run_task(other, ROWS[1:2], SamplingParams())
    assert len(digests) == 3 and scored[6:] == [1, 3, 1]


def test_a_content_free_prompt_that_outgrows_the_limit_drops_an_example_not_its_end(llm):
    pool = (Example("a router daemon for the network " * 4, "net"),)
    spec = TaskSpec("classify", labels=LABELS, calibrate="content_free")
    row = chat_ids(llm.tokenizer, spec, "x", None, pool)
    ids = llm._content_free_prompt(spec, pool, "[MASK] [MASK]", len(row))
    assert len(ids) <= len(row) and ids == chat_ids(llm.tokenizer, spec, "[MASK] [MASK]", None)
    assert llm.tokenizer.decode(ids).endswith("assistant\n")


def test_the_content_free_prompts_carry_the_rows_examples(llm, monkeypatch):
    pool = (Example("a router daemon", "net"), Example("python yaml parser", "python"),
            Example("file copy tool", "utils"))
    spec = TaskSpec("classify", labels=LABELS, fewshot=FewShotSpec(pool, k=1, select="similar"),
                    calibrate="content_free")
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


def test_a_jobs_sample_opens_only_the_files_holding_its_rows(tmp_path, monkeypatch):
    # the pre-flight plan knows each file's rows: the draw needs no other file opened
    folder = tmp_path / "in"
    folder.mkdir()
    for f in range(8):
        texts = [f"file {f} row {i}" for i in range(40)]
        pq.write_table(pa.table({"id": [f * 100 + i for i in range(40)], "text": texts}),
                       folder / f"{f}.parquet", row_group_size=16)
    m = parse_manifest({"name": "t", "task": {"kind": "classify", "labels": ["net", "mail"]},
                        "input": {"uri": str(folder)}, "output": {"uri": str(tmp_path / "out")}})
    plan = Plan()
    check_input(m, plan, None)
    file_rows = list(plan.file_rows().items())
    assert [rows for _, rows in file_rows] == [40] * 8
    drawn = sample_indices(8 * 40, 3)
    holding = sorted({str(folder / f"{i // 40}.parquet") for i in drawn})
    opened: list[str] = []
    real = storage.open_input
    monkeypatch.setattr(storage, "open_input", lambda uri, scope=None: opened.append(uri) or real(uri, scope=scope))
    texts = job_calibration.calibration_texts(m, None, k=3, file_rows=file_rows)
    assert sorted(opened) == holding and len(holding) < 8
    assert texts == tuple(f"file {i // 40} row {i % 40}" for i in drawn)
    opened.clear()
    assert job_calibration.calibration_texts(m, None, k=3) == texts  # counted from every file: the same draw
    assert len(opened) == 8
    opened.clear()
    work = build_work(m, "job", OutputLocation.at(str(tmp_path / "out")), file_rows=file_rows)
    assert len(work.task.calibration_texts) == CALIBRATION_ROWS and len(opened) == 8  # 256 of 320: every file
    opened.clear()
    small = [(uri, rows) for uri, rows in file_rows[:2]]  # counts as given: the files past them untouched
    assert job_calibration.calibration_texts(m, None, file_rows=small) == tuple(
        f"file {f} row {i}" for f in range(2) for i in range(40))
    assert sorted(opened) == [uri for uri, _ in small]
