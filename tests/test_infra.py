"""Static checks of the deployment files in infra/ (no Docker, no cluster, no cloud).

What a reviewer would otherwise find only at `docker build`, `kubectl apply` or `ray up`:
YAML that does not parse, objects the API server would refuse (validated against vendored
Kubernetes and KubeRay JSON schemas), names that do not line up across objects, a launcher
config Ray itself rejects, and `llmbatch` command lines the CLI does not accept.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
SCHEMAS = INFRA / "schemas"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
LAUNCHER = INFRA / "ray-cluster" / "aws.yaml"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "production", K8S / "rayjob"]
if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repo off the path
    sys.path.insert(0, str(REPO))
# Logical image names used in the manifests; kustomize `images:` maps them to a registry.
IMAGES = {"llmbatch-cpu": "cpu", "llmbatch-cuda": "cuda"}
GPU = "nvidia.com/gpu"


# ---- loading -------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def resource_files() -> list[Path]:
    """Files listed as `resources` (not patches) by the kustomizations."""
    files = []
    for folder in KUSTOMIZATIONS:
        for entry in kustomization(folder).get("resources", []):
            path = (folder / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(set(files))


def objects() -> list[tuple[Path, dict]]:
    return [(p, doc) for p in resource_files() for doc in load_all(p)]


def find(kind: str, name: str | None = None) -> list[dict]:
    found = [o for _, o in objects() if o["kind"] == kind]
    return [o for o in found if name is None or o["metadata"]["name"] == name]


def one(kind: str, name: str | None = None) -> dict:
    found = find(kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template an object carries."""
    spec = obj.get("spec", {})
    if obj["kind"] == "Deployment":
        return [("template", spec["template"]["spec"])]
    if obj["kind"] == "RayJob":
        spec = spec["rayClusterSpec"]
    if obj["kind"] in ("RayCluster", "RayJob"):
        out = [("head", spec["headGroupSpec"]["template"]["spec"])]
        out += [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
        return out
    return []


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # blank lines and comments, also inside continuations
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def docker_stages(text: str) -> tuple[dict[str, str], dict[str, dict]]:
    """Global ARG defaults and {stage name: {"base": ..., "body": [(INSTR, args), ...]}}."""
    global_args: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current = None
    for instr, rest in dockerfile_instructions(text):
        if instr == "FROM":
            parts = rest.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], m[0]), parts[0])
            current = stages[parts[2]] = {"base": base, "body": []}
        elif current is None:
            assert instr == "ARG", f"{instr} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            current["body"].append((instr, rest))
    return global_args, stages


def lineage(stages: dict, name: str) -> list[str]:
    chain = [name]
    while stages[chain[-1]]["base"] in stages:
        chain.append(stages[chain[-1]]["base"])
    return chain[::-1]


def effective(stages: dict, name: str) -> list[tuple[str, str]]:
    """A target's instructions including those it inherits from earlier stages."""
    return [i for s in lineage(stages, name) for i in stages[s]["body"]]


def exec_form(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]


def env_values(instrs: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instr, rest in instrs:
        if instr == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def last(instrs: list[tuple[str, str]], name: str) -> str | None:
    values = [rest for instr, rest in instrs if instr == name]
    return values[-1] if values else None


def docker_targets() -> dict:
    return docker_stages(DOCKERFILE.read_text())[1]


def image_uid() -> int:
    return int(last(effective(docker_targets(), "cpu"), "USER").split(":")[0])


def image_cache_path() -> str:
    return env_values(effective(docker_targets(), "cpu"))["LLMBATCH_CACHE"]


# ---- .dockerignore (Docker's matcher: last match wins, a match on a parent folder counts) ----


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _glob_regex(pattern)))
    return rules


def in_context(rel: str, rules) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


# ---- schemas ---------------------------------------------------------------------------------


def schema_registry() -> Registry:
    docs = [json.loads(p.read_text()) for p in SCHEMAS.rglob("*.json")]
    return Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)


def schema_for(obj: dict) -> dict:
    # Same file naming as kubernetes-validate: apps/v1 -> apps-v1, ray.io/v1 -> ray-v1.
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    name = f"{obj['kind'].lower()}-{api}.json"
    folder = SCHEMAS / ("kuberay" if obj["apiVersion"].startswith("ray.io/") else "k8s")
    path = folder / name
    assert path.exists(), f"no vendored schema {path.relative_to(REPO)}: see infra/schemas/README.md"
    return json.loads(path.read_text())


def schema_errors(obj: dict, registry: Registry) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema_for(obj), registry=registry)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    ]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return schema_registry()


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


# ---- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_targets_share_python_and_run_llmbatch_as_non_root():
    global_args, stages = docker_stages(DOCKERFILE.read_text())
    assert {"cpu", "cuda"} <= stages.keys()
    assert stages["python"]["base"].startswith("python:3.11")
    assert "cuda" in stages["cuda"]["base"]
    for target in ("cpu", "cuda"):
        instrs = effective(stages, target)
        user = last(instrs, "USER")
        assert user and re.fullmatch(r"\d+(:\d+)?", user), "numeric, so runAsNonRoot can check it"
        assert int(user.split(":")[0]) != 0
        assert exec_form(last(instrs, "ENTRYPOINT")) == ["llmbatch"]
        env = env_values(instrs)
        cache = env["LLMBATCH_CACHE"]
        volume_at = next(i for i, (ins, _) in enumerate(instrs) if ins == "VOLUME")
        assert cache in exec_form(instrs[volume_at][1])
        # Changes to a path after VOLUME are discarded: the chown must come first.
        assert any(
            ins == "RUN" and "chown" in rest and cache in rest for ins, rest in instrs[:volume_at]
        ), target
        # Ray joins nodes only with the same Python patch release: both targets must run the
        # interpreter of the `python` stage, directly or copied from a stage built on it.
        copies = [
            rest.split()[0].split("=", 1)[1]
            for ins, rest in stages[target]["body"]
            if ins == "COPY" and rest.startswith("--from=") and "/usr/local /usr/local" in rest
        ]
        assert all("python" in lineage(stages, c) for c in copies), target
        assert "python" in lineage(stages, target) or copies, target
    builder = dict(
        rest.partition("=")[::2] for ins, rest in stages["builder"]["body"] if ins == "ARG"
    )
    assert builder["TORCH_SPEC"] == "torch==2.13.0"
    import ray

    assert builder["RAY_SPEC"].endswith(f"=={ray.__version__}")


def test_dockerignore_sends_only_the_package_sources():
    rules = dockerignore_rules()
    for rel in ["pyproject.toml", "README.md", "jobs/cli.py", "llm_core/engine_api.py",
                "cluster/storage.py", "workers/inference.py"]:
        assert in_context(rel, rules), rel
    for rel in [".venv/bin/python", ".git/HEAD", "tests/test_infra.py", "jobs/__pycache__/cli.pyc",
                "infra/docker/Dockerfile", ".env", "examples/data/x.parquet", "out/part-0.parquet"]:
        assert not in_context(rel, rules), rel


def test_package_builds_from_the_docker_context(tmp_path):
    """`pip install /src` in the image sees only what the ignore file lets through."""
    rules, src = dockerignore_rules(), tmp_path / "src"
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "node_modules")]
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), REPO)
            if in_context(rel, rules):
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("llmbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("jobs", "llm_core", "cluster", "workers"):
        if (REPO / package / "__init__.py").exists():
            assert f"{package}/__init__.py" in names, package


# ---- Ray cluster launcher -------------------------------------------------------------------


def test_launcher_config_passes_ray_validation():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    # What `ray up` does before any cloud call: merge the AWS defaults, then check the schema.
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["max_workers"] == 0
    assert types[head]["resources"].get("CPU") == 0, "the head must not run model work"
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(types[n]["max_workers"] >= 1 for n in gpu_types)
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]

    # The defaults must not leak in: they install a different Ray and Python.
    commands = " ; ".join(config["setup_commands"] + config["head_setup_commands"]
                          + config["worker_setup_commands"])
    assert "ray-wheels" not in commands and "anaconda" not in commands
    assert f"ray[default]=={ray.__version__}" in commands
    dist_remote = next(r for r, local in raw["file_mounts"].items() if local.rstrip("/") == "./dist")
    assert f"{dist_remote}/*.whl" in commands, "the setup must install the mounted wheel"
    python = re.search(r"--python (3\.11\.\d+)", commands)
    assert python, "pin the patch release: Ray rejects nodes whose Python differs"
    assert "~/.ray/auth_token" in raw["file_mounts"] and "RAY_AUTH_MODE=token" in commands
    # cluster.s3 falls back to us-east-1 without a region; EC2 does not set one for boto3.
    assert f"AWS_REGION={config['provider']['region']}" in commands


def test_launcher_node_configs_are_valid_run_instances_requests():
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    instance_types = set(model.shape_for("InstanceType").enum)
    raw = yaml.safe_load(LAUNCHER.read_text())
    for name, node_type in raw["available_node_types"].items():
        params = {k: v for k, v in node_type["node_config"].items() if k != "SubnetIds"}  # Ray's own
        assert params["InstanceType"] in instance_types, name
        # Ray passes node_config to EC2 RunInstances as is; botocore knows its shape offline.
        report = ParamValidator().validate({**params, "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


# ---- `llmbatch` command lines in infra/ are real CLI commands ---------------------------------


_COMMAND_PREFIXES = {"then", "do", "else", "exec", "env", "sudo", "nohup", "time", "!"}


def _invocations_in_text(text: str) -> list[list[str]]:
    """`llmbatch ...` command lines inside a shell string, up to the next shell operator."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    found = []
    for i, tok in enumerate(tokens):
        # Only in command position: `useradd ... llmbatch` names a user, not a command.
        prev = tokens[i - 1] if i else ";"
        command_position = (
            set(prev) <= set(";&|()") or prev in _COMMAND_PREFIXES or re.fullmatch(r"\w+=\S*", prev)
        )
        if tok == "llmbatch" and command_position:
            argv = []
            for t in tokens[i + 1 :]:
                if t and set(t) <= set(";&|()<>"):
                    break
                argv.append(t)
            found.append(argv)
    return found


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def collect_cli_invocations() -> dict[tuple[str, ...], str]:
    """{argv after `llmbatch`: where it was found} from the YAML files and the Dockerfile."""
    found: dict[tuple[str, ...], str] = {}
    for path in yaml_files():
        rel = str(path.relative_to(REPO))
        for doc in load_all(path):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                continue  # data, not commands
            for s in _strings(doc):
                if len(s.split()) < 2:
                    continue  # a single word ("llmbatch" as a label or namespace) is a name
                for argv in _invocations_in_text(s):
                    found.setdefault(tuple(argv), rel)
            if isinstance(doc, dict) and "spec" in doc:
                for _, pod in pod_specs(doc):
                    for c in pod["containers"]:
                        if c["image"] not in IMAGES:
                            continue
                        if "command" in c:  # exec form, e.g. [llmbatch, serve] or [/bin/sh, -c, ...]
                            argv = c["command"] + c.get("args", [])
                            if Path(argv[0]).name == "llmbatch":
                                found.setdefault(tuple(argv[1:]), rel)
                        elif "args" in c:  # the image ENTRYPOINT (`llmbatch`) gets these args
                            found.setdefault(tuple(c["args"]), rel)
    _, stages = docker_stages(DOCKERFILE.read_text())
    for target in ("cpu", "cuda"):
        instrs = effective(stages, target)
        argv = exec_form(last(instrs, "ENTRYPOINT")) + exec_form(last(instrs, "CMD"))
        assert argv[0] == "llmbatch"
        found.setdefault(tuple(argv[1:]), f"Dockerfile {target}")
        for ins, rest in instrs:
            if ins == "RUN":
                for argv in _invocations_in_text(rest):
                    found.setdefault(tuple(argv), f"Dockerfile {target}")
    return found


_CHECK_ARGV = r"""
import argparse, json, sys
from jobs.cli import build_parser

argv = json.loads(sys.argv[1])
parser, path = build_parser(), []
while True:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or len(path) == len(argv) or argv[len(path)] not in subs[0].choices:
        break
    parser = subs[0].choices[argv[len(path)]]
    path.append(argv[len(path)])
print(json.dumps(path), flush=True)
build_parser().parse_args(argv)  # exits 2 with argparse's complaint on a bad command line
"""


def test_collector_sees_the_commands_infra_uses():
    found = collect_cli_invocations()
    commands = {argv[0] for argv in found if argv}
    assert {"serve", "run", "--help"} <= commands, found


@pytest.mark.parametrize("argv, where", sorted(collect_cli_invocations().items()), ids=str)
def test_infra_command_line_is_accepted_by_the_cli(argv, where):
    argv = list(argv)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, *a], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    parsed = run("-c", _CHECK_ARGV, json.dumps(argv))
    assert parsed.returncode == 0, f"{where}: `llmbatch {shlex.join(argv)}`\n{parsed.stderr}"
    path = json.loads(parsed.stdout.splitlines()[0])
    if path:
        helped = run("-m", "jobs.cli", *path, "--help")
        assert helped.returncode == 0, f"{where}: llmbatch {' '.join(path)} --help\n{helped.stderr}"
