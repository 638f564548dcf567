"""Vendor the Kubernetes JSON schemas that infra/ uses, from the kubernetes-validate wheel.

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    python infra/schemas/vendor_k8s.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl

Writes infra/schemas/k8s/<kind>-<group>-<version>.json for each kind in KINDS and a
_definitions.json holding only the definitions those kinds (and the pod templates inside the
KubeRay schemas) reach. Descriptions are dropped: they are most of the size and checks never
read them. Rerun with a newer K8S_VERSION when the clusters we target move on.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

K8S_VERSION = "v1.33.0"  # oldest minor still in EKS/GKE standard support when vendored
KINDS = [
    "configmap-v1",
    "deployment-apps-v1",
    "namespace-v1",
    "service-v1",
    "serviceaccount-v1",
]
# Definitions the KubeRay schemas reference directly (pod templates, env, resources...).
EXTRA_DEFS = [
    "io.k8s.api.core.v1.PodTemplateSpec",
    "io.k8s.api.core.v1.ResourceRequirements",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.EnvFromSource",
    "io.k8s.api.core.v1.VolumeMount",
    "io.k8s.api.core.v1.Service",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
]
DEFS_PREFIX = "/api/_definitions.json#/$defs/"
LOCAL_PREFIX = "#/$defs/"
OUT = Path(__file__).resolve().parent / "k8s"


def strip(node):
    """Drop descriptions; keep everything that constrains."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            for prefix in (DEFS_PREFIX, LOCAL_PREFIX):
                if ref.startswith(prefix):
                    found.add(ref[len(prefix):])
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def main(wheel: str) -> None:
    base = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/"
    with zipfile.ZipFile(wheel) as zf:
        defs_doc = json.loads(zf.read(base + "_definitions.json"))
        kinds = {k: json.loads(zf.read(f"{base}{k}.json")) for k in KINDS}
    all_defs = defs_doc["$defs"]

    wanted: set[str] = set(EXTRA_DEFS)
    for schema in kinds.values():
        refs(schema, wanted)
    closure: set[str] = set()
    while wanted:  # transitive closure over $ref
        name = wanted.pop()
        if name in closure:
            continue
        closure.add(name)
        found: set[str] = set()
        refs(all_defs[name], found)
        wanted |= found - closure

    OUT.mkdir(parents=True, exist_ok=True)
    subset = {k: v for k, v in defs_doc.items() if k != "$defs"}
    subset["$defs"] = {name: strip(all_defs[name]) for name in sorted(closure)}
    (OUT / "_definitions.json").write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n")
    for name, schema in kinds.items():
        (OUT / f"{name}.json").write_text(json.dumps(strip(schema), indent=1, sort_keys=True) + "\n")
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    print(f"{Path(wheel).name} sha256={digest}: {len(kinds)} kinds, {len(closure)} definitions")


if __name__ == "__main__":
    main(sys.argv[1])
