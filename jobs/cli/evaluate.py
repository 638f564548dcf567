"""Commands on finished outputs: `eval` (score against references) and `report` (one HTML page).

Both read the published snapshot (the files `_SUCCESS.json` or `_PARTIAL.json` lists), never the
folder; `report` of an output with nothing published yet shows the running run's parts so far."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from llm_core.metrics import KNOWN_METRICS
from llm_core.tasks import OUTPUT_COLUMN, TaskKind


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="score an output's published snapshot against references; writes _metrics.json")
    ev.add_argument("output", metavar="OUTPUT_URI", help="an output location (local path or s3://)")
    ev.add_argument("--references", nargs="+", default=None, metavar="URI",
                    help="Parquet file(s)/folder/glob with the id and reference columns, joined by id "
                         "(default: the reference column of the job's own input, row for row)")
    ev.add_argument("--column", default=None, help="reference column (default: the manifest's evaluate block, "
                                                    "else 'reference')")
    ev.add_argument("--id-column", default=None, help="id column (default: the manifest's input.id_column, else 'id')")
    ev.add_argument("--task", choices=list(OUTPUT_COLUMN), default=None, help="default: the task in _manifest.json")
    ev.add_argument("--metrics", nargs="+", choices=KNOWN_METRICS, default=None, help="default: the task's")
    ev.add_argument("--use-stemmer", action="store_true", help="Porter stemming for ROUGE")
    ev.add_argument("--no-write", action="store_true", help="print only; do not write _metrics.json")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="one self-contained HTML report of an output's published snapshot")
    rep.add_argument("output", metavar="OUTPUT_URI")
    rep.add_argument("--out", default=None, help="where to write it (default: OUTPUT_URI/report.html)")
    rep.add_argument("--sample", type=int, default=20, help="rows in the sample of inputs beside outputs")
    rep.add_argument("--title", default=None)
    rep.set_defaults(func=cmd_report)


def cmd_eval(args) -> int:
    # Imported here: scoring and the report pull in scikit-learn, rouge-score and matplotlib (seconds),
    # which every other command (and `--help`) should not wait for.
    from jobs.evaluation.scoring import evaluate_output
    from workers.output.location import OutputLocation

    output = OutputLocation.at(args.output)
    manifest = (output.read_manifest() or {}).get("manifest") or {}
    inputs, evaluate = manifest.get("input") or {}, manifest.get("evaluate") or {}
    task = args.task or (manifest.get("task") or {}).get("kind")
    # No --references: the manifest's, else the job's own input (lined up by shard).
    references = args.references or evaluate.get("references_uri")
    if not task or not (references or manifest):
        print(f"error: {args.output} has no _manifest.json: give --task and --references", file=sys.stderr)
        return 2
    try:
        metrics = evaluate_output(
            output, task=TaskKind(task),
            references_uri=references[0] if isinstance(references, list) and len(references) == 1 else references,
            reference_column=args.column or evaluate.get("reference_column") or "reference",
            id_column=args.id_column or inputs.get("id_column") or "id",
            metrics=args.metrics or evaluate.get("metrics"), use_stemmer=args.use_stemmer,
            write=not args.no_write,
        )
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        print_metrics(metrics)
    return 0


def print_metrics(metrics: dict, file=None) -> None:
    console = Console(file=file or sys.stdout)
    table = Table(title=f"{metrics.get('task')}: {metrics.get('scored')} of {metrics.get('rows')} rows scored")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if isinstance(value, float):
            table.add_row(name, f"{value:.2f}" if name in ("bleu", "chrf") else f"{value:.4f}")
        elif isinstance(value, int) and name != "task":
            table.add_row(name, str(value))
    console.print(table)
    per_label = metrics.get("per_label")
    if isinstance(per_label, dict) and per_label:
        labels = Table(title="per label")
        for column in ("label", "precision", "recall", "F1", "support"):
            labels.add_column(column, justify="left" if column == "label" else "right")
        for label, s in per_label.items():
            labels.add_row(label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
        console.print(labels)


def cmd_report(args) -> int:
    from cluster import storage
    from jobs.evaluation.report import build_report
    from workers.output.location import OutputLocation

    try:
        page = build_report(args.output, sample_size=args.sample, title=args.title)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dest = args.out or OutputLocation.at(args.output).path("report.html")
    storage.write_bytes(dest if storage.is_s3(dest) else storage.normalize(dest), page.encode("utf-8"))
    print(dest)
    return 0
