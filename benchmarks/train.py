"""Training throughput: our loop (Ray Train + DeepSpeed ZeRO-2) vs plain torch, on the same model;
and (`--sft`) fine-tuning speed side by side: full vs LoRA, fp32 vs bf16 autocast, packing off/on.

Default mode: both sides train the same randomly initialised Llama, llm_core's native decoder
with its chunked cross-entropy (built by workers.training.model, so the two sides cannot drift
apart), on the same Debian sample, with the same micro-batch and sequence length; tokens/s counts
real (non-pad) tokens after warm-up steps, counted on the host (the plain-torch loop never waits
for the device inside the timed steps: the loss is read once, at the end). MFU uses the PaLM
FLOP count with the tied lm_head (workers.training.metrics) against the device's dense bf16
peak; on CPU it is printed only when --peak-tflops is given.

`--sft`: the fine-tuning matrix of benchmarks/train_sft.py (full / LoRA x fp32 / bf16 autocast
x packing off / on), which takes the same options. benchmarks/train_step.py compares the model
itself with transformers'.

    python benchmarks/train.py --device cpu --model tiny
    python benchmarks/train.py --device cuda --model 0.5b --steps 40 --micro-batch 8 --seq-len 1024
    python benchmarks/train.py --sft --model builtin --steps 3 --warmup 1 --micro-batch 8 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "examples" / "data" / "debian-pretrain-sample.parquet"
BUILTIN = "builtin:smollm2-135m-instruct"
SHAPES = {
    # ~0.24M parameters: the CI model.
    "tiny": {"vocab": "bpe", "vocab_size": 2048, "hidden_size": 64, "num_layers": 2, "num_heads": 4},
    # ~0.5B parameters (hidden 1280, 24 layers, 20 heads of 64; ~470M non-embedding).
    "0.5b": {"vocab": "bpe", "vocab_size": 32768, "hidden_size": 1280, "num_layers": 24, "num_heads": 20,
             "intermediate_size": 3456},
}


def manifest_dict(args, work: Path) -> dict:
    return {
        "version": 1, "kind": "training", "name": f"bench-{args.model}", "task": "pretrain",
        "objective": "causal_lm", "model": SHAPES[args.model],
        "data": {"train": str(args.data), "seq_len": args.seq_len, "packing": True},
        "optimizer": {"lr": 3e-4, "schedule": "constant"},
        "training": {"micro_batch": args.micro_batch, "max_steps": args.steps, "log_every": args.log_every,
                     "compile": args.compile},
        "deepspeed": {"zero_stage": 2, "precision": "auto"},
        "resources": {"workers": args.workers, "gpus_per_worker": 1 if args.device == "cuda" else 0},
        "checkpoint": {"uri": str(work / "ckpt"), "every_steps": 10**6, "keep": 1},
        "output": {"uri": str(work / "model"), "mode": "overwrite"},
    }


def run_ours(manifest, args) -> dict:
    """tokens/s over the log windows after warm-up, as rank 0 measured them (all ranks' tokens)."""
    from cluster import ray_cluster
    from jobs.run.training import run_training

    ray_cluster.connect(args.ray_address)
    events: list[dict] = []
    result = run_training(manifest, job_id=f"bench-{args.model}-{int(time.time())}",
                          on_progress=lambda p: events.append(p.to_dict()))
    if result.status != "succeeded":
        raise SystemExit(f"our loop failed: {result.error}")
    windows = [e for e in events if e.get("event") == "step" and e["step"] > args.warmup]
    tps = sum(e["tokens_per_s"] for e in windows) / max(1, len(windows))
    return {"tokens_per_s": tps, "params": result.summary["params"]}


def run_plain_torch(manifest, args, tokenizer_dir: Path) -> dict:
    """The same model and data in one process: AdamW, bf16 autocast on GPU (and on CPUs with
    native bf16, as our loop), no DeepSpeed."""
    import torch

    from llm_core.device import training_precision
    from llm_core.tokenizer import load_hf_tokenizer
    from workers.training.data import train_batches
    from workers.training.encode import Encoder
    from workers.training.metrics import model_flops_per_token
    from workers.training.model import build_model, causal_lm_of
    from workers.training.optim import build_optimizer

    device = args.device
    if device == "cpu":
        # A Ray Train worker with 1 CPU runs torch on 1 thread (OMP_NUM_THREADS=1); match it, or
        # the comparison measures thread oversubscription instead of the training loop.
        torch.set_num_threads(1)
    tok = load_hf_tokenizer(tokenizer_dir)
    config = manifest.training_config()
    model = build_model(config, tok, None, None, seed=0).to(device)
    opt = build_optimizer(model, config.optimizer, offload=False)
    batches = train_batches(config, Encoder(config, tok, None), rank=0, world=1)
    # GPU: bf16 autocast (our loop: DeepSpeed bf16); CPU: what our loop picks (bf16 autocast
    # where bf16 is native), so both sides compute alike.
    autocast = torch.bfloat16 if device == "cuda" else training_precision(device, manifest.deepspeed.precision).autocast
    timed = _timed_steps(model, opt, batches, args.steps, args.warmup, device, config.objective, autocast,
                         manifest.deepspeed.gradient_clipping)
    lm = causal_lm_of(model)
    return {**timed, "flops_per_token": model_flops_per_token(model, lm.config, args.seq_len)}


def _timed_steps(model, opt, batches, steps: int, warmup: int, device: str, objective, autocast,
                 clip: float) -> dict:
    """Train `steps` micro-batches, timing those after `warmup`. Tokens are counted on the host
    batch before it moves, and the loss stays on the device until the end: no sync per step."""
    import torch

    from workers.training.eval import forward_loss

    tokens, slots, t0, c0, loss = 0, 0, time.perf_counter(), time.process_time(), None
    for step in range(steps):
        if step == warmup:
            _sync(device)
            tokens, slots, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
        host = next(batches)
        tokens += int(host["attention_mask"].sum())
        slots += host["attention_mask"].numel()
        batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        loss, _ = forward_loss(model, batch, objective, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds per step (all threads) beside wall time: on a shared machine, a step slower in
    # wall time but not in CPU time was waiting for cores others held.
    return {"tokens_per_s": tokens / elapsed, "s_per_step": elapsed / max(1, steps - warmup),
            "cpu_s_per_step": cpu / max(1, steps - warmup),
            "padding": 1 - tokens / max(1, slots), "loss": float(loss.detach())}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model", choices=[*SHAPES, "builtin"], default="tiny",
                   help="builtin: SmolLM2-135M (--sft only)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="our loop's Ray Train workers (plain torch: 1)")
    p.add_argument("--data", type=Path, default=SAMPLE)
    p.add_argument("--peak-tflops", type=float, default=None, help="per device; default: known GPUs only")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder layers (both sides)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--sft", action="store_true", help="SFT rows: full/LoRA x fp32/bf16 autocast x packing")
    p.add_argument("--adapters", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--packing", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None, help="--sft: torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.peak_tflops:
        os.environ["LLMBATCH_PEAK_FLOPS"] = str(args.peak_tflops * 1e12)
    if args.sft:
        if args.model == "0.5b":
            p.error("--sft takes --model builtin or tiny")
        from benchmarks.train_sft import report

        return report(args)
    if args.model == "builtin":
        p.error("--model builtin is for --sft")

    from jobs.manifest import parse_manifest
    from jobs.run.training import TOKENIZER_DIR
    from workers.training.metrics import mfu, peak_flops

    work = Path(tempfile.mkdtemp(prefix="llmbatch-bench-train-"))
    try:
        manifest = parse_manifest(manifest_dict(args, work))
        ours = run_ours(manifest, args)
        torch_side = run_plain_torch(manifest, args, work / "ckpt" / TOKENIZER_DIR)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_params = ours["params"]
    f_tok = torch_side["flops_per_token"]  # the same module on both sides
    peak = peak_flops(args.device)
    rows = {
        "plain torch (1 process)": (torch_side["tokens_per_s"], mfu(torch_side["tokens_per_s"], f_tok, 1, peak)),
        f"llmbatch ZeRO-2 ({args.workers} worker)": (ours["tokens_per_s"], mfu(ours["tokens_per_s"], f_tok, args.workers, peak)),
    }
    if args.json:
        print(json.dumps({"model": args.model, "device": args.device, "params": n_params,
                          "rows": {k: {"tokens_per_s": v[0], "mfu": v[1]} for k, v in rows.items()}}))
        return 0
    print(f"model {args.model} ({n_params / 1e6:.2f}M params), device {args.device}, seq {args.seq_len}, "
          f"micro-batch {args.micro_batch}, {args.steps} steps ({args.warmup} warm-up)")
    print(f"{'':32s}{'tokens/s':>12s}{'MFU':>8s}")
    for name, (tps, m) in rows.items():
        print(f"{name:32s}{tps:12.0f}{(f'{m:.1%}' if m is not None else 'n/a'):>8s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
