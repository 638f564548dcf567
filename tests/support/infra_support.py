"""Shared readers for the deployment checks: infra/ YAML objects, the Dockerfile and its ignore
file, and the vendored Kubernetes/KubeRay JSON schemas."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from tests.support.paths import REPO

INFRA = REPO / "infra"
K8S = INFRA / "k8s"
SCHEMAS = INFRA / "schemas"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
LAUNCHER = INFRA / "ray-cluster" / "aws.yaml"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "production", K8S / "rayjob"]
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
