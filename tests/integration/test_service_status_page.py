"""The status page (GET /) rendered by headless Chromium over real HTTP, with a screenshot."""

from __future__ import annotations

import shutil
import subprocess

from jobs.service.store.job_store import NewJob, Store
from tests.support.chromium import CHROMIUM
from tests.support.paths import REPO
from tests.support.service_fixtures import Service

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _populate(store: Store) -> dict[str, str]:
    ids = {}
    for name, state in [("nightly-summaries", "running"), ("translate-fr", "succeeded"),
                        ("classify-bugs", "failed"), ("waiting-job", "queued")]:
        job, _ = store.submit(NewJob(name=name, owner="alice", manifest={"name": name}, request_hash=name))
        ids[state] = job["id"]
        if state == "queued":
            continue
        store.claim(job["id"], "s1", lease_s=3600)
        store.set_progress(job["id"], "s1", {"shards_total": 10, "shards_done": 4 if state == "running" else 10,
                                             "rows": 1234, "tokens_per_s": 87.5}, event=True)
        if state != "running":
            store.finish(job["id"], "s1", state, message=state,
                         error="shard 7: model ran out of memory <boom>" if state == "failed" else None)
    return ids


def test_status_page_in_headless_chromium(tmp_path, chromium):
    db = f"sqlite:///{tmp_path}/jobs.db"
    store = Store(db)
    ids = _populate(store)
    svc = Service(db, None, runner=None, extra=["--no-scheduler"])
    try:
        shot = tmp_path / "status_page.png"
        common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,600"]
        dom = subprocess.run([*common, "--dump-dom", svc.url + "/"], capture_output=True, text=True, timeout=120)
        subprocess.run([*common, f"--screenshot={shot}", svc.url + "/"], capture_output=True, timeout=120, check=True)
    finally:
        svc.stop()
        store.close()
    html = dom.stdout
    for state, job_id in ids.items():
        assert job_id in html and f"class=\"state {state}\"" in html
    assert "4/10" in html and "87.5" in html and "1,234" in html
    assert "&lt;boom&gt;" in html and "<boom>" not in html  # errors are escaped
    assert "running: <b>1</b>" in html
    assert shot.exists() and shot.stat().st_size > 5000 and shot.read_bytes()[:4] == b"\x89PNG"
    keep = REPO / "out" / "test-artifacts" / "status_page.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep)
    print(f"status page screenshot: {keep}")
