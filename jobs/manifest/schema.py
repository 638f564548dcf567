"""Job manifest schema v1 for inference jobs (pydantic; unknown fields are refused).

A manifest is YAML or JSON. `load_manifest` returns a validated model or raises ManifestError
listing every problem with its field path, so a bad manifest is refused whole before any work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from jobs.manifest.errors import FieldError, ManifestError, errors_from_validation
from jobs.manifest.secrets import find_credential_fields
from llm_core.metrics import DEFAULT_METRICS, KNOWN_METRICS

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrossChecked(Strict):
    """A manifest whose fields also constrain each other: `_cross_field_problems` lists
    (location, message) pairs, reported with the field errors' paths and wording."""

    def _cross_field_problems(self) -> list[tuple[tuple, str]]:
        return []

    @classmethod
    def model_validate(cls, obj: Any, **kwargs):
        manifest = super().model_validate(obj, **kwargs)
        problems = manifest._cross_field_problems()
        if problems:
            details = [
                InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=loc, input=None)
                for loc, msg in problems
            ]
            raise ValidationError.from_exception_data(cls.__name__, details)
        return manifest


# ---- tasks -------------------------------------------------------------------------------


class SummarizeTask(Strict):
    kind: Literal["summarize"] = "summarize"
    # headline: a title-like line of at most 10 words (what package synopses and headlines are)
    style: Literal["one_sentence", "headline", "short_paragraph"] = "one_sentence"
    system_prompt: str | None = None


class TranslateTask(Strict):
    kind: Literal["translate"] = "translate"
    target_language: str | None = Field(None, description="e.g. 'fr', 'German'")
    target_language_column: str | None = Field(
        None, description="per-row target language, read from this input column"
    )
    source_language: str = "English"
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _one_target(self):
        if not self.target_language and not self.target_language_column:
            raise ValueError("translate needs target_language (or target_language_column)")
        return self


class ClassifyTask(Strict):
    kind: Literal["classify"] = "classify"
    labels: list[str] = Field(..., min_length=2)
    instructions: str | None = None
    system_prompt: str | None = None
    train_uri: str | list[str] | None = Field(
        None, description="engine: baseline only: Parquet training rows (input.text_column + train_label_column)"
    )
    train_label_column: str = "label"

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() for label in labels):
            raise ValueError("labels must be non-empty strings")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels


class GenerateTask(Strict):
    kind: Literal["generate"] = "generate"
    prompt_template: str = Field(..., description="user message; {text} is replaced by the row's text")
    system_prompt: str | None = None

    @field_validator("prompt_template")
    @classmethod
    def _has_text(cls, template: str) -> str:
        if "{text}" not in template:
            raise ValueError("prompt_template must contain the placeholder {text}")
        return template


Task = Annotated[
    Union[SummarizeTask, TranslateTask, ClassifyTask, GenerateTask], Field(discriminator="kind")
]


# ---- data, params, resources --------------------------------------------------------------


class InputSpec(Strict):
    uri: str | list[str] = Field(..., description="a Parquet file, a folder/prefix, a glob, or a list")
    text_column: str = "text"
    id_column: str = "id"
    rows_per_shard: int | None = Field(
        None, gt=0, description="cut row groups into shards of at most this many rows"
    )

    @field_validator("uri")
    @classmethod
    def _non_empty(cls, uri):
        uris = [uri] if isinstance(uri, str) else uri
        if not uris or any(not u.strip() for u in uris):
            raise ValueError("input uri must be a non-empty string or list of strings")
        return uri


class OutputSpec(Strict):
    uri: str = Field(..., min_length=1)
    mode: Literal["error_if_exists", "overwrite", "resume"] = "error_if_exists"


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
    max_input_tokens: int | None = Field(
        None, gt=0, description="default: the model's context minus max_new_tokens"
    )
    on_long_input: Literal["truncate", "error"] = "truncate"


class Resources(Strict):
    workers: int = Field(1, ge=1, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1, le=4096)
    max_batch_tokens: int | None = Field(None, gt=0)


class EvaluateSpec(Strict):
    """Score the output against references when the job is done (`_metrics.json`)."""

    reference_column: str = Field(..., min_length=1)
    references_uri: str | list[str] | None = Field(
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


# ---- the manifest ------------------------------------------------------------------------

# Tasks the model-free baselines cover (engine: baseline): llm_core.baselines.
BASELINE_TASKS = ("summarize", "translate", "classify")


class InferenceManifest(CrossChecked):
    version: Literal[1] = 1
    kind: Literal["inference"] = "inference"
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    task: Task
    model: str = DEFAULT_MODEL
    engine: Literal["auto", "native", "hf", "baseline"] = "auto"  # baseline: no language model
    input: InputSpec
    output: OutputSpec
    params: GenerationParams = GenerationParams()
    resources: Resources = Resources()
    on_shard_failure: Literal["fail", "skip"] = "fail"
    max_shard_attempts: int = Field(3, ge=1, le=20)
    evaluate: EvaluateSpec | None = None

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any):
        # `task: summarize` is short for `task: {kind: summarize}`.
        return {"kind": value} if isinstance(value, str) else value

    def _cross_field_problems(self) -> list[tuple[tuple, str]]:
        p: list[tuple[tuple, str]] = []
        kind = self.task.kind
        if self.engine == "baseline" and kind not in BASELINE_TASKS:
            p.append((("engine",), f"no baseline for task {kind}; baselines: {', '.join(BASELINE_TASKS)}"))
        if kind == "classify":
            if self.engine == "baseline" and not self.task.train_uri:
                p.append((("task", "train_uri"), ("engine: baseline trains a TF-IDF classifier: name its training "
                                                  "data (Parquet with the text column and train_label_column)")))
            if self.engine != "baseline" and self.task.train_uri:
                p.append((("task", "train_uri"), "only used with engine: baseline"))
        if self.evaluate and self.evaluate.metrics is None and not DEFAULT_METRICS.get(kind):
            p.append((("evaluate", "metrics"), f"task {kind} has no default metrics: name them"))
        return p

    def manifest_hash(self) -> str:
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()


Manifest = InferenceManifest  # training manifests: jobs.manifest.training.TrainingManifest


def parse_manifest(data: Any, source: str = "<manifest>"):
    """Validate already-parsed manifest data; raise ManifestError with every problem.

    `kind: inference` (the default) gives an InferenceManifest, `kind: training` a
    TrainingManifest. Fields that look like credentials are refused wherever they appear.
    """
    if not isinstance(data, dict):
        raise ManifestError(source, [FieldError("", "a manifest must be a mapping of fields")])
    errors = find_credential_fields(data)
    model: type[BaseModel] = InferenceManifest
    if data.get("kind") == "training":
        from jobs.manifest.training import TrainingManifest

        model = TrainingManifest
    try:
        manifest = model.model_validate(data)
    except ValidationError as exc:
        seen = {e.path for e in errors}
        errors += [e for e in errors_from_validation(exc) if e.path not in seen]
        raise ManifestError(source, errors) from None
    if errors:
        raise ManifestError(source, errors)
    return manifest


def parse_manifest_text(text: str, source: str = "<manifest>") -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ManifestError(source, [FieldError("", f"not valid YAML: {where}{exc}")]) from None
    return parse_manifest(data, source)


def load_manifest(path: str | Path) -> Manifest:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ManifestError(str(p), [FieldError("", f"cannot read file: {exc.strerror}")]) from None
    return parse_manifest_text(text, str(p))
