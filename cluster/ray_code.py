"""llmbatch's own code for the workers of a cluster this driver joins (`--ray-address`).

A cluster someone else started runs its own image, which may hold no llmbatch at all, or another
version of it or of the libraries it passes data through. `runtime_env()` ships the driver's four
packages to every worker with Ray's `py_modules` (uploaded once per content, cached by the
cluster), so the workers run exactly the driver's code. `verify_workers()` then runs one tiny
task on each live node that imports that code and reports its digest and the versions of the
libraries whose data crosses between driver and workers (pyarrow tables, pydantic models, torch
tensors); any difference raises `ClusterCodeMismatch` saying what to install, before any job
work is placed. Each node also says whether its CPU has bf16 in hardware (`checked_nodes()`):
what a job's `dtype: auto` comes to (jobs/run/precision.py).

The packages are found by `importlib.util.find_spec` and imported in the task by name: this
module ships them, it does not import them (cluster imports none of ours).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES = ("cluster", "workers", "llm_core", "jobs")
# Libraries whose objects cross the driver/worker boundary; compared by major.minor (a local
# build tag such as torch's +cu121 / +cpu is not a difference: CPU drivers run GPU clusters).
KEY_DEPS = ("pyarrow", "pydantic", "torch")
EXCLUDES = ["__pycache__", "*.pyc"]
_checked_nodes: dict[str, dict] = {}  # verify_workers' findings: node -> facts

IMAGE_HINT = "or run the cluster on the image built from this version (infra/docker/Dockerfile)"


class ClusterCodeMismatch(RuntimeError):
    """The joined cluster's workers cannot run this driver's llmbatch; names each difference."""

    def __init__(self, message: str, differences: tuple[str, ...] = ()):
        self.differences = tuple(differences)
        super().__init__(message)

    def __reduce__(self):  # crosses Ray boundaries: rebuilt from the same arguments
        return type(self), (str(self), self.differences)


def package_dirs() -> list[Path]:
    """The folders of the four packages this process imports them from."""
    dirs = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ClusterCodeMismatch(f"llmbatch package {name!r} is not importable here: nothing to ship")
        dirs.append(Path(next(iter(spec.submodule_search_locations))).resolve())
    return dirs


def runtime_env() -> dict:
    """Ray's runtime_env that gives every worker this driver's llmbatch code (py_modules)."""
    return {"py_modules": [str(d) for d in package_dirs()], "excludes": list(EXCLUDES)}


def _probe(packages: tuple[str, ...], deps: tuple[str, ...]) -> dict:
    """What a process runs: its llmbatch code digest and library versions. Self-contained (only
    the standard library, imported inside) so that it reaches a worker by value, even one that
    cannot import llmbatch: then it says why."""
    import hashlib as _hashlib
    import importlib as _importlib
    import platform as _platform
    from importlib import metadata as _metadata
    from pathlib import Path as _Path

    facts: dict = {"python": ".".join(_platform.python_version_tuple()[:2]), "versions": {}, "error": None}
    try:  # bf16 in hardware, and faster than fp32 (llm_core.device): the driver decides `dtype: auto` from them
        lines = _Path("/proc/cpuinfo").read_text().splitlines()
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), None)
        facts["cpu_bf16_native"] = "amx_bf16" in flags or "avx512_bf16" in flags
        facts["cpu_bf16_fast"] = "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")
    except OSError:
        facts["cpu_bf16_native"] = facts["cpu_bf16_fast"] = None  # not Linux: unknown
    for dep in deps:
        try:
            facts["versions"][dep] = _metadata.version(dep)
        except _metadata.PackageNotFoundError:
            facts["versions"][dep] = None
    digest = _hashlib.sha256()
    try:
        for name in packages:
            module = _importlib.import_module(name)
            root = _Path(next(iter(module.__path__)))
            for file in sorted(root.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    digest.update(f"{name}/{file.relative_to(root).as_posix()}\0".encode())
                    digest.update(file.read_bytes())
            facts.setdefault("paths", {})[name] = str(root)
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which explains it
        facts["error"] = f"{type(exc).__name__}: {exc}"
        return facts
    facts["digest"] = digest.hexdigest()[:16]
    return facts


def _probe_by_value():
    """`_probe` as a function cloudpickle sends whole (a module-level function would be sent by
    reference, and a worker without llmbatch could not even load it)."""
    code = _probe.__code__
    return type(_probe)(code, {"__builtins__": __builtins__}, "llmbatch_code_probe")


def driver_facts() -> dict:
    return _probe(PACKAGES, KEY_DEPS)


def _major_minor(version: str | None) -> str | None:
    if version is None:
        return None
    return ".".join(version.split("+")[0].split(".")[:2])


def differences(driver: dict, worker: dict, where: str = "the cluster's workers") -> list[str]:
    """Plain lines, one per difference that matters ([] when the worker can run the driver's code)."""
    if worker.get("error"):
        return [f"{where} cannot import llmbatch's code ({worker['error']}): install llmbatch's dependencies "
                f"there (pip install the same llmbatch version) {IMAGE_HINT}"]
    out = []
    if worker.get("python") != driver.get("python"):
        out.append(f"{where} run Python {worker.get('python')} but this driver {driver.get('python')}")
    for dep in KEY_DEPS:
        mine, theirs = driver["versions"].get(dep), worker["versions"].get(dep)
        if mine is None:
            continue  # the driver does not use it (torch on a CPU-only control plane)
        if theirs is None:
            out.append(f"{where} have no {dep} but this driver has {dep} {mine}: install {dep}=={mine} there")
        elif _major_minor(mine) != _major_minor(theirs):
            out.append(f"{where} have {dep} {theirs} but this driver {mine}: install {dep}=={mine} there")
    if worker.get("digest") != driver.get("digest"):
        out.append(f"{where} import other llmbatch code (digest {worker.get('digest')}, from "
                   f"{worker.get('paths', {}).get('jobs')}) than this driver ({driver.get('digest')}): join with "
                   "runtime_env=cluster.ray_code.runtime_env()")
    return out


def verify_workers(timeout_s: float = 60) -> None:
    """Run the probe once on every live node of the joined cluster (ray.init already called,
    with runtime_env()); raise ClusterCodeMismatch naming every difference from this driver."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_by_value())
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {f"{n.get('NodeManagerAddress')} ({n['NodeID'][:8]})": probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(PACKAGES, KEY_DEPS)
        for n in nodes}
    try:
        found = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    except ray.exceptions.GetTimeoutError:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise ClusterCodeMismatch(f"the cluster's workers did not run llmbatch's code check within {timeout_s:.0f} s "
                                  "(is the cluster out of worker processes, or installing the runtime_env?)") from None
    except ray.exceptions.RayError as exc:  # e.g. the runtime_env could not be set up there
        raise ClusterCodeMismatch(f"the cluster's workers could not run llmbatch's code check: "
                                  f"{str(exc).strip().splitlines()[-1]}") from None
    mine = driver_facts()
    _checked_nodes.clear()
    _checked_nodes.update(found)
    lines = [line for node, facts in found.items()
             for line in differences(mine, facts, f"the cluster's workers on node {node}")]
    if lines:
        raise ClusterCodeMismatch("this driver cannot run jobs on the joined cluster:\n"
                                  + "\n".join(f"  - {line}" for line in lines), tuple(lines))


def checked_nodes() -> dict[str, dict]:
    """{node: its probe's facts} from the last verify_workers of this process ({} before one)."""
    return dict(_checked_nodes)


def code_digest() -> str:
    """This process's llmbatch code digest (what verify_workers compares)."""
    return driver_facts()["digest"]


__all__ = ["ClusterCodeMismatch", "checked_nodes", "code_digest", "differences", "driver_facts", "package_dirs", "runtime_env",
           "verify_workers"]
