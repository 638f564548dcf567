"""Job manifest schema v1 for inference jobs (`kind: inference`, the default): data, params, resources.

A manifest is refused whole, with every problem and its field path, before any work starts
(jobs.manifest.load); the task block is in jobs.manifest.tasks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from cluster.storage.uri import check_uris
from jobs.manifest.common import CrossChecked, JobName, OutputSpec, Problems, Strict
from jobs.manifest.tasks import Task
from llm_core.metrics import DEFAULT_METRICS, KNOWN_METRICS
from llm_core.tasks import TaskKind
from llm_core.weights.builtin import BUILTIN_PREFIX
from workers.uri_field import MODEL, READS

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"

# params.quantization: what the native engine does (llm_core...quantize.QUANTIZATIONS), and what
# is named for later so that it is refused as not yet there rather than as unknown.
QUANTIZATIONS = ("none", "int8", "w8a8")
PLANNED_QUANTIZATIONS = ("fp8", "int4")

# Tasks the model-free baselines cover (engine: baseline): llm_core.baselines.
BASELINE_TASKS = (TaskKind.SUMMARIZE, TaskKind.TRANSLATE, TaskKind.CLASSIFY)

# params.n: completions per row. Each is a full generation (n sequences in the engine per row).
MAX_COMPLETIONS = 16


class InputSpec(Strict):
    uri: Annotated[str | list[str], AfterValidator(check_uris), READS] = Field(
        ..., description="a Parquet file, a folder/prefix, a glob, or a list"
    )
    text_column: str = "text"
    id_column: str = "id"
    rows_per_shard: int | None = Field(
        None, gt=0, description="cut row groups into shards of at most this many rows"
    )
    # Checked over the whole input before any work: refuse the job (error), or leave those rows
    # out and list them in the plan and the summary (drop; a duplicate keeps its first row).
    on_duplicate_id: Literal["error", "drop"] = "error"
    on_null_id: Literal["error", "drop"] = "error"


class GenerationParams(Strict):
    max_new_tokens: int = Field(64, gt=0, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(
        None, gt=0.0, description="default: the task's own (small models loop without one)"
    )
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = 0
    # Several completions per row (sampled: temperature > 0); the output column is then a list.
    # With a seed, each row's completions come from a seed of its own, derived from (seed, row id).
    n: int = Field(1, ge=1, le=MAX_COMPLETIONS, description="completions per row (a list column when > 1)")
    max_input_tokens: int | None = Field(
        None, gt=0, description="default: the model's context minus max_new_tokens"
    )
    on_long_input: Literal["truncate", "error"] = "truncate"
    # Precision of weights and activations. auto: bf16 on a GPU (fp16 without bf16); on CPUs bf16
    # where every node has it in hardware, else fp32, decided once per run (jobs/run/precision.py).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # The native engine's: int8 = int8 weights per output channel (llm_core/engine/native/quantize.py);
    # w8a8 = int8 weights and per-row int8 activations, CPU actors only (w8a8_linear.py).
    quantization: str = Field("none", description="none, int8 or w8a8")

    @field_validator("quantization")
    @classmethod
    def _known_quantization(cls, value: str) -> str:
        if value in QUANTIZATIONS:
            return value
        if value in PLANNED_QUANTIZATIONS:
            raise ValueError(f"{value} is not implemented yet; choose one of: {', '.join(QUANTIZATIONS)}")
        raise ValueError(f"unknown quantization {value!r}; choose one of: {', '.join(QUANTIZATIONS)}")


class Resources(Strict):
    workers: int = Field(1, ge=1, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1, le=4096)
    max_batch_tokens: int | None = Field(None, gt=0)


class EvaluateSpec(Strict):
    """Score the output against references when the job is done (`_metrics.json`)."""

    reference_column: str = Field(..., min_length=1)
    references_uri: Annotated[str | list[str] | None, READS] = Field(
        None, description="Parquet file(s) with input.id_column + reference_column; default: the input itself"
    )
    metrics: list[str] | None = Field(None, description="default: the task's (llm_core.metrics.DEFAULT_METRICS)")
    use_stemmer: bool = False

    @field_validator("metrics")
    @classmethod
    def _known(cls, metrics: list[str] | None) -> list[str] | None:
        if metrics is not None:
            unknown = [name for name in metrics if name not in KNOWN_METRICS]
            if unknown:
                raise ValueError(f"unknown metrics {unknown}; known: {', '.join(KNOWN_METRICS)}")
            if not metrics:
                raise ValueError("name at least one metric (or leave metrics out for the task's defaults)")
        return metrics


class InferenceManifest(CrossChecked):
    version: Literal[1] = 1
    kind: Literal["inference"] = "inference"
    name: JobName
    task: Task
    model: Annotated[str, MODEL] = DEFAULT_MODEL
    # A LoRA adapter folder (PEFT layout, as `adapter.export: adapter` writes it) applied on `model`;
    # its adapter_config.json names the base, which must be this model (checked by fingerprint at
    # pre-flight). READS, not MODEL: an adapter folder has no config.json or weights of its own,
    # so the model-folder check at submit would refuse it; pre-flight checks it as an adapter.
    adapter: Annotated[str | None, READS] = None
    # baseline: no language model; vllm: vLLM (an optional extra, llm_core/engine/vllm_engine.py)
    engine: Literal["auto", "native", "hf", "vllm", "baseline"] = "auto"
    input: InputSpec
    output: OutputSpec
    params: GenerationParams = GenerationParams()
    resources: Resources = Resources()
    on_shard_failure: Literal["fail", "skip"] = "fail"
    max_shard_attempts: int = Field(3, ge=1, le=20)
    # Error rows above this fraction of the rows make the outcome `partial` instead of `succeeded`.
    max_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    # The job's deadline: what finished by then is published as `partial`.
    timeout_s: float | None = Field(None, gt=0)
    # One attempt of one shard: past it the actor is replaced and the shard tried again.
    shard_timeout_s: float | None = Field(None, gt=0)
    evaluate: EvaluateSpec | None = None

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any):
        # `task: summarize` is short for `task: {kind: summarize}`.
        return {"kind": value} if isinstance(value, str) else value

    def _cross_field_problems(self) -> Problems:
        p: Problems = self._adapter_problems()
        kind = self.task.kind
        if self.params.quantization != "none" and self.engine in ("hf", "vllm", "baseline"):
            p.append((("params", "quantization"), f"quantization: {self.params.quantization} needs the native "
                      f"engine (engine: auto or native), not engine: {self.engine}"))
        if self.params.quantization == "w8a8" and self.resources.gpus_per_worker > 0:
            p.append((("params", "quantization"), "quantization: w8a8 runs on CPU actors (oneDNN's int8 matmul); "
                      "with gpus_per_worker > 0 use int8 or none"))
        if self.engine == "baseline" and kind not in BASELINE_TASKS:
            p.append((("engine",), f"no baseline for task {kind}; baselines: {', '.join(BASELINE_TASKS)}"))
        if kind == TaskKind.CLASSIFY:
            if self.engine == "baseline" and not self.task.train_uri:
                p.append((("task", "train_uri"), ("engine: baseline trains a TF-IDF classifier: name its training "
                                                  "data (Parquet with the text column and train_label_column)")))
            if self.engine != "baseline" and self.task.train_uri:
                p.append((("task", "train_uri"), "only used with engine: baseline"))
        p.extend(self._completions_problems())
        if self.evaluate and self.evaluate.metrics is None and not DEFAULT_METRICS.get(kind):
            p.append((("evaluate", "metrics"), f"task {kind} has no default metrics: name them"))
        return p

    def _completions_problems(self) -> Problems:
        """params.n > 1 needs sampling and a task that generates; the baselines answer once."""
        n = self.params.n
        if n == 1:
            return []
        where = ("params", "n")
        if self.task.kind == TaskKind.CLASSIFY:
            return [(where, f"params.n: {n} is for generated outputs; classify scores the labels and "
                     "gives one label per row (leave params.n out)")]
        if self.engine == "baseline":
            return [(where, f"params.n: {n} needs a language model; engine: baseline gives one output per "
                     "row (leave params.n out)")]
        if self.params.temperature == 0:
            return [(where, f"params.n: {n} with params.temperature: 0 (greedy) gives {n} identical "
                     "completions; set params.temperature > 0 (e.g. 0.8) or leave params.n out")]
        return []

    def _adapter_problems(self) -> Problems:
        if self.adapter is None:
            return []
        if not self.adapter.strip():
            return [(("adapter",), "name an adapter folder (a local path or s3:// prefix), or leave adapter out")]
        if self.adapter.startswith(BUILTIN_PREFIX):
            return [(("adapter",), "an adapter is a folder (a local path or s3:// prefix) holding "
                     "adapter_config.json, not a built-in model")]
        p: Problems = []
        if self.engine in ("hf", "vllm", "baseline"):
            p.append((("adapter",), f"adapter needs the native engine (engine: auto or native), not engine: "
                      f"{self.engine}: the native engine merges the adapter into the model's weights as it loads them"))
        if self.adapter.rstrip("/") == self.model.rstrip("/"):
            p.append((("adapter",), "names the same folder as model: model is the base model, adapter the "
                      "LoRA adapter folder trained on it"))
        return p
