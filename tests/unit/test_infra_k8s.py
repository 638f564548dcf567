"""Static checks of the Kubernetes side of infra/: YAML, kustomize layout, schema validation,
what Ray's autoscaler reads from the RayCluster, the API service and the RayJob."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess

import pytest
import yaml


from tests.support.infra_support import (
    REPO,
    DOCKERFILE,
    KUSTOMIZATIONS,
    IMAGES,
    GPU,
    yaml_files,
    load_all,
    kustomization,
    objects,
    find,
    one,
    pod_specs,
    env_of,
    effective,
    last,
    docker_targets,
    image_uid,
    image_cache_path,
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


# ---- what the Ray side will make of the clusters -----------------------------------------------


def ray_cluster_specs() -> list[tuple[str, dict]]:
    out = [(f"RayCluster/{rc['metadata']['name']}", rc["spec"]) for rc in find("RayCluster")]
    out += [(f"RayJob/{j['metadata']['name']}", j["spec"]["rayClusterSpec"]) for j in find("RayJob")]
    return out


@pytest.mark.parametrize("name, spec", ray_cluster_specs(), ids=[n for n, _ in ray_cluster_specs()])
def test_ray_autoscaler_reads_cluster(name, spec):
    import ray
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    assert spec["rayVersion"] == ray.__version__, "image and manifests must run one Ray version"
    assert spec.get("enableInTreeAutoscaling") is True
    # The autoscaler's own translation of the CR; it raises on groups it cannot size.
    config = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "check", "namespace": "llmbatch"}, "spec": spec}
    )
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0, "the head must not run model work"
    assert "GPU" in types["gpu"]["resources"] and types["gpu"]["resources"]["GPU"] >= 1
    for group in spec["workerGroupSpecs"]:
        lo, hi = group["minReplicas"], group["maxReplicas"]
        assert 0 <= lo <= group.get("replicas", lo) <= hi and hi > 0, group["groupName"]
        node_type = types[group["groupName"]]
        wants_gpu = GPU in group["template"]["spec"]["containers"][0]["resources"].get("limits", {})
        assert ("GPU" in node_type["resources"]) == wants_gpu, group["groupName"]


def test_gpu_containers_request_gpus_consistently():
    seen_gpu = False
    for _, obj in objects():
        for where, pod in pod_specs(obj):
            for c in pod["containers"]:
                res = c.get("resources", {})
                req, lim = res.get("requests", {}), res.get("limits", {})
                if GPU in req or GPU in lim:
                    seen_gpu = True
                    # Kubernetes refuses extended resources whose request differs from the limit.
                    assert req.get(GPU) == lim.get(GPU), (obj["kind"], where)
                    assert any(t["key"] == GPU for t in pod.get("tolerations", [])), where
                # The CUDA image exactly where GPUs are asked for.
                if c["image"] in IMAGES:
                    assert (IMAGES[c["image"]] == "cuda") == (GPU in lim), (obj["kind"], where)
    assert seen_gpu


def test_ray_token_auth_is_set_on_every_node_and_client():
    rc = one("RayCluster", "llmbatch")

    def token_source(env: dict) -> tuple[str, str]:
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        return ref["name"], ref["key"]

    sources = {token_source(env_of(rc["spec"]["autoscalerOptions"]))}
    for _, pod in pod_specs(rc):
        sources |= {token_source(env_of(c)) for c in pod["containers"]}
    api = one("Deployment", "llmbatch-api")["spec"]["template"]["spec"]["containers"][0]
    sources.add(token_source(env_of(api)))
    assert len(sources) == 1, f"every node and the API must share one token: {sources}"
    # The RayJob's private cluster lets KubeRay generate and distribute its token.
    for job in find("RayJob"):
        assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"


# ---- the API service ---------------------------------------------------------------------------


def test_api_deployment_service_and_probes_line_up():
    dep = one("Deployment", "llmbatch-api")
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = c["args"]
    assert args[0] == "serve"
    assert int(args[args.index("--port") + 1]) == ports["http"]
    assert args[args.index("--host") + 1] == "0.0.0.0", "must listen beyond the pod's loopback"
    expose = last(effective(docker_targets(), "cpu"), "EXPOSE")
    assert str(ports["http"]) in expose.split()
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] in ports or get["port"] in ports.values()

    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one("Service", "llmbatch-api")
    assert svc["spec"]["selector"].items() <= labels.items()
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()

    env = env_of(c)
    assert "secretKeyRef" in env["LLMBATCH_DB"]["valueFrom"], "the DB URL holds a password"
    # The Ray Client port of the shared cluster's head service (KubeRay: <name>-head-svc).
    rc = one("RayCluster")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    host, port = re.fullmatch(r"ray://([\w.-]+):(\d+)", env["RAY_ADDRESS"]["value"]).groups()
    assert host.split(".")[0] == f"{rc['metadata']['name']}-head-svc"
    assert int(port) in {p["containerPort"] for p in head["ports"]}


def test_s3_access_comes_from_the_service_account_not_keys():
    sa = one("ServiceAccount", "llmbatch")
    assert re.fullmatch(
        r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    )
    for _, obj in objects():
        for where, pod in pod_specs(obj):
            assert pod.get("serviceAccountName") == "llmbatch", (obj["kind"], where)
    for path in yaml_files() + [DOCKERFILE]:
        text = path.read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text, path


def test_pods_run_as_the_image_user_and_mount_the_model_cache():
    uid, cache = image_uid(), image_cache_path()
    for _, obj in objects():
        for where, pod in pod_specs(obj):
            ctx = pod["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid, (obj["kind"], where)
            assert ctx["fsGroup"] == uid, "volumes must be writable by the image user"
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert set(mounts.values()) <= volumes.keys(), (obj["kind"], where)
                assert cache in mounts, f"{obj['kind']} {where}: no model cache at {cache}"
                if obj["kind"] in ("RayCluster", "RayJob"):
                    shm = volumes[mounts["/dev/shm"]]
                    assert shm["emptyDir"]["medium"] == "Memory", "Ray's object store needs shm"


# ---- the RayJob ---------------------------------------------------------------------------------


def test_rayjob_runs_a_valid_manifest_from_its_configmap():
    from jobs.manifest import parse_manifest_text

    job = one("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["llmbatch", "run"]
    assert argv[argv.index("--ray-address") + 1] == "auto"
    manifest_path = argv[2]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    # The driver runs on the head: the manifest must be mounted there.
    (mount,) = [
        m for m in head["containers"][0]["volumeMounts"] if manifest_path.startswith(m["mountPath"] + "/")
    ]
    cm = one("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    key = manifest_path[len(mount["mountPath"]) + 1 :]
    assert key in cm["data"], f"ConfigMap {cm['metadata']['name']} has no key {key}"
    manifest = parse_manifest_text(cm["data"][key], source=f"ConfigMap {key}")
    # Retries start a new cluster; only `resume` lets them keep committed shards.
    assert job["spec"]["backoffLimit"] == 0 or manifest.output.mode == "resume"
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # The autoscaler can reach the GPUs the manifest asks for, or the job waits forever.
    gpus = sum(
        g["maxReplicas"] * int(limits.get(GPU, 0))
        for g in groups
        for limits in [g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    )
    assert manifest.resources.workers * manifest.resources.gpus_per_worker <= gpus
    assert job["spec"]["shutdownAfterJobFinishes"] is True
