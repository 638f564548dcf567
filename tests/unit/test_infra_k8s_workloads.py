"""Static checks of what the Kubernetes manifests in infra/ make run: what Ray's autoscaler reads
from each RayCluster, GPUs and token auth, the API deployment and its service account, the RayJob
(the files themselves: test_infra_k8s)."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.support.infra_support import (
    DOCKERFILE,
    IMAGES,
    GPU,
    yaml_files,
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
)

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
