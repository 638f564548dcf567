"""The training summary table: figures rounded, eval as names and values, resumes listed."""

from __future__ import annotations

import io

from jobs.lifecycle import JobState
from jobs.run.display import print_summary
from jobs.run.results import JobResult


def table(summary: dict) -> str:
    out = io.StringIO()
    print_summary(JobResult(JobState.SUCCEEDED, "/out/model", summary=summary), file=out)
    return out.getvalue()


def test_a_fresh_run_reads_as_one_and_figures_are_rounded():
    text = table({"steps": 60, "first_loss": 7.555538082122803, "last_loss": 6.401264953613281,
                  "eval": {"eval_loss": 6.332552486917247}, "resumed_from": [], "wall_s": 28.3})
    assert "7.5555 -> 6.4013" in text and "eval_loss 6.3326" in text
    assert "- (a fresh run)" in text and "[]" not in text


def test_resumes_are_listed_in_order():
    text = table({"steps": 6, "first_loss": 1.0, "last_loss": 0.5, "eval": None, "resumed_from": [2, 4]})
    assert "2, 4" in text
