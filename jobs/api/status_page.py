"""GET /: a small read-only status page, scoped like the API.

With a token (`Authorization: Bearer ...`, e.g. from a browser extension or a proxy that adds it)
it lists the caller's jobs, an admin's page every job. Without one it shows only the counts by
state over all jobs: no ids, names, owners or errors. Server-rendered and refreshed every few
seconds, so it needs no JavaScript and no build step.
"""

from __future__ import annotations

from html import escape

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from jobs.api.deps import optional_principal
from jobs.api.job_view import duration_text, figures
from jobs.lifecycle import JobState, shards_finished
from jobs.service.auth import Principal

router = APIRouter()

STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 12px} table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 8px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f0f0f0} .counts span{display:inline-block;margin-right:14px}
.state{font-weight:600;padding:1px 6px;border-radius:4px}
.queued{background:#eef} .running{background:#dfd} .cancelling{background:#ffd}
.succeeded{background:#cfc} .partial{background:#fd8} .failed{background:#fcc} .cancelled{background:#eee}
.bar{width:120px;height:10px;background:#e6e6e6;border-radius:5px;display:inline-block}
.bar i{display:block;height:10px;background:#4a8;border-radius:5px}
.err{color:#a00;max-width:360px;overflow-wrap:anywhere} td code,.prog{white-space:nowrap}
"""


def _num(v, fmt="{:,.0f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) else ""


def _rows(f: dict) -> str:
    """rows done/total, and the error rows, of the job's figures."""
    if f["rows"] is None and f["rows_total"] is None:
        return ""
    text = _num(f["rows"] or 0) + (f" / {_num(f['rows_total'])}" if f["rows_total"] is not None else "")
    return text + (f" <span class='err'>({_num(f['error_rows'])} errors)</span>" if f["error_rows"] else "")


def _row(job: dict) -> str:
    p, f = job.get("progress") or {}, figures(job)
    total, done = p.get("shards_total") or 0, shards_finished(p)
    if job["state"] in (JobState.SUCCEEDED, JobState.PARTIAL) and not total:
        pct = 100.0
    else:
        pct = 100.0 * done / total if total else 0.0
    # A partial job's reasons say what is missing; any other job's last error.
    err = ("; ".join(f["reasons"]) or job.get("error") or "")[:300]
    eta = duration_text(f["eta_s"]) if f["eta_s"] is not None else ""
    return (
        f"<tr><td><code>{escape(job['id'])}</code></td><td>{escape(job['name'])}</td>"
        f"<td>{escape(job['owner'])}</td><td>{escape(job['queue'])}</td>"
        f"<td><span class='state {escape(job['state'])}'>{escape(job['state'])}</span></td>"
        f"<td>{job['attempts']}</td>"
        f"<td class='prog'><span class='bar'><i style='width:{pct:.0f}%'></i></span> {done}/{total}</td>"
        f"<td class='prog'>{_rows(f)}</td><td>{_num(p.get('tokens_per_s'), '{:,.1f}')}</td><td>{eta}</td>"
        f"<td class='err'>{escape(err)}</td>"
        f"<td>{job['created_at']:%Y-%m-%d %H:%M:%S}</td></tr>"
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def status_page(request: Request, who: Annotated[Principal | None, Depends(optional_principal)],
                limit: int = 200) -> HTMLResponse:
    store = request.app.state.store
    owner = None if who is None or who.admin else who.name
    counts = store.count_by_state(owner)
    rows = [] if who is None else store.list_jobs(owner=owner, limit=max(1, min(limit, 1000)))
    count_html = "".join(f"<span>{s}: <b>{counts.get(s, 0)}</b></span>" for s in JobState)
    running_tps = sum((j.get("progress") or {}).get("tokens_per_s") or 0 for j in rows
                      if j["state"] == JobState.RUNNING)
    if who is not None:
        count_html += f"<span>throughput of running jobs: <b>{running_tps:,.1f}</b> tokens/s</span>"
    empty = "no jobs yet" if who is not None else "send a token (Authorization: Bearer ...) to see your jobs"
    body = "".join(_row(j) for j in rows) or f"<tr><td colspan=12>{empty}</td></tr>"
    title = "all jobs" if who is None or who.admin else f"jobs of {escape(who.name)}"
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='5'>"
        f"<title>llmbatch status</title><style>{STYLE}</style></head><body>"
        f"<h1>llmbatch: {title}</h1><p class='counts'>{count_html}</p>"
        "<table><thead><tr><th>id</th><th>name</th><th>owner</th><th>queue</th><th>state</th>"
        "<th>attempts</th><th>progress (shards)</th><th>rows (done / total)</th><th>tokens/s</th><th>ETA</th>"
        "<th>last error or why partial</th>"
        f"<th>created (UTC)</th></tr></thead><tbody>{body}</tbody></table></body></html>"
    )
    return HTMLResponse(html)
