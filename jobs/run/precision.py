"""The precision of an inference run's actors, decided once on the driver (`params.dtype: auto`).

CPU actors run bf16 when every node of the cluster multiplies bf16 faster than fp32
(llm_core.device.bf16_fast: AMX, or AVX-512 BF16 on AMD; about twice fp32's speed at half the
memory, benchmarks/RESULTS.md), fp32 elsewhere: torch emulates bf16 on CPUs without it, and Intel's
AVX-512 BF16 without AMX multiplies it no faster than fp32 (the engine ran 0.75x fp32 there).
`quantization: w8a8` runs bf16 wherever every node has bf16 in hardware, fast or not: its matmuls
are int8 either way, and bf16 halves what the rest reads (1.13x fp32's speed on that Intel CPU).
Decided here and not by each actor, so that one output
never mixes precisions: a local cluster runs on this machine, so its CPU decides; a joined
cluster's nodes report theirs in cluster.ray_code's code check. A node that joins later without
fast bf16 still runs bf16 (slower, not different).

The choice is recorded in the run fingerprint (`"dtype": "bfloat16"`), and `resume` /
`retry_errors` of a run keep the precision it recorded, even on another machine. fp32 is not
recorded: it is what `auto` meant on CPUs before this choice existed, so those runs keep their
fingerprints. GPU actors and vLLM decide `auto` themselves, as before (bf16 on a GPU that has it,
else fp16; vLLM CPU runs bf16).
"""

from __future__ import annotations

import os

import structlog

from cluster import ray_cluster, ray_code
from jobs.manifest.inference import InferenceManifest
from llm_core.device import cpu_bf16_fast, cpu_bf16_native
from workers.output.location import OutputLocation, OutputMode

log = structlog.get_logger()

FINGERPRINT_KEY = "dtype"
_UNRECORDED = "float32"  # what a fingerprint without the key ran: `auto` on CPUs before this file


def decided_on_driver(manifest: InferenceManifest) -> bool:
    """`auto` for actors this module decides for: CPU actors of the torch engines."""
    return (manifest.params.dtype == "auto" and manifest.resources.gpus_per_worker == 0
            and manifest.engine not in ("vllm", "baseline"))


def run_dtype(manifest: InferenceManifest, output: OutputLocation, ray_address: str | None) -> str:
    """The `dtype` the actors get: the manifest's own, or what `auto` comes to for this run."""
    if not decided_on_driver(manifest):
        return manifest.params.dtype
    recorded = recorded_dtype(manifest.output.mode, output)
    if recorded is not None:
        log.info("job.dtype", dtype=recorded, decided_by="the fingerprint of the run this one continues")
        return recorded
    fact = bf16_fact(manifest)
    found, nodes = cluster_cpu_bf16(ray_address, fact)
    chosen = "bfloat16" if found else "float32"
    log.info("job.dtype", dtype=chosen, nodes=nodes, **{fact: found},
             decided_by="params.dtype auto: bf16 where every node multiplies it faster than fp32 "
                        "(w8a8: where every node has it in hardware)")
    return chosen


def bf16_fact(manifest: InferenceManifest) -> str:
    """The node fact (cluster.ray_code's probe) that decides `auto` for this manifest."""
    return "cpu_bf16_native" if manifest.params.quantization == "w8a8" else "cpu_bf16_fast"


def fingerprint_entry(manifest: InferenceManifest, dtype: str) -> dict:
    """What the run fingerprint records of the choice ({} where it adds nothing)."""
    if decided_on_driver(manifest) and dtype != _UNRECORDED:
        return {FINGERPRINT_KEY: dtype}
    return {}


def recorded_dtype(mode: str, output: OutputLocation) -> str | None:
    """The precision `auto` came to in the run that `resume` / `retry_errors` continues, or None."""
    if OutputMode(mode) is OutputMode.RESUME:
        earlier = output.read_manifest()  # the last run started here (what _resume compares with)
    elif OutputMode(mode) is OutputMode.RETRY_ERRORS:
        earlier = output.snapshot()  # the published run (what retry_errors redoes rows of)
    else:
        return None
    fingerprint = (earlier or {}).get("fingerprint")
    if not isinstance(fingerprint, dict) or (fingerprint.get("params") or {}).get("dtype") != "auto":
        return None
    value = fingerprint.get(FINGERPRINT_KEY, _UNRECORDED)
    return value if value in ("bfloat16", "float32") else None  # anything else: a hand-edited file


def cluster_cpu_bf16(ray_address: str | None, fact: str = "cpu_bf16_fast") -> tuple[bool, int]:
    """(whether `fact` holds on every node, how many nodes were asked). `fact`: cpu_bf16_fast
    (bf16 multiplies faster than fp32) or cpu_bf16_native (bf16 in hardware at all)."""
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # the local cluster this driver starts runs on this machine
        return (cpu_bf16_native if fact == "cpu_bf16_native" else cpu_bf16_fast)(), 1
    ray_cluster.connect(address)  # joins once; its code check asks every node (ray_code._probe)
    found = [facts.get(fact) for facts in ray_code.checked_nodes().values()]
    return bool(found) and all(flag is True for flag in found), len(found)
