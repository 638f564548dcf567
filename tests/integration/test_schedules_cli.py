"""`llmbatch schedules list | show | delete` against the real service, scoped per token, and the
skipped runs of a schedule visible to its owner. Run on SQLite and on PostgreSQL through a plain
`postgresql://` URL (the driver SQLAlchemy picks for it is a dependency)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import update

from jobs.cli.client import Client
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from jobs.service.store.tables import schedules as schedules_table
from jobs.service.store.tables import utcnow
from tests.support.service_fixtures import Service, echo_manifest, run_cli, write_inputs
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]


def make_due(store: Store, schedule_id: str, ago_s: float) -> None:
    """Move a schedule's next period into the past (as if its time had come ago_s seconds ago)."""
    with store.engine.begin() as conn:
        conn.execute(update(schedules_table).where(schedules_table.c.id == schedule_id)
                     .values(next_run_at=utcnow() - timedelta(seconds=ago_s)))


def cli(svc: Service, secret: str, *args: str):
    return run_cli(*args, "--server", svc.url, env={"LLMBATCH_TOKEN": secret})


def test_schedules_cli_scoped_with_skipped_runs(ray_cluster, db_as_written, tmp_path, services):
    db = db_as_written
    store = Store(db)  # the plain postgresql:// URL works in-process too
    area = {who: tmp_path / who for who in ("alice", "bob")}
    tok = {who: create_token(store, who, input_prefixes=[str(p)], output_prefixes=[str(p)])
           for who, p in area.items()}
    tok["root"] = create_token(store, "root", input_prefixes=["*"], output_prefixes=["*"], admin=True)
    assert run_cli("tokens", "create", "carol", "--input-prefix", str(tmp_path), "--output-prefix",
                   str(tmp_path), "--db", db).returncode == 0
    svc = Service(db, ray_cluster.address)
    services.append(svc)

    ids = {}
    # 3 shards of 5 s each: alice's first run still runs when her next period comes, even when a
    # loaded machine makes the service's tick late (2 s shards once finished first).
    for who, on_missed in (("alice", "run_once"), ("bob", "skip")):
        write_inputs(area[who] / "in", files=3)
        manifest = tmp_path / f"{who}.yaml"
        manifest.write_text(yaml.safe_dump(echo_manifest(f"{who}-nightly", area[who] / "in",
                                                         str(area[who] / "out" / "{run_id}"), shard_delay_s=5.0)))
        out = cli(svc, tok[who], "submit", str(manifest), "--schedule", "0 3 * * *", "--on-missed", on_missed)
        assert out.returncode == 0, out.stderr
        ids[who] = out.stdout.split()[-1]

    # Scoped: each tenant lists only its own; the admin lists both.
    alice_list = cli(svc, tok["alice"], "schedules", "list")
    assert alice_list.returncode == 0, alice_list.stderr
    assert ids["alice"] in alice_list.stdout and ids["bob"] not in alice_list.stdout
    assert [s["owner"] for s in Client(svc.url, tok["alice"]).schedules(owner="bob")] == ["alice"]
    root_list = cli(svc, tok["root"], "schedules", "list").stdout
    assert ids["alice"] in root_list and ids["bob"] in root_list
    # Another tenant's schedule is not found, as one that does not exist.
    for action in ("show", "delete"):
        other = cli(svc, tok["bob"], "schedules", action, ids["alice"])
        assert other.returncode == 1 and "HTTP 404" in other.stderr and "Traceback" not in other.stderr
    assert cli(svc, tok["bob"], "schedules", "show", "sch-nonexistent").returncode == 1

    # alice's first run starts on time; the next period comes while it still runs: skipped, recorded.
    make_due(store, ids["alice"], ago_s=2)
    alice = Client(svc.url, tok["alice"])
    first = wait_for(lambda: [j for j in alice.list() if j["schedule_id"] == ids["alice"]
                              and j["state"] == "running"])[0]
    make_due(store, ids["alice"], ago_s=2)
    skipped = wait_for(lambda: alice.schedule(ids["alice"])["skipped"], timeout=30)
    assert skipped[0]["reason"] == "overlap" and skipped[0]["job_id"] == first["id"]
    assert len([j for j in alice.list() if j["schedule_id"] == ids["alice"]]) == 1  # no second run
    shown = cli(svc, tok["alice"], "schedules", "show", ids["alice"])
    assert shown.returncode == 0 and "overlap" in shown.stdout and f"previous run {first['id']}" in shown.stdout
    logs = cli(svc, tok["alice"], "logs", first["id"]).stdout
    assert "schedule " in logs and "skipped" in logs  # on the running job's own event log too

    # bob's period was missed while "the service was down", with on_missed: skip: no run, recorded.
    make_due(store, ids["bob"], ago_s=600)
    bob = Client(svc.url, tok["bob"])
    missed = wait_for(lambda: bob.schedule(ids["bob"])["skipped"], timeout=30)
    assert missed[0]["reason"] == "missed" and missed[0]["job_id"] is None
    assert "on_missed: skip" in cli(svc, tok["bob"], "schedules", "show", ids["bob"]).stdout
    assert not [j for j in bob.list() if j["schedule_id"] == ids["bob"]]
    assert alice.schedule(ids["alice"])["skipped"] == skipped  # bob's skip is not alice's

    # Deleting: the owner (or an admin) stops it; a later due period starts nothing.
    stopped = cli(svc, tok["alice"], "schedules", "delete", ids["alice"])
    assert stopped.returncode == 0 and stopped.stdout.split() == [ids["alice"], "stopped"]
    assert cli(svc, tok["root"], "schedules", "delete", ids["bob"]).stdout.split() == [ids["bob"], "stopped"]
    assert alice.wait(first["id"], timeout_s=120)["state"] == "succeeded"
    make_due(store, ids["alice"], ago_s=2)
    time.sleep(2)
    assert len([j for j in alice.list() if j["schedule_id"] == ids["alice"]]) == 1
