"""Static checks of the Kubernetes manifests in infra/ as files: YAML, kustomize layout, and
validation against the vendored Kubernetes and KubeRay schemas (workloads: test_infra_k8s_workloads)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.infra_support import (
    REPO,
    KUSTOMIZATIONS,
    IMAGES,
    yaml_files,
    load_all,
    kustomization,
    objects,
    one,
    pod_specs,
    schema_errors,
)

# ---- parsing and layout ----------------------------------------------------------------------


def test_every_yaml_file_parses():
    files = yaml_files()
    assert len(files) >= 10, files
    for path in files:
        docs = load_all(path)
        assert docs, f"{path.relative_to(REPO)} is empty"


def test_kustomizations_list_existing_files_and_nothing_is_orphaned():
    for folder in KUSTOMIZATIONS:
        k = kustomization(folder)
        assert k["kind"] == "Kustomization"
        listed = set()
        for entry in k.get("resources", []):
            path = (folder / entry).resolve()
            assert path.exists(), f"{folder.name}: resource {entry} does not exist"
            if path.is_dir():
                assert (path / "kustomization.yaml").exists(), f"{entry} is not a kustomization"
            listed.add(path)
        for patch in k.get("patches", []):
            path = (folder / patch["path"]).resolve()
            assert path.exists(), f"{folder.name}: patch {patch['path']} does not exist"
            listed.add(path)
        # A YAML file beside a kustomization that it does not list would silently not deploy.
        for path in folder.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.resolve() in listed, f"{path.relative_to(REPO)} is not in kustomization"


# ---- schema validation -------------------------------------------------------------------------


def test_every_kubernetes_object_validates(registry):
    objs = objects()
    kinds = {o["kind"] for _, o in objs}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "RayCluster", "RayJob"} <= kinds
    problems = [
        f"{path.relative_to(REPO)} {o['kind']}/{o['metadata']['name']}: {err}"
        for path, o in objs
        for err in schema_errors(o, registry)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "mutate, expect",
    [
        # A misspelt KubeRay field: pruned by the API server unless the client asks for strict
        # field validation, so the setting silently does nothing.
        (lambda rc: rc["spec"]["workerGroupSpecs"][0].update(maxReplica=3), "maxReplica"),
        # rayStartParams are strings in the CRD; YAML integers are refused at apply time.
        (lambda rc: rc["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "num-cpus"),
        (lambda rc: rc["spec"]["workerGroupSpecs"][1].pop("template"), "template"),
        (lambda rc: rc["spec"].update(rayVersion="latest"), "rayVersion"),
        # A typo inside the pod template is caught by the Kubernetes schema it references.
        (
            lambda rc: rc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(
                resource={}
            ),
            "resource",
        ),
    ],
)
def test_schemas_reject_broken_objects(registry, mutate, expect):
    rc = copy.deepcopy(one("RayCluster"))
    assert not schema_errors(rc, registry)
    mutate(rc)
    errors = schema_errors(rc, registry)
    assert errors and any(expect in e for e in errors), errors


def test_kubernetes_schema_rejects_unknown_deployment_field(registry):
    dep = copy.deepcopy(one("Deployment", "llmbatch-api"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert any("readinesProbe" in e for e in schema_errors(dep, registry))


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(kustomize_command() is None, reason="neither kustomize nor kubectl installed")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_kustomize_renders_valid_objects(folder, registry):
    out = subprocess.run(
        [*kustomize_command(), str(folder)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in rendered:
        assert not schema_errors(obj, registry), (obj["kind"], schema_errors(obj, registry))
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "llmbatch", obj["metadata"]
    images = [
        c["image"]
        for obj in rendered
        for _, pod in pod_specs(obj)
        for c in pod["containers"]
    ]
    assert images
    if folder.name != "base":
        # Deployable output: every logical image name was mapped to a registry and tag.
        assert not set(images) & set(IMAGES), images
        assert all(re.search(r"/llmbatch:\S+-(cpu|cuda)$", i) for i in images), images
    if folder.name == "production":
        rc = next(o for o in rendered if o["kind"] == "RayCluster")
        groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
        # The JSON patch addresses the group by index; make sure it hit the GPU group.
        assert "nodeSelector" in groups["gpu"]["template"]["spec"]
        assert "nodeSelector" not in groups["cpu"]["template"]["spec"]
        sa = next(o for o in rendered if o["kind"] == "ServiceAccount")
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("llmbatch-prod")
