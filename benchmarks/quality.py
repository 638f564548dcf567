"""Quality of the built-in model (zero-shot, few-shot, calibrated or not) beside the model-free
baselines, on Debian data.

    .venv/bin/python -m benchmarks.quality [--data /work/shared/datasets/debian] [--limit 200]
    # one task, some systems (each model system is a full pass over the rows: pick what you need)
    .venv/bin/python -m benchmarks.quality --tasks summarize --systems baseline zero-shot few-shot
    .venv/bin/python -m benchmarks.quality --tasks classify \
        --systems baseline zero-shot zero-shot-uncalibrated few-shot few-shot-uncalibrated
    # a quick check that every row runs
    .venv/bin/python -m benchmarks.quality --limit 8 --tasks summarize classify
    # a fine-tuned model folder (e.g. make finetune-demo's) in the same table, same prompt style
    .venv/bin/python -m benchmarks.quality --tasks summarize --systems baseline zero-shot \
        --model out/finetune-lora-summarize-debian/model --model-name "SmolLM2-135M LoRA SFT"

Systems: `baseline` (lead sentence / TF-IDF + LR / identity), `zero-shot`, `few-shot` (k examples
per row, `--select similar` by TF-IDF cosine or `random`, from the train split) and, for
classify, `zero-shot-uncalibrated` / `few-shot-uncalibrated` (raw label scores) and
`zero-shot-content-free` / `few-shot-content-free` (contextual calibration, Zhao et al. 2021); the
others use the default calibration, `batch` (llm_core.calibration), its prior measured on a sample
of the rows drawn as a job's driver draws it (all of them up to CALIBRATION_ROWS). The few-shot pool is the train split
sampled down as a job's driver does for `task.examples.uri` (llm_core.fewshot.MAX_POOL rows,
seeded), each example cut to `--max-example-tokens`.

The eval split is the fixed 10% hash split of `benchmarks.quality_baselines` (sha1 of `id`);
each task takes the first `--limit` eval rows (file order), and every system is scored on the
same rows. The TF-IDF classifier is fitted on the whole train split. The model runs through
the `LLM` facade in this process (no Ray): greedy, the tasks' default sampling, on the CPU
unless a GPU is there. Prints a markdown table (ROUGE and accuracy/macro-F1 in [0, 1], BLEU
and chrF on the 0-100 scale) and, with --json, every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

from benchmarks.quality_baselines import DEFAULT_DATA, split_rows
from llm_core.baselines import TfidfClassifier, identity_translations, lead_sentence_summaries
from llm_core.calibration import CALIBRATION_TEXT_CHARS, sample_indices
from llm_core.engine.sampling import SamplingParams
from llm_core.fewshot import CHARS_PER_TOKEN_BOUND, MAX_POOL, Example, FewShotSpec
from llm_core.metrics.compute import compute_metrics
from llm_core.tasks import TaskSpec, default_sampling

MODEL = "builtin:smollm2-135m-instruct"
COLUMNS = {
    "summarize": ["rouge1", "rouge2", "rougeL"],
    "classify": ["accuracy", "macro_f1"],
    "translate": ["bleu", "chrf"],
}
MAX_NEW_TOKENS = {"summarize": 48, "classify": 1, "translate": 256}
SYSTEMS = ("baseline", "zero-shot", "few-shot", "zero-shot-uncalibrated", "few-shot-uncalibrated",
           "zero-shot-content-free", "few-shot-content-free")
UNCALIBRATED = "-uncalibrated"  # classify only
CONTENT_FREE = "-content-free"  # classify only


@dataclasses.dataclass(frozen=True)
class Options:
    systems: tuple[str, ...] = SYSTEMS
    k: int = 3
    select: str = "similar"
    seed: int = 0
    max_example_tokens: int = 256
    model_name: str = "SmolLM2-135M"
    style: str = "headline"
    outputs: Path | None = None  # every model output as JSON lines (quality_agreement.py compares two)

    def wants(self, system: str) -> bool:
        return system in self.systems

    def fewshot(self, train: list[dict], output_key: str) -> FewShotSpec:
        """The train split as a job's examples file would be used (llm_core.fewshot, jobs.run.examples)."""
        rows = train if len(train) <= MAX_POOL else [
            train[i] for i in sorted(random.Random(self.seed).sample(range(len(train)), MAX_POOL))]
        cap = self.max_example_tokens * CHARS_PER_TOKEN_BOUND
        pool = tuple(Example(r["text"][:cap], r[output_key][:cap], r.get("target_language")) for r in rows)
        return FewShotSpec(pool, k=self.k, select=self.select, seed=self.seed,
                           max_example_tokens=self.max_example_tokens)

    def record(self, task: str, system: str, outputs: list) -> None:
        if self.outputs is not None:
            with self.outputs.open("a") as f:
                for row, output in enumerate(outputs):
                    f.write(json.dumps({"task": task, "system": system, "row": row, "output": output}) + "\n")

    def label(self, system: str) -> str:
        name = f"{self.model_name} " + system.removesuffix(UNCALIBRATED).removesuffix(CONTENT_FREE)
        if system.startswith("few-shot"):
            name += f" (k={self.k} {self.select} from train)"
        return name + (", uncalibrated" if system.endswith(UNCALIBRATED) else
                       ", content-free calibration" if system.endswith(CONTENT_FREE) else "")


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


def summarize(data: Path, limit: int, llm, options: Options) -> dict:
    train, evaluation = split_rows(data / "summarize.parquet")
    rows = evaluation[:limit]
    texts, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
    out = {"lead sentence": score("summarize", lead_sentence_summaries(texts), refs)} if options.wants("baseline") else {}
    for system in ("zero-shot", "few-shot"):
        if llm is not None and options.wants(system):
            fewshot = options.fewshot(train, "reference") if system == "few-shot" else None
            outputs, stats = run_model(llm, TaskSpec("summarize", style=options.style, fewshot=fewshot), texts)
            options.record("summarize", system, outputs)
            out[options.label(system)] = score("summarize", outputs, refs, **stats)
    return out


def classify(data: Path, limit: int, llm, options: Options) -> dict:
    train, evaluation = split_rows(data / "classify.parquet")
    rows = evaluation[:limit]
    texts, refs = [r["text"] for r in rows], [r["label"] for r in rows]
    labels = tuple(sorted({r["label"] for r in train}))
    out = {}
    if options.wants("baseline"):
        classifier = TfidfClassifier().fit([r["text"] for r in train], [r["label"] for r in train])
        out[f"TF-IDF + LR (train {len(train)})"] = score("classify", classifier.predict(texts), refs)
    for system in SYSTEMS[1:]:
        if llm is not None and options.wants(system):
            fewshot = options.fewshot(train, "label") if system.startswith("few-shot") else None
            spec = TaskSpec("classify", labels=labels, fewshot=fewshot, calibrate=calibration(system),
                            calibration_texts=tuple(texts[i][:CALIBRATION_TEXT_CHARS] for i in sample_indices(len(texts))))
            outputs, stats = run_model(llm, spec, texts)
            options.record("classify", system, outputs)
            out[options.label(system)] = score("classify", outputs, refs, **stats)
    return out


def calibration(system: str) -> bool | str:
    """A classify system's `calibrate`: raw scores, Zhao et al.'s, or the default (batch)."""
    return False if system.endswith(UNCALIBRATED) else "content_free" if system.endswith(CONTENT_FREE) else True


def translate(data: Path, limit: int, llm, options: Options) -> dict:
    train, evaluation = split_rows(data / "translate.parquet")
    rows = evaluation[:limit]
    texts, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
    languages = [r["target_language"] for r in rows]
    out = {"identity": score("translate", identity_translations(texts), refs)} if options.wants("baseline") else {}
    for system in ("zero-shot", "few-shot"):
        if llm is not None and options.wants(system):
            fewshot = options.fewshot(train, "reference") if system == "few-shot" else None
            outputs, stats = run_model(llm, TaskSpec("translate", fewshot=fewshot), texts, languages)
            options.record("translate", system, outputs)
            out[options.label(system)] = score("translate", outputs, refs, **stats)
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
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS,
                        help="what to run (the *-uncalibrated and *-content-free ones are classify only)")
    parser.add_argument("--baselines-only", action="store_true", help="skip the model (--systems baseline)")
    parser.add_argument("--k", type=int, default=3, help="few-shot: examples per row")
    parser.add_argument("--select", choices=["similar", "random"], default="similar", help="few-shot selection")
    parser.add_argument("--seed", type=int, default=0, help="few-shot: pool sample and random draws")
    parser.add_argument("--max-example-tokens", type=int, default=256, help="few-shot: cap per example")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", default=MODEL, help="a model reference or folder (default: the built-in model)")
    parser.add_argument("--model-name", default="SmolLM2-135M", help="the model's name in the table")
    parser.add_argument("--style", default="headline", choices=["headline", "one_sentence", "short_paragraph"],
                        help="summarize prompt style (the demo's and the LoRA example's: headline)")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), bfloat16 (fast on CPUs with bf16)")
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "w8a8"], help="native engine weights")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    parser.add_argument("--outputs", type=Path, default=None,
                        help="append every model output to this file as JSON lines (benchmarks/quality_agreement.py)")
    args = parser.parse_args()
    options = Options(systems=("baseline",) if args.baselines_only else tuple(args.systems), k=args.k,
                      select=args.select, seed=args.seed, max_example_tokens=args.max_example_tokens,
                      model_name=args.model_name, style=args.style, outputs=args.outputs)

    llm = None
    if any(system != "baseline" for system in options.systems):
        import torch

        from llm_core.llm import LLM
        from workers.model_resolver import resolve_model

        if args.threads:
            torch.set_num_threads(args.threads)
        llm = LLM(resolve_model(args.model), engine="auto", batch_size=16, dtype=args.dtype,
                  quantization=args.quantization)
    runners = {"summarize": summarize, "classify": classify, "translate": translate}
    results = {}
    for task in args.tasks:
        started = time.perf_counter()
        results[task] = runners[task](args.data, args.limit, llm, options)
        print(f"# {task} done in {time.perf_counter() - started:.0f} s", flush=True)
    print(markdown(results))
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
