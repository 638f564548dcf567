"""Two tenants on the real service (uvicorn subprocess, real HTTP, SQLite): every location a
manifest names is checked against the submitting token's scope, and a wrong `model:` is refused
at submit with one plain line. Token A may use <tmp>/tenant-a/ and s3://team-a/; token B the same
for tenant-b."""

from __future__ import annotations

import httpx
import pytest

from cluster.storage import s3
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from tests.support.service_fixtures import Service, echo_manifest, write_inputs

pytestmark = [pytest.mark.integration]


@pytest.fixture
def tenants(tmp_path, ray_cluster, services):
    db = f"sqlite:///{tmp_path}/jobs.db"
    store = Store(db)
    heads = {}
    for t in ("a", "b"):
        (tmp_path / f"tenant-{t}").mkdir()
        prefixes = [str(tmp_path / f"tenant-{t}"), f"s3://team-{t}/"]
        secret = create_token(store, f"tenant-{t}", input_prefixes=prefixes, output_prefixes=prefixes)
        heads[t] = {"Authorization": f"Bearer {secret}"}
    svc = Service(db, ray_cluster.address)
    services.append(svc)
    yield {"url": svc.url, "heads": heads, "tmp": tmp_path, "store": store}
    store.close()


def submit(env, who: str, manifest: dict) -> httpx.Response:
    return httpx.post(env["url"] + "/v1/jobs", json={"manifest": manifest}, headers=env["heads"][who], timeout=30)


def fields(r: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in r.json()["error"]["fields"]:
        out.setdefault(f["path"], []).append(f["message"])
    return out


def training(**over) -> dict:
    m = {"kind": "training", "name": "ft", "task": "finetune", "model": {"uri": "builtin:smollm2-135m-instruct"},
         "data": {"train": "s3://team-a/train"}, "training": {"max_steps": 2},
         "checkpoint": {"uri": "s3://team-a/ckpt"}, "output": {"uri": "s3://team-a/out"}}
    return {**m, **over}


def test_training_reaching_into_team_b_is_refused_naming_every_field(tenants):
    b_ckpt = tenants["tmp"] / "tenant-b" / "ckpt"
    b_ckpt.mkdir()
    (b_ckpt / "step-1").write_text("tenant-b's checkpoint")
    r = submit(tenants, "a", training(
        model={"uri": "s3://team-b/base-model"}, data={"train": "s3://team-b/train", "eval": "s3://team-b/eval"},
        checkpoint={"uri": str(b_ckpt)}, output={"uri": "s3://team-b/ckpt", "mode": "overwrite"}))
    assert r.status_code == 403, r.text
    f = fields(r)
    assert set(f) == {"manifest.model.uri", "manifest.data.train", "manifest.data.eval", "manifest.checkpoint.uri",
                      "manifest.output.uri"}
    assert f["manifest.output.uri"] == [
        "token 'tenant-a' may not write s3://team-b/ckpt: outside its allowed write prefixes"]
    assert f["manifest.checkpoint.uri"][1] == (
        f"token 'tenant-a' may not write {b_ckpt}: outside its allowed write prefixes")
    assert (b_ckpt / "step-1").read_text() == "tenant-b's checkpoint"  # nothing ran
    assert tenants["store"].list_jobs() == []


def test_models_references_baseline_data_and_path_tricks_are_refused(tenants):
    tmp = tenants["tmp"]
    a_in, a_out = tmp / "tenant-a" / "in", str(tmp / "tenant-a" / "out" / "{run_id}")
    write_inputs(a_in, files=1)
    base = echo_manifest("sum", a_in, a_out)
    cases = {
        "manifest.model": {**base, "model": "s3://team-b/model"},
        "manifest.evaluate.references_uri": {**base, "task": "summarize",
                                             "evaluate": {"reference_column": "summary",
                                                          "references_uri": str(tmp / "tenant-b" / "refs.parquet")}},
        "manifest.task.train_uri": {**base, "engine": "baseline",
                                    "task": {"kind": "classify", "labels": ["x", "y"], "train_uri": "s3://team-b/t"}},
    }
    for uri in (str(tmp / "tenant-a" / ".." / "tenant-b" / "x"), str(tmp / "tenant-a-evil" / "x"),
                "s3://team-a-evil/x", "s3://team-a/../team-b/x"):
        cases[f"manifest.input.uri {uri}"] = {**base, "input": {"uri": uri}}
    for expected, manifest in cases.items():
        r = submit(tenants, "a", manifest)
        assert r.status_code == 403, (expected, r.text)
        assert list(fields(r)) == [expected.split()[0]], r.text
    assert tenants["store"].list_jobs() == []
    # the same shapes inside one's own prefixes are accepted
    assert submit(tenants, "a", base).status_code == 201
    b_in = tmp / "tenant-b" / "in"
    write_inputs(b_in, files=1)
    assert submit(tenants, "b", echo_manifest("b", b_in, str(tmp / "tenant-b" / "out" / "{run_id}"))).status_code == 201


def test_a_wrong_model_is_refused_at_submit_with_one_plain_line(tenants):
    tmp = tenants["tmp"]
    a_in = tmp / "tenant-a" / "in"
    write_inputs(a_in, files=1)
    base = echo_manifest("m", a_in, str(tmp / "tenant-a" / "out" / "{run_id}"))
    not_a_model = tmp / "tenant-a" / "notes"
    not_a_model.mkdir()
    expected = {
        "builtin:no-such-model": "unknown built-in model 'no-such-model'; known: smollm2-135m-instruct",
        str(not_a_model): f"{not_a_model} is not a model folder (no config.json)",
        str(tmp / "tenant-a" / "missing"): f"{tmp / 'tenant-a' / 'missing'} does not exist",
    }
    for model, message in expected.items():
        r = submit(tenants, "a", {**base, "model": model})
        assert r.status_code == 422, r.text
        (msg,) = fields(r)["manifest.model"]
        assert msg.startswith(message) and "\x1b" not in msg and "127.0.0.1" not in msg and "pid" not in msg
    # outside the scope it is never looked at: the refusal is the scope's
    r = submit(tenants, "a", {**base, "model": "/etc"})
    assert r.status_code == 403 and "may not read /etc" in r.text


@pytest.mark.s3
def test_an_s3_model_prefix_without_config_json_is_refused(s3_bucket, tmp_path, ray_cluster, services):
    team = f"s3://{s3_bucket}"
    db = f"sqlite:///{tmp_path}/jobs.db"
    secret = create_token(Store(db), "tenant-m", input_prefixes=[str(tmp_path), f"{team}/"],
                          output_prefixes=[str(tmp_path)])
    svc = Service(db, ray_cluster.address)  # inherits the loopback S3 settings moto_server set
    services.append(svc)
    write_inputs(tmp_path / "in", files=1)
    base = echo_manifest("s3m", tmp_path / "in", str(tmp_path / "out" / "{run_id}"))

    def model_error(uri: str) -> httpx.Response:
        return httpx.post(svc.url + "/v1/jobs", json={"manifest": {**base, "model": uri}},
                          headers={"Authorization": f"Bearer {secret}"}, timeout=60)

    r = model_error(f"{team}/models/none")
    assert r.status_code == 422 and f"{team}/models/none does not exist" in r.text
    s3.client().put_object(Bucket=s3_bucket, Key="models/w/model.safetensors", Body=b"0")
    r = model_error(f"{team}/models/w")
    assert r.status_code == 422
    assert fields(r)["manifest.model"] == [f"{team}/models/w is not a model folder (no config.json)"]
    s3.client().put_object(Bucket=s3_bucket, Key="models/w/config.json", Body=b"{}")
    assert model_error(f"{team}/models/w").status_code == 201
