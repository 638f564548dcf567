"""The inference actor: loads the model once, then turns shards into committed output parts.

read -> build prompts -> generate (length-sorted, token-budgeted batches) -> write -> commit.
Rows that fail (null/empty text, too long, a decoding error) get an `error` value; the shard
goes on. A part is published with one create-if-absent put, so a shard commits exactly once.
"""

from __future__ import annotations

import os
import socket
import time

import pyarrow as pa
import structlog

from llm_core.llm import LLM, RowResult
from workers.inference.classifier_head import is_classifier, load_classifier
from workers.model_resolver import resolve_model
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard, read_shard

log = structlog.get_logger()


def output_table(work: ShardWork, ids: pa.Array, results: list[RowResult], latency_s: float) -> pa.Table:
    return pa.table({
        work.id_column: ids,
        work.task.output_column: pa.array([r.output for r in results], pa.string()),
        "error": pa.array([r.error for r in results], pa.string()),
        "finish_reason": pa.array([r.finish_reason for r in results], pa.string()),
        "prompt_tokens": pa.array([r.prompt_tokens for r in results], pa.int32()),
        "completion_tokens": pa.array([r.completion_tokens for r in results], pa.int32()),
        # The batch's generation time per row: the report draws latency and throughput from it.
        "latency_s": pa.array([latency_s] * len(results), pa.float32()),
        "finished_at": pa.array([time.time()] * len(results), pa.float64()),
    })


class ShardProcessor:
    """The work of one actor, usable without Ray (tests and benchmarks call it directly)."""

    def __init__(self, model_ref: str, engine: str = "auto", device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, max_batch_tokens: int | None = None, threads: int | None = None,
                 baseline_model_uri: str | None = None):
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        started = time.perf_counter()
        if engine == "baseline":  # model-free baselines: no language model is loaded
            from workers.inference.baseline import BaselineRunner

            self.llm = BaselineRunner(baseline_model_uri)
            log.info("actor.baseline_loaded", classifier=baseline_model_uri,
                     load_s=round(time.perf_counter() - started, 2))
            return
        if threads:
            import torch

            torch.set_num_threads(max(1, int(threads)))  # one actor per CPU slot, no oversubscription
        model_dir = resolve_model(model_ref)
        if is_classifier(model_dir):  # a fine-tuned classification head answers classify jobs directly
            self.llm = load_classifier(model_dir, device=device, dtype=dtype, batch_size=batch_size)
        else:
            self.llm = LLM(model_dir, engine=engine, device=device, dtype=dtype,
                           batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        log.info("actor.model_loaded", model=model_ref, engine=self.llm.engine.name,
                 device=self.llm.engine.device, load_s=round(time.perf_counter() - started, 2))

    def process(self, shard: Shard, work: ShardWork) -> ShardReport:
        bound = log.bind(job_id=work.job_id, shard_id=shard.shard_id)
        report = ShardReport(shard.shard_id, committed=False, actor=self.name, node=socket.gethostname())
        if work.output.has_part(shard.shard_id):  # an earlier attempt won
            report.already_committed = True
            return report
        t0 = time.perf_counter()
        table = read_shard(shard, work.input_columns, work.scope)
        texts = table.column(work.text_column).to_pylist()
        languages = table.column(work.language_column).to_pylist() if work.language_column else None
        t1 = time.perf_counter()
        results = self.llm.run_task(work.task, texts, work.sampling, max_input_tokens=work.max_input_tokens,
                                    on_long_input=work.on_long_input, target_languages=languages)
        t2 = time.perf_counter()
        out = output_table(work, table.column(work.id_column), results, (t2 - t1) / max(len(results), 1))
        report.committed = work.output.commit_part(shard.shard_id, out)
        report.already_committed = not report.committed
        t3 = time.perf_counter()
        report.rows = len(results)
        report.error_rows = sum(r.error is not None for r in results)
        report.prompt_tokens = sum(r.prompt_tokens for r in results)
        report.completion_tokens = sum(r.completion_tokens for r in results)
        report.read_s, report.generate_s, report.write_s = t1 - t0, t2 - t1, t3 - t2
        report.errors_sample = sorted({r.error for r in results if r.error})[:5]
        bound.info("shard.committed" if report.committed else "shard.lost_race", rows=report.rows,
                   error_rows=report.error_rows, completion_tokens=report.completion_tokens,
                   generate_s=round(report.generate_s, 2))
        return report
