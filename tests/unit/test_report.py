"""The HTML report: content, escaping, self-containedness, and a real render in Chromium."""

from __future__ import annotations

import base64
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib import image as matplotlib_image

from llm_core.baselines import TfidfClassifier, lead_sentence
from llm_core.metrics.compute import compute_metrics
from llm_core.report import ReportColumns, render_report
from tests.support.chromium import CHROMIUM
from tests.support.paths import TEST_DATA as DATA

HOSTILE_OUTPUT = "<script>alert('x')</script> & <b>bold</b>"


def summarize_output_rows() -> tuple[pa.Table, list[str], list[str | None]]:
    """Output rows shaped like a summarize job's part files, built from the lead-sentence
    baseline on real descriptions, with a few error rows and one hostile output."""
    source = pq.read_table(DATA / "summarize_sample.parquet")
    texts = source.column("text").to_pylist()
    summaries: list[str | None] = [lead_sentence(text) for text in texts]
    errors: list[str | None] = [None] * len(texts)
    for i in (5, 17, 42):
        summaries[i] = None
        errors[i] = "prompt too long: 4100 tokens > 4096"
    summaries[0] = HOSTILE_OUTPUT  # row 0 is always in the evenly spaced sample
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    completion_tokens = [None if s is None else len(s.split()) + 1 for s in summaries]
    rows = pa.table(
        {
            "package": source.column("id"),
            "summary": summaries,
            "error": errors,
            "finish_reason": [None if s is None else ("length" if i % 9 == 0 else "stop") for i, s in enumerate(summaries)],
            "prompt_tokens": [len(text.split()) for text in texts],
            "completion_tokens": completion_tokens,
            "latency_s": [0.2 + (i % 13) * 0.05 for i in range(len(texts))],
            "finished_at": [start + timedelta(seconds=i * 0.5) for i in range(len(texts))],
        }
    )
    return rows, texts, source.column("reference").to_pylist()


def render_summarize_report() -> str:
    rows, texts, references = summarize_output_rows()
    metrics = compute_metrics("summarize", rows.column("summary").to_pylist(), references)
    summary = {"state": "succeeded", "rows": rows.num_rows, "timings": {"wall_s": 49.5}}
    return render_report(
        rows, metrics, summary, columns=ReportColumns(id="package", output="summary"), inputs=texts
    )


def test_report_has_every_section_and_only_embedded_images() -> None:
    page = render_summarize_report()
    for heading in ("Summary", "Metrics", "Output length", "Latency", "Throughput", "Errors", "Sample of up to 20 rows"):
        assert f"<h2>{heading}</h2>" in page
    assert "rougeL" in page and "timings.wall_s" in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3  # length, latency, throughput
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    # Self-contained: no stylesheet, script or font fetched from anywhere.
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert not re.search(r'(?:src|href)="(?!data:)', page)


def test_report_escapes_outputs_and_lists_errors() -> None:
    page = render_summarize_report()
    assert HOSTILE_OUTPUT not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "prompt too long: 4100 tokens &gt; 4096" in page
    assert "First 3 of 3 error rows" in page
    sample = page.split("<h2>Sample of up to 20 rows</h2>", 1)[1]
    assert sample.count("<tr>") == 1 + 20  # header + sampled rows


def test_report_for_classification_without_optional_columns(tmp_path: Path) -> None:
    source = pq.read_table(DATA / "classify_sample.parquet")
    texts = source.column("text").to_pylist()
    labels = source.column("label").to_pylist()
    predictions = TfidfClassifier().fit(texts[::2], labels[::2]).predict(texts)
    rows = pa.table({"id": source.column("id"), "label": predictions, "error": [None] * len(texts)})
    metrics = compute_metrics("classify", predictions, labels)
    page = render_report(rows, metrics, None, columns=ReportColumns(output="label"))

    assert "<h2>Latency</h2>" not in page and "<h2>Throughput</h2>" not in page
    assert "No &#x27;completion_tokens&#x27; column." in page
    assert "No error rows." in page
    assert 'class="confusion"' in page and "<h3>Per label</h3>" in page
    # Without inputs the sample shows outputs only.
    assert "<th>input</th>" not in page


def test_report_takes_inputs_from_a_text_column_and_checks_arguments() -> None:
    rows = pa.table({"id": ["a", "b"], "text": ["first input", "second input"], "output": ["x", None]})
    page = render_report(rows, None, None)
    assert "first input" in page and "No metrics given." in page
    with pytest.raises(ValueError, match="output column 'summary'"):
        render_report(rows, None, None, columns=ReportColumns(output="summary"))
    with pytest.raises(ValueError, match="1 inputs for 2 rows"):
        render_report(rows, None, None, inputs=["only one"])


def test_report_renders_in_headless_chromium(tmp_path: Path, chromium: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(render_summarize_report(), encoding="utf-8")
    screenshot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,2000",
        report.as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert screenshot.exists(), completed.stderr[-2000:]
    print(f"report screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    # Size alone proves little (a blank 1200x2000 page is about 11 KB), so look at the pixels:
    # the page must be substantially non-white and show the plots' blue (#1f77b4).
    pixels = matplotlib_image.imread(screenshot)[:, :, :3]
    non_white = (pixels < 0.95).any(axis=2).mean()
    plot_blue = (np.abs(pixels - np.array([31, 119, 180]) / 255) < 0.03).all(axis=2).sum()
    assert non_white > 0.03, f"only {non_white:.1%} of the screenshot is not white"
    assert plot_blue > 2_000, f"only {plot_blue} pixels of plot blue"
