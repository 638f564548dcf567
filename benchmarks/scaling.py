"""Scaling of one CPU-bound job: one raylet vs two, and the engine alone without Ray.

    .venv/bin/python benchmarks/scaling.py                       # 4 shards x 1,000 rows
    .venv/bin/python benchmarks/scaling.py --shards 2 --rows-per-shard 200 --max-new-tokens 8   # quick

A tiny random Llama (tests/support/tiny_model.py) summarizes the same Parquet shards three ways:
  engine alone  - llm_core.LLM in a fresh process, one thread, shard by shard (start, imports,
                  model load, read, generate; no Ray, no commit);
  one node      - the full job (plan, actors, commit, _SUCCESS.json) on a private Ray cluster of
                  one raylet with one CPU;
  two nodes     - the same job on two raylets (`ray start --address`), one CPU each.
Prints `speedup=` (one node / two nodes) and `overhead=` (1 - engine alone / one node).
Targets: speedup >= 1.7, overhead <= 5% with >= 1,000 rows per shard. On a machine whose
cores are shared with other work the figures are noisy: take the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("debian package library tool server client network file system data python module "
         "service daemon kernel driver graphics audio video font editor shell terminal").split()


def write_input(path: Path, shards: int, rows_per_shard: int, words: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    n = shards * rows_per_shard
    texts = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]
    pq.write_table(pa.table({"id": list(range(n)), "text": texts}), path, row_group_size=rows_per_shard)


def manifest(inp: Path, out: Path, model: Path, workers: int, args) -> object:
    from jobs.manifest import parse_manifest

    return parse_manifest({
        "name": f"scaling-{workers}",
        "task": "summarize",
        "model": str(model),
        "engine": "native",
        "input": {"uri": str(inp), "rows_per_shard": args.rows_per_shard},
        "output": {"uri": str(out), "mode": "overwrite"},
        "params": {"max_new_tokens": args.max_new_tokens},
        "resources": {"workers": workers, "cpus_per_worker": 1, "batch_size": args.batch_size},
    })


def engine_alone(inp: Path, model: Path, args) -> dict:
    """The same shards through llm_core directly: what the work costs without orchestration.

    Runs as a fresh process (one thread), because an actor is one too: both pay Python start,
    imports and model load, so the difference left is what Ray and the job machinery add.
    """
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--engine-only", str(inp), str(model),
           "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"engine-alone run failed:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _engine_only(inp: str, model: str, max_new_tokens: int, batch_size: int) -> None:
    import json

    t0 = time.perf_counter()
    import pyarrow.parquet as pq
    import torch

    from jobs.run.inference import build_work
    from llm_core.llm import LLM

    torch.set_num_threads(1)  # like an actor given one CPU
    # The job's own task and sampling settings (task defaults such as repetition penalty included).
    args = argparse.Namespace(rows_per_shard=None, max_new_tokens=max_new_tokens, batch_size=batch_size)
    work = build_work(manifest(Path(inp), Path(inp).parent / "unused", Path(model), 1, args), "engine-alone")
    t1 = time.perf_counter()
    llm = LLM(model, engine="native", device="cpu", batch_size=batch_size)
    t2 = time.perf_counter()
    f = pq.ParquetFile(inp)
    tokens = 0
    for rg in range(f.num_row_groups):
        texts = f.read_row_group(rg, columns=["text"]).column("text").to_pylist()
        results = llm.run_task(work.task, texts, work.sampling, max_input_tokens=work.max_input_tokens,
                               on_long_input=work.on_long_input)
        tokens += sum(r.completion_tokens for r in results)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2, "completion_tokens": tokens}))


def job_on_cluster(nodes: int, inp: Path, out: Path, model: Path, args) -> tuple[float, int]:
    import ray

    from jobs.run.inference import run_job
    from tests.support.two_node_cluster import TwoNodeCluster

    cluster = TwoNodeCluster(env={"OMP_NUM_THREADS": "1"}).start(nodes=nodes)
    try:
        cluster.connect_driver()
        m = manifest(inp, out, model, nodes, args)
        t0 = time.perf_counter()
        result = run_job(m, job_id=f"scaling-{nodes}-{int(t0)}", ray_address=cluster.address)
        elapsed = time.perf_counter() - t0
        if result.status != "succeeded":
            raise RuntimeError(f"{nodes}-node job ended {result.status}: {result.error}")
        return elapsed, result.summary.get("completion_tokens", 0)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-only":
        ap = argparse.ArgumentParser()
        ap.add_argument("inp")
        ap.add_argument("model")
        ap.add_argument("--max-new-tokens", type=int)
        ap.add_argument("--batch-size", type=int)
        a = ap.parse_args(sys.argv[2:])
        _engine_only(a.inp, a.model, a.max_new_tokens, a.batch_size)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rows-per-shard", type=int, default=1000)
    ap.add_argument("--words", type=int, default=24, help="words per input row")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1, help="best of N for each measurement")
    args = ap.parse_args()
    os.environ.setdefault("LLMBATCH_LOG_LEVEL", "WARNING")

    from cluster import logs
    from tests.support.tiny_model import build_tiny_model

    logs.configure()
    work = Path(tempfile.mkdtemp(prefix="llmbatch-scaling-"))
    model = build_tiny_model(work / "model")
    inp = work / "input.parquet"
    write_input(inp, args.shards, args.rows_per_shard, args.words)
    rows = args.shards * args.rows_per_shard
    print(f"{args.shards} shards x {args.rows_per_shard} rows, {args.max_new_tokens} new tokens/row, "
          f"tiny random Llama at {model}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    best = {"engine": float("inf"), "one": float("inf"), "two": float("inf")}
    for i in range(args.repeat):  # interleaved, so background load hits all three alike
        eng = engine_alone(inp, model, args)
        one, one_tokens = job_on_cluster(1, inp, work / f"out1-{i}", model, args)
        two, two_tokens = job_on_cluster(2, inp, work / f"out2-{i}", model, args)
        # Same settings, same greedy decoding: all three must have generated the same tokens.
        if not eng["completion_tokens"] == one_tokens == two_tokens:
            raise RuntimeError(f"unequal work: engine {eng['completion_tokens']}, one node {one_tokens}, "
                               f"two nodes {two_tokens} completion tokens")
        best = {"engine": min(best["engine"], eng["wall_s"]), "one": min(best["one"], one),
                "two": min(best["two"], two)}
        print(f"run {i + 1}: engine alone {eng['wall_s']:.1f}s (imports {eng['import_s']:.1f}s, model load "
              f"{eng['load_s']:.1f}s, generate {eng['generate_s']:.1f}s), one node {one:.1f}s, two nodes "
              f"{two:.1f}s; {one_tokens} completion tokens; load average {os.getloadavg()[0]:.1f}", flush=True)

    speedup = best["one"] / best["two"]
    overhead = 1 - best["engine"] / best["one"]
    print(f"rows={rows} engine_alone_s={best['engine']:.2f} one_node_s={best['one']:.2f} "
          f"two_nodes_s={best['two']:.2f} rows_per_s_two_nodes={rows / best['two']:.1f}")
    print(f"speedup={speedup:.2f} (target >= 1.7)")
    print(f"overhead={overhead:.1%} (target <= 5%)")


if __name__ == "__main__":
    main()
