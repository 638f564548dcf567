"""The inference actor: loads the model once, then turns shards into committed output parts.

read -> build prompts -> generate (length-sorted, token-budgeted batches) -> write -> commit.
Rows that fail (null/empty text, too long, a decoding error) get an `error` value and kind; the
shard goes on. A part is published with one create-if-absent put into its run's folder
(`data/<run_id>/`), so a shard commits exactly once per run. A retry_errors shard starts from its
base part, redoes only the error rows of the kinds asked for and writes the merged part whole.
"""

from __future__ import annotations

import inspect
import os
import socket
import time
from collections.abc import Callable

import pyarrow as pa
import structlog

from llm_core.llm import LLM, RowResult
from llm_core.threads import configure_threads
from workers.inference.classifier_head import is_classifier, load_classifier
from workers.inference.part_table import cast_ids, merge_retried, output_table, rows_to_retry
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard, read_shard
from workers.adapter_folder import is_classification_adapter, resolve_adapter
from workers.model_resolver import resolve_model

log = structlog.get_logger()

BatchCallback = Callable[[int, int, int], None]  # (rows_done, error_rows, completion_tokens), cumulative


class ShardProcessor:
    """The work of one actor, usable without Ray (tests and benchmarks call it directly).

    `model_identity` is the identity pre-flight computed for the run's fingerprint: the model
    folder this actor loads must still be it (resolve_model refuses a model changed since); the
    same for `adapter_ref` (a LoRA adapter folder merged into the model) and `adapter_identity`."""

    def __init__(self, model_ref: str, engine: str = "auto", device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, max_batch_tokens: int | None = None, threads: int | None = None,
                 baseline_model_uri: str | None = None, model_identity: dict | None = None,
                 quantization: str = "none", adapter_ref: str | None = None, adapter_identity: dict | None = None):
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        started = time.perf_counter()
        if engine == "baseline":  # model-free baselines: no language model is loaded
            from workers.inference.baseline import BaselineRunner

            self.llm = BaselineRunner(baseline_model_uri)
            log.info("actor.baseline_loaded", classifier=baseline_model_uri,
                     load_s=round(time.perf_counter() - started, 2))
        else:
            configure_threads(threads)  # torch's threads to the actor's CPUs; logs how idle threads wait
            model_dir = resolve_model(model_ref, expect=model_identity)
            # An adapter is resolved like the model (scope, cache, the identity pre-flight computed)
            # and merged into the weights as they load.
            adapter_dir = resolve_adapter(adapter_ref, expect=adapter_identity) if adapter_ref else None
            head_dir = adapter_dir if adapter_dir is not None and is_classification_adapter(adapter_dir) else None
            if head_dir is not None or (adapter_dir is None and is_classifier(model_dir)):
                # a fine-tuned classification head answers classify jobs directly
                if quantization != "none":
                    raise ValueError(f"quantization: {quantization} is the native engine's; "
                                     "a classifier-head model runs unquantized")
                self.llm = load_classifier(model_dir, device=device, dtype=dtype, batch_size=batch_size,
                                           adapter_dir=head_dir)
            else:
                self.llm = LLM(model_dir, engine=engine, device=device, dtype=dtype, batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, quantization=quantization, adapter_dir=adapter_dir)
            log.info("actor.model_loaded", model=model_ref, adapter=adapter_ref, engine=self.llm.engine.name,
                     device=self.llm.engine.device, load_s=round(time.perf_counter() - started, 2))
        # Runners without per-batch progress (baseline, classifier head) report once per shard;
        # those that sample (LLM) take the rows' ids for their per-row seeds.
        accepted = inspect.signature(self.llm.run_task).parameters
        self._batches, self._row_ids = "on_batch" in accepted, "row_ids" in accepted

    def _run_task(self, work: ShardWork, texts: list, languages: list | None,
                  on_batch: BatchCallback | None, ids) -> list[RowResult]:
        extra = {"on_batch": on_batch} if on_batch is not None and self._batches else {}
        if self._row_ids:  # the plan's id type (cast_ids): a row's seed is the same in every shard and run
            extra["row_ids"] = ids.to_pylist()
        return self.llm.run_task(work.task, texts, work.sampling, max_input_tokens=work.max_input_tokens,
                                 on_long_input=work.on_long_input, target_languages=languages, **extra)

    def process(self, shard: Shard, work: ShardWork, on_batch: BatchCallback | None = None) -> ShardReport:
        bound = log.bind(job_id=work.job_id, shard_id=shard.shard_id)
        report = ShardReport(shard.shard_id, committed=False, actor=self.name, node=socket.gethostname())
        if work.output.has_part(work.run_id, shard.shard_id):  # an earlier attempt won
            report.already_committed = True
            return report
        t0 = time.perf_counter()
        table = read_shard(shard, work.input_columns, work.scope)
        ids = cast_ids(table.column(work.id_column), work.id_type, f"{shard.file_uri} (shard {shard.shard_id})")
        base_path = work.base_part(shard.shard_id)
        t1 = time.perf_counter()
        if base_path is None:
            out, results = self._fresh(work, table, ids, on_batch)
        else:
            out, results = self._retried(work, shard, table, ids, base_path, on_batch)
            report.retried_rows = len(results)
        t2 = time.perf_counter()
        report.committed = work.output.commit_part(work.run_id, shard.shard_id, out)
        report.already_committed = not report.committed
        t3 = time.perf_counter()
        report.rows = out.num_rows
        report.error_rows = out.num_rows - out.column("error").null_count
        report.prompt_tokens = sum(r.prompt_tokens for r in results)
        report.completion_tokens = sum(r.completion_tokens for r in results)
        report.read_s, report.generate_s, report.write_s = t1 - t0, t2 - t1, t3 - t2
        report.errors_sample = sorted({e for e in out.column("error").to_pylist() if e})[:5]
        bound.info("shard.committed" if report.committed else "shard.lost_race", rows=report.rows,
                   error_rows=report.error_rows, completion_tokens=report.completion_tokens,
                   retried_rows=report.retried_rows, generate_s=round(report.generate_s, 2))
        return report

    def _fresh(self, work: ShardWork, table: pa.Table, ids, on_batch) -> tuple[pa.Table, list[RowResult]]:
        texts = table.column(work.text_column).to_pylist()
        languages = table.column(work.language_column).to_pylist() if work.language_column else None
        t = time.perf_counter()
        results = self._run_task(work, texts, languages, on_batch, ids)
        latency = (time.perf_counter() - t) / max(len(results), 1)
        return output_table(work, ids, results, latency), results

    def _retried(self, work: ShardWork, shard: Shard, table: pa.Table, ids, base_path: str,
                 on_batch) -> tuple[pa.Table, list[RowResult]]:
        """The base part with its error rows (of the kinds asked for) redone; the others kept."""
        base = work.output.read_part_at(base_path)
        if base.num_rows != table.num_rows or not base.column(work.id_column).equals(ids):
            raise ValueError(f"input {shard.file_uri} no longer matches part {base_path}: "
                             "the input changed since that run (rerun with output.mode: overwrite)")
        positions = rows_to_retry(base, work.retry_kinds)
        if not positions:
            return base, []
        texts = table.column(work.text_column).to_pylist()
        languages = table.column(work.language_column).to_pylist() if work.language_column else None
        retried_ids = ids.take(pa.array(positions))
        t = time.perf_counter()
        results = self._run_task(work, [texts[i] for i in positions],
                                 [languages[i] for i in positions] if languages is not None else None, on_batch,
                                 retried_ids)
        latency = (time.perf_counter() - t) / max(len(results), 1)
        attempts = base.column("attempts").to_pylist()
        redone = output_table(work, retried_ids, results, latency,
                              attempts=[int(attempts[i] or 1) + 1 for i in positions])
        return merge_retried(base, positions, redone), results
