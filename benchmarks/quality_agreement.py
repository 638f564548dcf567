"""How often two runs of benchmarks/quality.py gave the same output on the same rows (for example
bf16 vs `--quantization w8a8`): both written with `--outputs FILE`.

    .venv/bin/python -m benchmarks.quality_agreement bf16.jsonl w8a8.jsonl

Per task and system: rows compared, the share with the same output (classify: label agreement),
and for generated text the mean ROUGE-L of one run's output against the other's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_core.metrics.compute import compute_metrics


def read(path: Path) -> dict[tuple[str, str], dict[int, object]]:
    runs: dict[tuple[str, str], dict[int, object]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        runs.setdefault((record["task"], record["system"]), {})[record["row"]] = record["output"]
    return runs


def compare(first: Path, second: Path) -> list[dict]:
    """Per (task, system) both files hold: rows in both, share of equal outputs, ROUGE-L (text tasks)."""
    a_runs, b_runs = read(first), read(second)
    table = []
    for key in sorted(a_runs.keys() & b_runs.keys()):
        rows = sorted(a_runs[key].keys() & b_runs[key].keys())
        a, b = [a_runs[key][r] for r in rows], [b_runs[key][r] for r in rows]
        rouge = None if key[0] == "classify" else compute_metrics("summarize", a, b, ["rougeL"])["rougeL"]
        table.append({"task": key[0], "system": key[1], "rows": len(rows),
                      "same": sum(x == y for x, y in zip(a, b)) / max(len(rows), 1), "rougeL": rouge})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    print("| task | system | rows | same output | ROUGE-L of one against the other |")
    print("|---|---|---|---|---|")
    for r in compare(args.first, args.second):
        rouge = "-" if r["rougeL"] is None else f"{r['rougeL']:.4f}"
        print(f"| {r['task']} | {r['system']} | {r['rows']} | {r['same']:.3f} | {rouge} |")


if __name__ == "__main__":
    main()
