"""The `task` block of an inference manifest: one model per task kind, told apart by `kind`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from jobs.manifest.common import Strict
from llm_core.tasks import TaskKind
from workers.uri_field import READS


class SummarizeTask(Strict):
    kind: Literal[TaskKind.SUMMARIZE] = TaskKind.SUMMARIZE
    # headline: a title-like line of at most 10 words (what package synopses and headlines are)
    style: Literal["one_sentence", "headline", "short_paragraph"] = "one_sentence"
    system_prompt: str | None = None


class TranslateTask(Strict):
    kind: Literal[TaskKind.TRANSLATE] = TaskKind.TRANSLATE
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
    kind: Literal[TaskKind.CLASSIFY] = TaskKind.CLASSIFY
    labels: list[str] = Field(..., min_length=2)
    instructions: str | None = None
    system_prompt: str | None = None
    train_uri: Annotated[str | list[str] | None, READS] = Field(
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
    kind: Literal[TaskKind.GENERATE] = TaskKind.GENERATE
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
