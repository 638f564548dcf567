"""A self-contained HTML report of a job's output rows: metrics, plots, errors, a sample."""

from llm_core.report.render import ReportColumns, render_report

__all__ = ["ReportColumns", "render_report"]
