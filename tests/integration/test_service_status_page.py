"""The status page (GET /) over real HTTP: headless Chromium without a token sees only counts;
the page an admin's token gets (httpx, Authorization header) is rendered by Chromium to a screenshot:
every state apart (partial too, with why), rows done / total and the ETA of a running job."""

from __future__ import annotations

import shutil
import subprocess

import httpx

from jobs.service.auth import create_token
from jobs.service.store.job_store import NewJob, Store
from tests.support.chromium import CHROMIUM
from tests.support.paths import REPO
from tests.support.service_fixtures import Service

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _populate(store: Store) -> dict[str, str]:
    ids = {}
    for name, state in [("nightly-summaries", "running"), ("translate-fr", "succeeded"),
                        ("classify-bugs", "failed"), ("waiting-job", "queued"), ("label-tickets", "partial")]:
        job, _ = store.submit(NewJob(name=name, owner="alice", manifest={"name": name}, request_hash=name))
        ids[state] = job["id"]
        if state == "queued":
            continue
        store.claim(job["id"], "s1", lease_s=3600)
        store.set_progress(job["id"], "s1", {"shards_total": 10, "shards_done": 4 if state == "running" else 10,
                                             "rows": 1234, "rows_total": 3000, "error_rows": 0, "eta_s": 3725,
                                             "tokens_per_s": 87.5}, event=True)
        if state == "partial":
            store.finish(job["id"], "s1", state, message=state, error="2 of 10 shards skipped",
                         summary={"rows": 2400, "rows_total": 3000, "error_rows": 12,
                                  "reasons": ["2 of 10 shards skipped (on_shard_failure: skip)"]})
        elif state != "running":
            store.finish(job["id"], "s1", state, message=state,
                         error="shard 7: model ran out of memory <boom>" if state == "failed" else None)
    return ids


def test_status_page_in_headless_chromium(tmp_path, chromium):
    db = f"sqlite:///{tmp_path}/jobs.db"
    store = Store(db)
    ids = _populate(store)
    admin = create_token(store, "ops", input_prefixes=["*"], output_prefixes=["*"], admin=True)
    svc = Service(db, None, runner=None, extra=["--no-scheduler"])
    try:
        shot = tmp_path / "status_page.png"
        common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,600"]
        anonymous = subprocess.run([*common, "--dump-dom", svc.url + "/"], capture_output=True, text=True,
                                   timeout=120).stdout
        page = httpx.get(svc.url + "/", headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        (tmp_path / "status_page.html").write_text(page.text)
        local = (tmp_path / "status_page.html").as_uri()
        html = subprocess.run([*common, "--dump-dom", local], capture_output=True, text=True, timeout=120).stdout
        subprocess.run([*common, f"--screenshot={shot}", local], capture_output=True, timeout=120, check=True)
    finally:
        svc.stop()
        store.close()
    assert "running: <b>1</b>" in anonymous and "send a token" in anonymous
    assert not any(job_id in anonymous for job_id in ids.values()) and "alice" not in anonymous
    assert "boom" not in anonymous
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    for state, job_id in ids.items():
        assert job_id in html and f"class=\"state {state}\"" in html
    assert "4/10" in html and "87.5" in html and "1,234 / 3,000" in html and "1h02m" in html  # ETA of the running job
    assert "2,400 / 3,000" in html and "12 errors" in html and "2 of 10 shards skipped (on_shard_failure" in html
    assert "&lt;boom&gt;" in html and "<boom>" not in html  # errors are escaped
    assert "alice" in html  # an admin sees owners
    assert "running: <b>1</b>" in html
    assert shot.exists() and shot.stat().st_size > 5000 and shot.read_bytes()[:4] == b"\x89PNG"
    keep = REPO / "out" / "test-artifacts" / "status_page.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep)
    print(f"status page screenshot: {keep}")
