"""Quality of the built-in model, zero-shot, beside the model-free baselines, on Debian data.

    .venv/bin/python -m benchmarks.quality [--data /work/shared/datasets/debian] [--limit 200]

The eval split is the fixed 10% hash split of `benchmarks.quality_baselines` (sha1 of `id`);
each task takes the first `--limit` eval rows (file order), and every system is scored on the
same rows. The TF-IDF classifier is fitted on the whole train split. The model runs through
the `LLM` facade in this process (no Ray): greedy, the tasks' default sampling, on the CPU
unless a GPU is there. Prints a markdown table (ROUGE and accuracy/macro-F1 in [0, 1], BLEU
and chrF on the 0-100 scale) and, with --json, every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.quality_baselines import DEFAULT_DATA, split_rows
from llm_core.baselines import TfidfClassifier, identity_translations, lead_sentence_summaries
from llm_core.metrics.compute import compute_metrics
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskSpec, default_sampling

MODEL = "builtin:smollm2-135m-instruct"
COLUMNS = {
    "summarize": ["rouge1", "rouge2", "rougeL"],
    "classify": ["accuracy", "macro_f1"],
    "translate": ["bleu", "chrf"],
}
MAX_NEW_TOKENS = {"summarize": 48, "classify": 1, "translate": 256}


def sampling(task: str) -> SamplingParams:
    return SamplingParams(max_new_tokens=MAX_NEW_TOKENS[task], temperature=0.0, seed=0, **default_sampling(task))


def run_model(llm, spec: TaskSpec, texts: list[str], languages: list[str] | None = None) -> tuple[list, dict]:
    started = time.perf_counter()
    results = llm.run_task(spec, texts, sampling(spec.kind), target_languages=languages)
    wall = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    stats = {"wall_s": round(wall, 1), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
             "error_rows": sum(r.error is not None for r in results),
             "hit_max_new_tokens": sum(r.finish_reason == "length" for r in results)}
    return [r.output for r in results], stats


def score(task: str, outputs: list, references: list, **extra) -> dict:
    return {**compute_metrics(task, outputs, references, COLUMNS[task]), **extra}


def summarize(data: Path, limit: int, llm) -> dict:
    _, evaluation = split_rows(data / "summarize.parquet")
    rows = evaluation[:limit]
    texts, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
    out = {"lead sentence": score("summarize", lead_sentence_summaries(texts), refs)}
    if llm is not None:
        outputs, stats = run_model(llm, TaskSpec("summarize"), texts)
        out["SmolLM2-135M zero-shot"] = score("summarize", outputs, refs, **stats)
    return out


def classify(data: Path, limit: int, llm) -> dict:
    train, evaluation = split_rows(data / "classify.parquet")
    rows = evaluation[:limit]
    texts, refs = [r["text"] for r in rows], [r["label"] for r in rows]
    labels = tuple(sorted({r["label"] for r in train}))
    classifier = TfidfClassifier().fit([r["text"] for r in train], [r["label"] for r in train])
    out = {f"TF-IDF + LR (train {len(train)})": score("classify", classifier.predict(texts), refs)}
    if llm is not None:
        outputs, stats = run_model(llm, TaskSpec("classify", labels=labels), texts)
        out["SmolLM2-135M zero-shot"] = score("classify", outputs, refs, **stats)
    return out


def translate(data: Path, limit: int, llm) -> dict:
    _, evaluation = split_rows(data / "translate.parquet")
    rows = evaluation[:limit]
    texts, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
    languages = [r["target_language"] for r in rows]
    out = {"identity": score("translate", identity_translations(texts), refs)}
    if llm is not None:
        outputs, stats = run_model(llm, TaskSpec("translate"), texts, languages)
        out["SmolLM2-135M zero-shot"] = score("translate", outputs, refs, **stats)
    return out


def markdown(results: dict) -> str:
    lines = ["| task | system | rows | metrics | model wall s (tok/s) |", "|---|---|---|---|---|"]
    for task, systems in results.items():
        for system, m in systems.items():
            figures = ", ".join(
                f"{name} {m[name]:.4f}" if name not in ("bleu", "chrf") else f"{name} {m[name]:.2f}"
                for name in COLUMNS[task]
            )
            errors = f" ({m['errors']} error rows)" if m.get("errors") else ""
            speed = f"{m['wall_s']} ({m['tokens_per_s']})" if "wall_s" in m else "-"
            lines.append(f"| {task} | {system} | {m['scored']}{errors} | {figures} | {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the Debian Parquet files")
    parser.add_argument("--limit", type=int, default=200, help="eval rows per task (the model is slow on CPU)")
    parser.add_argument("--tasks", nargs="+", default=["summarize", "classify", "translate"],
                        choices=["summarize", "classify", "translate"])
    parser.add_argument("--baselines-only", action="store_true", help="skip the model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = parser.parse_args()

    llm = None
    if not args.baselines_only:
        import torch

        from llm_core.llm import LLM
        from workers.model_resolver import resolve_model

        if args.threads:
            torch.set_num_threads(args.threads)
        llm = LLM(resolve_model(MODEL), engine="auto", batch_size=16)
    runners = {"summarize": summarize, "classify": classify, "translate": translate}
    results = {}
    for task in args.tasks:
        started = time.perf_counter()
        results[task] = runners[task](args.data, args.limit, llm)
        print(f"# {task} done in {time.perf_counter() - started:.0f} s", flush=True)
    print(markdown(results))
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
