"""Fine-tuning speed side by side (`benchmarks/train.py --sft`): full vs LoRA, fp32 vs bf16
autocast, packing off/on, on the built-in SmolLM2-135M (`--model builtin`) or a tiny decoder with
its tokenizer (`--model tiny`).

SFT on Debian summaries (prompt: the headline instruction of llm_core.tasks, response: the
reference), in one process, each row on the same samples and the same training code as a job
(build_model, whose LoRA is llm_core.models.lora; the encoder and collation; forward_loss with
the autocast training_precision picks), timed by benchmarks.train's plain loop. Select rows with
--adapters, --precisions, --packing.

    python benchmarks/train.py --sft --model builtin --steps 4 --warmup 1 --micro-batch 16 --seq-len 512 --lora-dropout 0
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.train import BUILTIN, REPO, SAMPLE, SHAPES, _threads, _timed_steps

# Prompt/response rows (the LoRA example's), else a file of text/reference rows to build them from.
SFT_DATA = [REPO / "examples" / "data" / "debian-summarize-train.parquet",
            REPO.parent / "shared" / "datasets" / "debian" / "summarize.parquet",
            REPO / "examples" / "data" / "debian-summarize.parquet"]


def report(args) -> int:
    """Run the matrix and print it (a table, or one JSON object with --json)."""
    rows = run_sft_matrix(args)
    if args.json:
        print(json.dumps({"model": args.model, "device": args.device, "rows": rows}))
    else:
        print_sft(rows, args)
    return 0


def sft_rows(path: Path, limit: int) -> list[dict]:
    """Up to `limit` {prompt, response} rows: as stored, or built from text/reference with the
    headline instruction inference uses for `task: summarize, style: headline`."""
    import pyarrow.parquet as pq

    from llm_core.tasks import TaskSpec, user_message

    table = pq.read_table(path)
    rows = table.slice(0, limit).to_pylist()
    if {"prompt", "response"} <= set(table.column_names):
        return [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    spec = TaskSpec(kind="summarize", style="headline")
    return [{"prompt": user_message(spec, r["text"]), "response": r["reference"]} for r in rows]


def sft_manifest(args, data: Path, work: Path, adapter: bool) -> dict:
    model = ({"uri": BUILTIN} if args.model == "builtin" else
             {"vocab": BUILTIN, **{k: v for k, v in SHAPES["tiny"].items() if k not in ("vocab", "vocab_size")}})
    d = {
        "version": 1, "kind": "training", "name": "bench-sft", "objective": "sft", "model": model,
        "task": "finetune" if args.model == "builtin" else "pretrain",
        "data": {"train": str(data), "seq_len": args.seq_len},
        "optimizer": {"lr": 1e-4, "schedule": "constant"},
        "training": {"micro_batch": args.micro_batch, "max_steps": args.steps},
        "deepspeed": {"zero_stage": 0},
        "checkpoint": {"uri": str(work / "ckpt")}, "output": {"uri": str(work / "model"), "mode": "overwrite"},
    }
    if adapter and args.model == "builtin":
        d["adapter"] = {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank, "dropout": args.lora_dropout}
    return d


def run_sft_matrix(args) -> list[dict]:
    """One row per (adapter, precision, packing), each on the same first samples of the data."""
    import dataclasses
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from jobs.manifest import parse_manifest
    from llm_core.device import cpu_bf16_native
    from llm_core.models.lora import add_lora
    from llm_core.tokenizer import load_hf_tokenizer
    from workers.model_resolver import resolve_model
    from workers.training.config import LORA_TARGET_NAMES
    from workers.training.encode import Encoder
    from workers.training.metrics import model_flops_per_token
    from workers.training.model import build_model, causal_lm_of
    from workers.training.optim import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data if args.data != SAMPLE else next(p for p in SFT_DATA if p.is_file())
    work = Path(tempfile.mkdtemp(prefix="llmbatch-bench-sft-"))
    out = []
    try:
        sft_file = work / "sft.parquet"
        pq.write_table(pa.Table.from_pylist(sft_rows(data, args.micro_batch * args.steps * 4)), sft_file)
        model_dir = resolve_model(BUILTIN)
        tok = load_hf_tokenizer(model_dir)
        for adapter, precision, packing in itertools.product(args.adapters, args.precisions, args.packing):
            config = parse_manifest(sft_manifest(args, sft_file, work, adapter == "lora")).training_config()
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, packing=packing == "on"))
            module = build_model(config, tok, model_dir if args.model == "builtin" else None, None, seed=0)
            lm = causal_lm_of(module)
            if adapter == "lora" and config.adapter is None:  # tiny: a pretrain shape, no manifest adapter
                add_lora(lm.model, args.lora_rank, 2.0 * args.lora_rank, args.lora_dropout, LORA_TARGET_NAMES)
            module.to(args.device).train()
            opt = build_optimizer(module, config.optimizer, offload=False)
            encoder = Encoder(config, tok, None)
            samples = [s for s in encoder.samples(iter(pq.read_table(sft_file).to_pylist()))]
            batches = iter([encoder.collate(samples[i:i + args.micro_batch])
                            for i in range(0, args.micro_batch * args.steps, args.micro_batch)])
            autocast = torch.bfloat16 if precision == "bf16" else None
            timed = _timed_steps(module, opt, batches, args.steps, args.warmup, args.device, config.objective,
                                 autocast, config.deepspeed.gradient_clipping)
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            out.append({"adapter": adapter, "precision": "bf16-autocast" if autocast else "fp32",
                        "packing": packing, "trainable_params": trainable,
                        "flops_per_token": model_flops_per_token(module, lm.config, args.seq_len), **timed})
            del module, opt
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in out:
        row["cpu_bf16_native"] = cpu_bf16_native()
    return out


def print_sft(rows: list[dict], args) -> None:
    from workers.training.metrics import mfu, peak_flops

    peak = peak_flops(args.device)
    print(f"SFT {args.model}, device {args.device}, seq {args.seq_len}, micro-batch {args.micro_batch} samples, "
          f"{args.steps} steps ({args.warmup} warm-up), torch threads {_threads()}")
    print(f"{'adapter':8s}{'precision':>15s}{'packing':>9s}{'tokens/s':>10s}{'s/step':>8s}{'CPU s/step':>11s}"
          f"{'padding':>9s}{'loss':>8s}{'MFU':>8s}")
    for r in rows:
        m = mfu(r["tokens_per_s"], r["flops_per_token"], 1, peak)
        m_text = f"{m:.1%}" if m is not None else "n/a"
        print(f"{r['adapter']:8s}{r['precision']:>15s}{r['packing']:>9s}{r['tokens_per_s']:10.0f}"
              f"{r['s_per_step']:8.2f}{r['cpu_s_per_step']:11.2f}{r['padding']:9.1%}{r['loss']:8.3f}{m_text:>8s}")
