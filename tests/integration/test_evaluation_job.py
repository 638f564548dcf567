"""Issue 7 end to end on a real local Ray: baseline jobs (`engine: baseline`) with `evaluate:`,
`_metrics.json` and the job summary, then `llmbatch eval` and `llmbatch report` on the outputs."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from llm_core.baselines import lead_sentence
from llm_core.metrics.compute import compute_metrics
from tests.support.chromium import CHROMIUM, require_chromium
from tests.support.paths import REPO
from workers.output.location import OutputLocation

pytestmark = pytest.mark.integration

DATA = REPO / "tests" / "data"
# A model reference that cannot load: a baseline job must never try.
NO_MODEL = "/nonexistent/model-folder"


def manifest(name: str, task, input_uri, output_uri, **extra):
    return parse_manifest({
        "name": name, "task": task, "model": NO_MODEL, "engine": "baseline",
        "input": {"uri": str(input_uri), "rows_per_shard": 40}, "output": {"uri": str(output_uri)},
        "resources": {"workers": 1, "cpus_per_worker": 1}, **extra,
    })


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "", "LLMBATCH_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "jobs.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def summarize_job(ray_local, tmp_path_factory):
    """Lead-sentence summaries of the sample plus two bad rows, scored against the input's references."""
    tmp = tmp_path_factory.mktemp("summarize")
    sample = pq.read_table(DATA / "summarize_sample.parquet")
    bad = pa.table({"id": ["bad-null", "bad-empty"], "text": [None, "  "], "reference": ["x", "y"]})
    source = tmp / "in.parquet"
    pq.write_table(pa.concat_tables([sample, bad.cast(sample.schema)]), source)
    # Two bad rows of 102 stay within the job's error budget: the run succeeds and lists them in _errors.
    m = manifest("summarize-baseline", "summarize", source, tmp / "out", evaluate={"reference_column": "reference"},
                 max_error_rate=0.05)
    return run_job(m, job_id="eval-summarize"), sample, tmp / "out"


@pytest.fixture(scope="module")
def classify_job(ray_local, tmp_path_factory):
    """TF-IDF + LR trained on even rows of the classify sample, run and evaluated on the odd rows."""
    tmp = tmp_path_factory.mktemp("classify")
    sample = pq.read_table(DATA / "classify_sample.parquet")
    train, held_out = sample.take(list(range(0, sample.num_rows, 2))), sample.take(list(range(1, sample.num_rows, 2)))
    pq.write_table(train, tmp / "train.parquet")
    pq.write_table(held_out.select(["id", "text"]), tmp / "eval.parquet")
    pq.write_table(held_out.select(["id", "label"]).rename_columns(["id", "gold"]), tmp / "gold.parquet")
    labels = sorted(set(sample.column("label").to_pylist()))
    task = {"kind": "classify", "labels": labels, "train_uri": str(tmp / "train.parquet")}
    m = manifest("classify-baseline", task, tmp / "eval.parquet", tmp / "out",
                 evaluate={"reference_column": "gold", "references_uri": str(tmp / "gold.parquet")})
    return run_job(m, job_id="eval-classify"), held_out, tmp


def test_baseline_summarize_job_writes_metrics(summarize_job):
    result, sample, out = summarize_job
    assert result.ok, result.error
    rows = {r["id"]: r for r in OutputLocation.at(str(out)).read_snapshot().to_pylist()}
    assert rows["bad-null"]["error"] == "text is null" and rows["bad-empty"]["error"] == "text is empty"
    first = sample.slice(0, 1).to_pylist()[0]
    assert rows[first["id"]]["summary"] == lead_sentence(first["text"])

    metrics = json.loads((out / "_metrics.json").read_text())
    expected = compute_metrics("summarize", [lead_sentence(t) for t in sample.column("text").to_pylist()],
                               sample.column("reference").to_pylist())
    assert metrics["rows"] == 102 and metrics["scored"] == 100 and metrics["errors"] == 2
    for name in ("rouge1", "rouge2", "rougeL"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-9)
    assert 0.15 < metrics["rouge1"] < 0.6
    assert metrics["evaluation"]["reference_column"] == "reference"
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["metrics"]["rougeL"] == metrics["rougeL"] and success["engine"] == "baseline"
    assert result.summary["metrics"]["rouge2"] == metrics["rouge2"]


def test_baseline_translate_job_is_the_identity_floor(ray_local, tmp_path):
    # The sample has one row per description and language: ids must be unique, so key them by both.
    sample = pq.read_table(DATA / "translate_sample.parquet")
    ids = [f"{i}@{lang}" for i, lang in zip(sample.column("id").to_pylist(), sample.column("target_language").to_pylist())]
    source = tmp_path / "translate.parquet"
    pq.write_table(sample.set_column(0, "id", pa.array(ids)), source)
    task = {"kind": "translate", "target_language_column": "target_language"}
    result = run_job(manifest("translate-baseline", task, source, tmp_path / "out",
                              evaluate={"reference_column": "reference"}))
    assert result.ok, result.error
    table = OutputLocation.at(str(tmp_path / "out")).read_snapshot()
    texts = dict(zip(*pq.read_table(source, columns=["id", "text"]).to_pydict().values()))
    assert all(r["translation"] == texts[r["id"]] for r in table.to_pylist())
    metrics = result.summary["metrics"]
    assert metrics["scored"] == 100 and 10 < metrics["chrf"] < 60 and metrics["bleu"] < 30


def test_baseline_classify_job_beats_chance(classify_job):
    result, held_out, tmp = classify_job
    assert result.ok, result.error
    out = tmp / "out"
    assert {p.name for p in (out / "_baseline").iterdir()} == {"config.json", "vocabulary.json", "weights.npz"}
    metrics = json.loads((out / "_metrics.json").read_text())
    assert metrics["scored"] == held_out.num_rows == 150
    assert metrics["accuracy"] > 0.5, metrics  # 10 labels: chance is 0.1
    assert set(metrics["per_label"]) == set(held_out.column("label").to_pylist())
    assert result.summary["metrics"]["accuracy"] == metrics["accuracy"]


def test_eval_command_on_a_finished_output(classify_job):
    result, _, tmp = classify_job
    out = tmp / "out"
    (out / "_metrics.json").unlink()
    done = cli("eval", str(out), "--references", str(tmp / "gold.parquet"), "--column", "gold",
               "--metrics", "accuracy", "macro_f1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy" in done.stdout and "macro_f1" in done.stdout
    metrics = json.loads((out / "_metrics.json").read_text())
    assert metrics["task"] == "classify"  # from _manifest.json
    assert metrics["accuracy"] == pytest.approx(result.summary["metrics"]["accuracy"])
    assert "per_label" not in metrics

    bad = cli("eval", str(out), "--references", str(tmp / "gold.parquet"), "--column", "nope", "--no-write")
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_report_command_and_chromium_render(summarize_job, tmp_path):
    _, sample, out = summarize_job
    done = cli("report", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    page = (out / "report.html").read_text()
    for heading in ("Summary", "Metrics", "Output length", "Latency", "Throughput", "Errors"):
        assert f"<h2>{heading}</h2>" in page
    assert "rougeL" in page and "text is null" in page
    assert "<th>input</th>" in page  # inputs joined from the input file named in _manifest.json
    first_text = sample.column("text")[0].as_py()
    assert html.escape(first_text.split("\n")[0][:40]) in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page

    require_chromium()
    screenshot = tmp_path / "report.png"
    rendered = subprocess.run([
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,2000",
        (out / "report.html").as_uri(),
    ], capture_output=True, text=True, timeout=120, check=False)
    assert rendered.returncode == 0 and screenshot.exists(), rendered.stderr[-2000:]
    from matplotlib import image as matplotlib_image

    pixels = matplotlib_image.imread(screenshot)[:, :, :3]
    assert (pixels < 0.95).any(axis=2).mean() > 0.03
    plot_blue = (np.abs(pixels - np.array([31, 119, 180]) / 255) < 0.03).all(axis=2).sum()
    assert plot_blue > 2_000, plot_blue
