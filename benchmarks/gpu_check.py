"""The native engine's first-GPU-run check: correctness first, then speed, then training MFU.

    python benchmarks/gpu_check.py --out gpu_check.json     # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --smoke --out smoke.json  # CPU, tiny shapes, under a minute

1. correctness (benchmarks/gpu_check_correctness.py), tiny random Llama and Qwen2: logits vs
   transformers (fp32, bf16), greedy token-exact vs generate, CUDA graphs vs eager, seeded
   sampling, score() vs transformers, SDPA kernel per attention path, syncs per decode step.
2. speed: random-weight Qwen2.5-0.5B and Llama-3.2-1B shapes, 64 and 256 sequences: native
   generated tok/s vs transformers generate, ms per decode step, KV cache GB, peak GPU memory.
3. training: ZeRO-2 MFU on the 0.5B shape, via benchmarks/train.py --json (Ray + DeepSpeed).

Every figure is printed as it is found and the JSON summary (--out) is rewritten after each.
`--smoke` runs the same code on CPU with tiny shapes (tests/unit/test_gpu_check_smoke.py);
checks that need CUDA are recorded as skipped with the reason, never as passed. The exit
status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_check_correctness as correctness  # noqa: E402
from benchmarks.gpu_check_report import Report  # noqa: E402
from llm_core.engine.hf import HFEngine  # noqa: E402
from llm_core.engine.native import NativeEngine  # noqa: E402
from llm_core.engine.sampling import SamplingParams  # noqa: E402

GPU_SHAPES = {  # Qwen2.5-0.5B and Llama-3.2-1B, as in benchmarks/engine.py
    "0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                 rope_theta=1e6, max_position_embeddings=32768, rms_norm_eps=1e-6),
    "1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
               tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5,
               rope_parameters=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192, rope_theta=500000.0)),
}
SMOKE_SHAPES = {"tiny": dict(model_type="llama", **correctness.SHAPES[True])}
TARGET_TOK_S = {"0.5b": 40000, "1b": 25000}  # issue 16's GPU targets (benchmarks, not verdicts)


class Settings:
    def __init__(self, smoke: bool, device: str, budget_s: float):
        self.smoke, self.device = smoke, device
        self.deadline = time.time() + budget_s
        self.on_cuda = device.startswith("cuda")
        self.shapes = SMOKE_SHAPES if smoke else GPU_SHAPES
        self.batches = (4, 8) if smoke else (64, 256)
        self.prompt_lengths = (3, 40) if smoke else (64, 512)
        self.new_tokens = 8 if smoke else 128
        self.decode_repeats = 3 if smoke else 50

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)


def random_folder(work: Path, name: str, spec: dict, settings: Settings) -> Path:
    """A random-weight HF folder of `spec`'s shape, initialised on the device (fast) in bf16 on GPU."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = work / f"speed-{name}"
    spec = dict(spec)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, eos_token_id=0)
    torch.manual_seed(0)
    with torch.device(settings.device):
        model = AutoModelForCausalLM.from_config(config)
    model.to(torch.bfloat16 if settings.on_cuda else torch.float32).save_pretrained(folder)
    del model
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    Tokenizer(WordLevel(vocab, unk_token="t0")).save(str(folder / "tokenizer.json"))
    return folder


def timed_generate(engine, prompts, params, settings: Settings) -> float:
    settings.sync()
    start = time.perf_counter()
    engine.generate(prompts, params)
    settings.sync()
    return time.perf_counter() - start


@torch.inference_mode()
def decode_ms(engine: NativeEngine, batch: int, position: int, settings: Settings) -> float:
    """One decode step of `batch` sequences at `position` (model only: graph replay on CUDA)."""
    runner = engine.runner
    tokens, positions = [1] * batch, [position] * batch
    runner.decode(tokens, positions)  # captures the bucket's graph if the run did not
    settings.sync()
    start = time.perf_counter()
    for _ in range(settings.decode_repeats):
        runner.decode(tokens, positions)
    settings.sync()
    return 1000 * (time.perf_counter() - start) / settings.decode_repeats


def speed_one(report: Report, name: str, native: NativeEngine, hf: HFEngine, batch: int, settings: Settings) -> None:
    vocab = native.config.vocab_size
    gen = torch.Generator().manual_seed(batch)
    lengths = torch.randint(*settings.prompt_lengths, (batch,), generator=gen).tolist()
    prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in lengths]
    params = SamplingParams(max_new_tokens=settings.new_tokens, ignore_eos=True)
    generated = batch * settings.new_tokens
    native.generate(prompts, params)  # warm-up at the timed lengths: cache and graphs ready
    if settings.on_cuda:
        torch.cuda.reset_peak_memory_stats(settings.device)
    native_s = timed_generate(native, prompts, params, settings)
    cache = native.runner.cache
    figures = dict(
        native_tok_s=generated / native_s, seconds=native_s,
        decode_ms=decode_ms(native, min(batch, cache.num_slots), max(lengths) + settings.new_tokens - 1, settings),
        kv_gb=2 * cache.k.numel() * cache.k.element_size() / 1e9, kv_slots=cache.num_slots, kv_len=cache.max_len,
    )
    if settings.on_cuda:
        figures["peak_gb"] = torch.cuda.max_memory_allocated(settings.device) / 1e9
    hf.batch_size = batch
    hf.generate(prompts[:batch], params.with_updates(max_new_tokens=4))  # allocator and kernels warm
    hf_s = timed_generate(hf, prompts, params, settings)
    figures.update(hf_tok_s=generated / hf_s, speedup=hf_s / native_s)
    if name in TARGET_TOK_S:
        figures.update(target_tok_s=TARGET_TOK_S[name], meets_target=figures["native_tok_s"] >= TARGET_TOK_S[name])
    report.measure(f"{name} x{batch} generate {settings.new_tokens} tokens", **figures)


def run_speed(report: Report, settings: Settings, work: Path) -> None:
    report.stage = "speed"
    if not settings.on_cuda:
        report.skip("peak GPU memory", "CUDA-only (torch.cuda.max_memory_allocated)")
    for name, spec in settings.shapes.items():
        if settings.left() < (5 if settings.smoke else 90):
            report.skip(f"{name} speed", f"time budget: {settings.left():.0f}s left")
            continue
        dtype = "bfloat16" if settings.on_cuda else "float32"
        folder = random_folder(work, name, spec, settings)
        native = NativeEngine(folder, device=settings.device, dtype=dtype, max_num_seqs=max(settings.batches))
        hf = HFEngine(folder, device=settings.device, dtype=dtype)
        for batch in settings.batches:
            report.guarded(f"{name} x{batch}", lambda b=batch: speed_one(report, name, native, hf, b, settings))
        del native, hf
        free_memory(settings)


def run_training(report: Report, settings: Settings, skip: bool) -> None:
    report.stage = "training"
    name = "ZeRO-2 MFU (0.5b shape)"
    if skip:
        report.skip(name, "--skip-training")
        return
    if not settings.on_cuda:
        report.skip(name, "needs a GPU (Ray Train + DeepSpeed ZeRO-2 bf16); on CPU run "
                          "benchmarks/train.py --device cpu --model tiny")
        return
    if settings.left() < 120:
        report.skip(name, f"time budget: {settings.left():.0f}s left")
        return
    cmd = [sys.executable, str(REPO / "benchmarks/train.py"), "--device", "cuda", "--model", "0.5b", "--steps", "30",
           "--warmup", "10", "--log-every", "5", "--micro-batch", "8", "--seq-len", "1024", "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(60, settings.left() - 10))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmarks/train.py exited {done.returncode}: {done.stderr[-800:]}")
    rows = json.loads(lines[-1])["rows"]
    # "llmbatch ZeRO-2 (1 worker)" -> llmbatch_zero-2_mfu, ..._tokens_per_s; likewise plain torch.
    figures = {f"{row.split(' (')[0].lower().replace(' ', '_')}_{key}": value
               for row, got in rows.items() for key, value in got.items()}
    report.measure(name, **figures)


def free_memory(settings: Settings) -> None:
    gc.collect()
    if settings.on_cuda:
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, under a minute (the test suite's run)")
    ap.add_argument("--device", help="default: cuda, or cpu with --smoke or without a GPU")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--budget-s", type=float,
                    help="start no speed/training item after this many seconds (default 450; smoke 150)")
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    settings = Settings(args.smoke, device, args.budget_s or (150 if args.smoke else 450))
    report = Report(args.out, device, args.smoke)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="llmbatch-gpu-check-") as tmp:
        work = Path(tmp)
        correctness.run(report, device, args.smoke, work)
        free_memory(settings)
        run_speed(report, settings, work)
        report.guarded("ZeRO-2 MFU (0.5b shape)", lambda: run_training(report, settings, args.skip_training))
    summary = report.summary()
    report.write()
    print(f"\n{summary['counts']} in {summary['seconds']}s; ok={summary['ok']}; summary in {args.out}", flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
