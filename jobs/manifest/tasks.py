"""The `task` block of an inference manifest: one model per task kind, told apart by `kind`.

Every task takes `examples` (few-shot: llm_core.fewshot): solved examples inline or in a Parquet
file, k of them shown before each row. Classify takes `calibrate` (llm_core.calibration).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from cluster.storage.uri import check_uris
from jobs.manifest.common import Strict
from llm_core.calibration import DEFAULT_METHOD, METHODS
from llm_core.fewshot import MAX_K, MAX_POOL, SELECTIONS
from llm_core.languages import language_name
from llm_core.tasks import TaskKind
from workers.uri_field import READS


class InlineExample(Strict):
    text: str = Field(..., min_length=1)
    output: str = Field(..., min_length=1, description="the answer the model should give for text")
    target_language: str | None = Field(None, min_length=1, description="translate only: the language of output")

    @field_validator("text", "output")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class Examples(Strict):
    """Few-shot examples: `items` inline, or a Parquet `uri` (read once by the job's driver and
    sent to every worker, at most 2000 rows, llm_core.fewshot.MAX_POOL: a larger file is sampled
    down, seeded by `seed`).
    `examples: [{text, output}, ...]` is short for `examples: {items: [...]}`."""

    items: list[InlineExample] | None = Field(None, min_length=1, max_length=MAX_POOL)
    uri: Annotated[str | list[str] | None, READS] = Field(None, description="Parquet file(s) of examples")
    text_column: str = "text"
    output_column: str = "output"
    target_language_column: str | None = Field(None, description="translate: each example's target language")
    k: int = Field(3, ge=1, le=MAX_K, description="examples shown before each row")
    select: Literal[SELECTIONS] = Field("similar", description="similar: nearest by TF-IDF cosine; random: seeded")
    seed: int = Field(0, description="random: each row's draw is seeded by sha256(seed, the row's text)")
    max_example_tokens: int = Field(256, ge=8, le=4096, description="each example's text and output cut to this")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.items is None) == (self.uri is None):
            raise ValueError("examples need exactly one of items (inline) or uri (a Parquet file)")
        if self.uri is not None:
            check_uris(self.uri)
        return self


def _examples_shorthand(value: Any) -> Any:
    return {"items": value} if isinstance(value, list) else value


def _example_problems(examples: Examples | None, kind: TaskKind, *, labels: tuple[str, ...] = (),
                      target_language: str | None = None, per_row_language: bool = False) -> list[str]:
    """What the task's other fields rule out in its examples (the rows of a file: jobs.run.examples)."""
    if examples is None:
        return []
    problems = []
    if kind != TaskKind.TRANSLATE and examples.target_language_column:
        problems.append("examples.target_language_column: only for translate")
    if kind == TaskKind.TRANSLATE and examples.uri is not None and per_row_language and not target_language \
            and not examples.target_language_column:
        problems.append("examples.target_language_column: required when rows take their language from "
                        "target_language_column and the task has no target_language")
    for n, item in enumerate(examples.items or ()):
        where = f"examples.items[{n}]"
        if kind == TaskKind.CLASSIFY and item.output not in labels:
            problems.append(f"{where}.output: {item.output!r} is not one of the labels {list(labels)}")
        if kind != TaskKind.TRANSLATE and item.target_language:
            problems.append(f"{where}.target_language: only for translate")
        elif kind == TaskKind.TRANSLATE:
            problems += _language_problems(where, item.target_language, target_language, per_row_language)
    return problems


def _language_problems(where: str, language: str | None, task_language: str | None,
                       per_row_language: bool) -> list[str]:
    if language is None and per_row_language and not task_language:
        return [f"{where}.target_language: required when rows take their language from target_language_column "
                "and the task has no target_language"]
    if language and task_language and not per_row_language and \
            language_name(language).lower() != language_name(task_language).lower():
        return [f"{where}.target_language: {language!r} is not the task's target_language {task_language!r} "
                "(the example would never be used)"]
    return []


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


class SummarizeTask(Strict):
    kind: Literal[TaskKind.SUMMARIZE] = TaskKind.SUMMARIZE
    # headline: a title-like line of at most 10 words (what package synopses and headlines are)
    style: Literal["one_sentence", "headline", "short_paragraph"] = "one_sentence"
    system_prompt: str | None = None
    examples: Examples | None = None

    _shorthand = field_validator("examples", mode="before")(_examples_shorthand)

    @model_validator(mode="after")
    def _examples_fit(self):
        _refuse(_example_problems(self.examples, self.kind))
        return self


class TranslateTask(Strict):
    kind: Literal[TaskKind.TRANSLATE] = TaskKind.TRANSLATE
    target_language: str | None = Field(None, description="e.g. 'fr', 'German'")
    target_language_column: str | None = Field(
        None, description="per-row target language, read from this input column"
    )
    source_language: str = "English"
    system_prompt: str | None = None
    examples: Examples | None = None

    _shorthand = field_validator("examples", mode="before")(_examples_shorthand)

    @model_validator(mode="after")
    def _one_target(self):
        if not self.target_language and not self.target_language_column:
            raise ValueError("translate needs target_language (or target_language_column)")
        _refuse(_example_problems(self.examples, self.kind, target_language=self.target_language,
                                  per_row_language=bool(self.target_language_column)))
        return self


class ClassifyTask(Strict):
    kind: Literal[TaskKind.CLASSIFY] = TaskKind.CLASSIFY
    labels: list[str] = Field(..., min_length=2)
    instructions: str | None = None
    system_prompt: str | None = None
    train_uri: Annotated[str | list[str] | None, READS] = Field(
        None, description="engine: baseline only: Parquet training rows (input.text_column + train_label_column)"
    )
    train_label_column: str = "label"
    examples: Examples | None = None
    # Calibration (llm_core.calibration): each row's label distribution divided by the prompt's
    # prior. batch (= true): measured on a seeded sample of the job's rows; content_free: on
    # "N/A", "" and "[MASK]". false: the label the model scores highest, as it is. Stored as the
    # method's name, so the run's fingerprint names the method (true -> batch).
    calibrate: Literal[False, "batch", "content_free"] = Field(
        "batch", description="true (= batch), batch, content_free or false")

    _shorthand = field_validator("examples", mode="before")(_examples_shorthand)

    @field_validator("calibrate", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        if value is True:
            return DEFAULT_METHOD
        if value is False or value in METHODS:
            return value
        raise ValueError(f"must be true, false, {' or '.join(METHODS)} (got {value!r})")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() for label in labels):
            raise ValueError("labels must be non-empty strings")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels

    @model_validator(mode="after")
    def _examples_fit(self):
        _refuse(_example_problems(self.examples, self.kind, labels=tuple(self.labels)))
        return self


class GenerateTask(Strict):
    kind: Literal[TaskKind.GENERATE] = TaskKind.GENERATE
    prompt_template: str = Field(..., description="user message; {text} is replaced by the row's text")
    system_prompt: str | None = None
    examples: Examples | None = None

    _shorthand = field_validator("examples", mode="before")(_examples_shorthand)

    @field_validator("prompt_template")
    @classmethod
    def _has_text(cls, template: str) -> str:
        if "{text}" not in template:
            raise ValueError("prompt_template must contain the placeholder {text}")
        return template

    @model_validator(mode="after")
    def _examples_fit(self):
        _refuse(_example_problems(self.examples, self.kind))
        return self


Task = Annotated[
    Union[SummarizeTask, TranslateTask, ClassifyTask, GenerateTask], Field(discriminator="kind")
]
