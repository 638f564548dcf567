"""benchmarks/quality_agreement.py: label agreement and text overlap of two quality.py runs' outputs."""

from __future__ import annotations

import json

from benchmarks.quality_agreement import compare


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_agreement_counts_rows_both_runs_have(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(first, [{"task": "classify", "system": "zero-shot", "row": i, "output": label}
                  for i, label in enumerate(["net", "doc", "libs", "perl"])]
          + [{"task": "summarize", "system": "zero-shot", "row": 0, "output": "a library for parsing XML"}])
    write(second, [{"task": "classify", "system": "zero-shot", "row": i, "output": label}
                   for i, label in enumerate(["net", "utils", "libs"])]  # row 3 missing here
          + [{"task": "summarize", "system": "zero-shot", "row": 0, "output": "a library for parsing XML"},
             {"task": "summarize", "system": "few-shot", "row": 0, "output": "only in one run"}])
    table = {(r["task"], r["system"]): r for r in compare(first, second)}
    assert set(table) == {("classify", "zero-shot"), ("summarize", "zero-shot")}
    assert table["classify", "zero-shot"]["rows"] == 3
    assert abs(table["classify", "zero-shot"]["same"] - 2 / 3) < 1e-9 and table["classify", "zero-shot"]["rougeL"] is None
    assert table["summarize", "zero-shot"]["same"] == 1.0 and table["summarize", "zero-shot"]["rougeL"] > 0.99
