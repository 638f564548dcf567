"""Fine-tune the built-in SmolLM2-135M on Debian data, then score it on held-out rows beside
zero-shot prompting of the same model and the model-free baseline (issue 5's quality targets).

    # (a) sections: classifier head vs zero-shot label scoring vs TF-IDF + LR (target: beat TF-IDF)
    python benchmarks/finetune.py --objective classification --gpus-per-worker 1
    # (b) synopses: SFT on description -> synopsis vs zero-shot vs lead sentence (target: beat lead)
    python benchmarks/finetune.py --objective sft --gpus-per-worker 1
    # plumbing check on a CPU: a few steps on a few rows (the figures mean nothing)
    python benchmarks/finetune.py --objective sft --train-limit 64 --max-steps 2 --eval-limit 8

Training runs as a real training job (Ray Train + DeepSpeed, `jobs.run.training`) on the train
side of the fixed 10% hash split of `benchmarks.quality_baselines` (sha1 of `id`); every system
is scored on the same eval rows, which the fine-tune never sees. The SFT prompt is the one the
`summarize` task builds (style --style), so the tuned model runs in a plain summarize job. The
last line is `finetune_vs_baseline=<fine-tuned / baseline>` (accuracy, or ROUGE-L).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quality import MODEL, markdown, run_model, score  # noqa: E402
from benchmarks.quality_baselines import DEFAULT_DATA, split_rows  # noqa: E402
from llm_core.baselines import TfidfClassifier, lead_sentence_summaries  # noqa: E402
from llm_core.tasks import TaskSpec, user_message  # noqa: E402

TASK = {"classification": "classify", "sft": "summarize"}
HEADLINE_METRIC = {"classify": "accuracy", "summarize": "rougeL"}


def write_train_file(objective: str, train: list[dict], style: str, path: Path) -> None:
    if objective == "classification":
        table = pa.table({"id": [r["id"] for r in train], "text": [r["text"] for r in train],
                          "label": [r["label"] for r in train]})
    else:
        spec = TaskSpec("summarize", style=style)
        table = pa.table({"id": [r["id"] for r in train],
                          "prompt": [user_message(spec, r["text"]) for r in train],
                          "response": [r["reference"] for r in train]})
    pq.write_table(table, path, row_group_size=1000)


def training_manifest(args, train_path: Path, work: Path) -> dict:
    steps = {"max_steps": args.max_steps} if args.max_steps else {"epochs": args.epochs}
    return {
        "version": 1, "kind": "training", "name": f"bench-finetune-{args.objective}",
        "task": "finetune", "objective": args.objective, "model": {"uri": MODEL},
        "data": {"train": str(train_path), "eval_fraction": 0.02, "seq_len": args.seq_len},
        "optimizer": {"lr": args.lr, "weight_decay": 0.01, "warmup_steps": args.warmup, "schedule": "cosine"},
        "training": {"micro_batch": args.micro_batch, "grad_accum": args.grad_accum, "log_every": 10, **steps},
        "deepspeed": {"zero_stage": 2, "precision": "auto"},
        "resources": {"workers": args.workers, "gpus_per_worker": args.gpus_per_worker},
        "checkpoint": {"uri": str(work / "checkpoints"), "every_steps": 10**6, "keep": 1},
        "output": {"uri": str(work / "model"), "mode": "overwrite"},
    }


def fine_tune(args, train: list[dict], work: Path) -> tuple[Path, dict]:
    from cluster import ray_cluster
    from jobs.manifest import parse_manifest
    from jobs.run.training import run_training

    train_path = work / "train.parquet"
    write_train_file(args.objective, train, args.style, train_path)
    ray_cluster.connect(args.ray_address)
    started = time.perf_counter()
    result = run_training(parse_manifest(training_manifest(args, train_path, work)), show_progress=True)
    if result.status != "succeeded":
        raise SystemExit(f"fine-tune failed: {result.error}")
    return work / "model", {"train_wall_s": round(time.perf_counter() - started, 1), **result.summary}


def systems(args, task: str, rows: list[dict], train: list[dict], tuned: Path) -> dict:
    """Each system's metrics on `rows`: baseline, zero-shot, fine-tuned."""
    from llm_core.llm import LLM
    from workers.model_resolver import resolve_model

    texts = [r["text"] for r in rows]
    if task == "classify":
        from workers.inference.classifier_head import load_classifier

        refs = [r["label"] for r in rows]
        labels = tuple(sorted({r["label"] for r in train}))
        tfidf = TfidfClassifier().fit([r["text"] for r in train], [r["label"] for r in train])
        spec = TaskSpec("classify", labels=labels)
        out = {"TF-IDF + LR": score(task, tfidf.predict(texts), refs)}
        zero_shot = LLM(resolve_model(MODEL), engine="auto", batch_size=args.batch_size)
        out["zero-shot"] = score(task, *_first(run_model(zero_shot, spec, texts)), refs)
        out["fine-tuned"] = score(task, *_first(run_model(load_classifier(tuned), spec, texts)), refs)
        return out
    refs = [r["reference"] for r in rows]
    spec = TaskSpec("summarize", style=args.style)
    out = {"lead sentence": score(task, lead_sentence_summaries(texts), refs)}
    zero_shot = LLM(resolve_model(MODEL), engine="auto", batch_size=args.batch_size)
    out["zero-shot"] = score(task, *_first(run_model(zero_shot, spec, texts)), refs)
    tuned_llm = LLM(tuned, engine="auto", batch_size=args.batch_size)
    out["fine-tuned"] = score(task, *_first(run_model(tuned_llm, spec, texts)), refs)
    return out


def _first(outputs_and_stats: tuple[list, dict]) -> tuple[list]:
    """run_model's outputs, for score(); its timing stats go to the log line, not the table."""
    outputs, stats = outputs_and_stats
    print(f"# model run: {json.dumps(stats)}", flush=True)
    return (outputs,)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objective", choices=list(TASK), required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--style", default="headline", help="summarize style of the SFT prompt and of inference")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="instead of --epochs")
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=384)
    p.add_argument("--train-limit", type=int, default=None, help="first N train rows only")
    p.add_argument("--eval-limit", type=int, default=None, help="first N eval rows only")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--keep", type=Path, default=None, help="copy the fine-tuned model folder here")
    args = p.parse_args(argv)

    task = TASK[args.objective]
    train, evaluation = split_rows(args.data / f"{task}.parquet")
    train, rows = train[: args.train_limit], evaluation[: args.eval_limit]
    work = Path(tempfile.mkdtemp(prefix="llmbatch-bench-finetune-"))
    try:
        tuned, summary = fine_tune(args, train, work)
        results = {task: systems(args, task, rows, train, tuned)}
        if args.keep:
            shutil.copytree(tuned, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# fine-tune: {json.dumps({k: summary.get(k) for k in ('steps', 'train_wall_s', 'first_loss', 'last_loss', 'eval')}, default=str)}")
    print(f"# train rows {len(train)}, eval rows {len(rows)}, objective {args.objective}")
    print(markdown(results))
    metric = HEADLINE_METRIC[task]
    baseline = next(iter(results[task].values()))[metric]
    print(f"finetune_vs_baseline={results[task]['fine-tuned'][metric] / max(baseline, 1e-9):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
