"""Quality of the model-free baselines on the Debian dataset: the floor a model must beat.

    .venv/bin/python -m benchmarks.quality_baselines [--data /work/shared/datasets/debian]

Each task is split by a hash of `id` (sha1, last byte < 26 -> eval, about 10%), so the split
is stable across runs and machines. Prints, on the eval split:
- classify:  TF-IDF + logistic regression fitted on the train split: accuracy, macro-F1
- summarize: lead sentence of the description vs. the synopsis: ROUGE-1/2/L
- translate: identity "translation" (the English source) vs. the human one: BLEU, chrF
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from llm_core.baselines import TfidfClassifier, identity_translations, lead_sentence_summaries
from llm_core.metrics.compute import compute_metrics

DEFAULT_DATA = Path("/work/shared/datasets/debian")
EVAL_LAST_BYTE_BELOW = 26  # 26/256 = 10.2% of ids


def is_eval(row_id: str) -> bool:
    return hashlib.sha1(row_id.encode("utf-8")).digest()[-1] < EVAL_LAST_BYTE_BELOW


def split_rows(path: Path) -> tuple[list[dict], list[dict]]:
    rows = pq.read_table(path).to_pylist()
    train = [row for row in rows if not is_eval(row["id"])]
    evaluation = [row for row in rows if is_eval(row["id"])]
    return train, evaluation


def classify_baseline(data: Path) -> dict:
    train, evaluation = split_rows(data / "classify.parquet")
    started = time.perf_counter()
    classifier = TfidfClassifier().fit([row["text"] for row in train], [row["label"] for row in train])
    fit_s = time.perf_counter() - started
    predictions = classifier.predict([row["text"] for row in evaluation])
    metrics = compute_metrics(
        "classify", predictions, [row["label"] for row in evaluation], ["accuracy", "macro_f1"]
    )
    return {"train_rows": len(train), "eval_rows": len(evaluation), "fit_s": round(fit_s, 1), **metrics}


def summarize_baseline(data: Path) -> dict:
    _, evaluation = split_rows(data / "summarize.parquet")
    summaries = lead_sentence_summaries([row["text"] for row in evaluation])
    metrics = compute_metrics("summarize", summaries, [row["reference"] for row in evaluation])
    return {"eval_rows": len(evaluation), **metrics}


def translate_baseline(data: Path) -> dict:
    _, evaluation = split_rows(data / "translate.parquet")
    result: dict = {"eval_rows": len(evaluation)}
    languages = sorted({row["target_language"] for row in evaluation})
    for language in ["all", *languages]:
        rows = [row for row in evaluation if language in ("all", row["target_language"])]
        outputs = identity_translations([row["text"] for row in rows])
        metrics = compute_metrics("translate", outputs, [row["reference"] for row in rows])
        result[language] = {"rows": len(rows), "bleu": metrics["bleu"], "chrf": metrics["chrf"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the Debian Parquet files")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    classify = classify_baseline(args.data)
    summarize = summarize_baseline(args.data)
    translate = translate_baseline(args.data)
    if args.json:
        print(json.dumps({"classify": classify, "summarize": summarize, "translate": translate}, indent=2))
        return
    print(
        f"classify  TF-IDF+LR      train {classify['train_rows']}, eval {classify['eval_rows']}: "
        f"accuracy {classify['accuracy']:.4f}, macro-F1 {classify['macro_f1']:.4f} (fit {classify['fit_s']} s)"
    )
    print(
        f"summarize lead sentence  eval {summarize['eval_rows']}: ROUGE-1 {summarize['rouge1']:.4f}, "
        f"ROUGE-2 {summarize['rouge2']:.4f}, ROUGE-L {summarize['rougeL']:.4f}"
    )
    for language, scores in translate.items():
        if language != "eval_rows":
            print(
                f"translate identity {language:>3}  eval {scores['rows']}: "
                f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}"
            )


if __name__ == "__main__":
    main()
