"""Task prompts, task-specific generation defaults, and output cleaning.

The four tasks share one shape: a chat message per row, generation (or label scoring for
classify), and a cleaning step that turns raw model text into the column users read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from llm_core.calibration import calibration_method
from llm_core.fewshot import Example, FewShotSpec
from llm_core.languages import language_name


class TaskKind(StrEnum):
    """The inference tasks. A StrEnum, so manifests, Parquet metadata and JSON keep plain strings."""

    SUMMARIZE = "summarize"
    TRANSLATE = "translate"
    CLASSIFY = "classify"
    GENERATE = "generate"


OUTPUT_COLUMN = {TaskKind.SUMMARIZE: "summary", TaskKind.TRANSLATE: "translation",
                 TaskKind.CLASSIFY: "label", TaskKind.GENERATE: "output"}

@dataclass(frozen=True)
class TaskSpec:
    kind: TaskKind
    target_language: str | None = None
    source_language: str = "English"
    labels: tuple[str, ...] = ()
    prompt_template: str | None = None
    system_prompt: str | None = None
    instructions: str | None = None
    style: str = "one_sentence"
    extra: dict = field(default_factory=dict)
    # Solved examples shown before each row as earlier chat turns (llm_core.fewshot).
    fewshot: FewShotSpec | None = None
    # classify: correct label scores for the prompt's prior (llm_core.calibration): a method
    # ("batch", "content_free"; True is the default one) or False (raw argmax). Stored as the
    # method's name or False.
    calibrate: bool | str = True
    # calibrate "batch": the texts whose mean label distribution is the prior (a job's seeded
    # sample of its rows, the same for every shard); None: the rows of each run_task call.
    calibration_texts: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "kind", TaskKind(self.kind))  # refuses an unknown kind here
        object.__setattr__(self, "calibrate", calibration_method(self.calibrate) or False)

    @property
    def output_column(self) -> str:
        return OUTPUT_COLUMN[self.kind]


def row_error(spec: TaskSpec, text, language: str | None = None, per_row_language: bool = False) -> str | None:
    """Why a row cannot be processed at all (the row gets this error; the job goes on), or None."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is not a string ({type(text).__name__})"
    if not text.strip():
        return "text is empty"
    if spec.kind == TaskKind.TRANSLATE and per_row_language and not (language or "").strip():
        return "target language is missing for this row"
    return None


def screen_rows(spec: TaskSpec, texts: list, target_languages: list | None = None) -> tuple[dict[int, str], list[int]]:
    """Split rows into those that cannot run (index -> error) and the indices of those that can."""
    errors: dict[int, str] = {}
    good: list[int] = []
    for i, text in enumerate(texts):
        language = target_languages[i] if target_languages is not None else None
        error = row_error(spec, text, language, target_languages is not None)
        if error:
            errors[i] = error
        else:
            good.append(i)
    return errors, good


def default_sampling(kind: TaskKind | str) -> dict:
    """Defaults that keep small instruct models out of loops (they repeat words when greedy)."""
    if kind == TaskKind.SUMMARIZE:
        return {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4}
    if kind == TaskKind.TRANSLATE:
        # Translations legitimately repeat words of the source: a lighter touch.
        return {"repetition_penalty": 1.05, "no_repeat_ngram_size": 0}
    if kind == TaskKind.GENERATE:
        return {"repetition_penalty": 1.1, "no_repeat_ngram_size": 0}
    return {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def user_message(spec: TaskSpec, text: str, target_language: str | None = None) -> str:
    if spec.kind == TaskKind.SUMMARIZE:
        if spec.style == "headline":
            return (
                "Write a short headline (at most 10 words) that says what the following is. "
                f"Reply with the headline only.\n\n{text}"
            )
        if spec.style == "one_sentence":
            return (
                "Write a one-sentence summary (at most 15 words) of the following text. "
                f"Reply with the summary only.\n\n{text}"
            )
        return f"Summarize the following text in a short paragraph. Reply with the summary only.\n\n{text}"
    if spec.kind == TaskKind.TRANSLATE:
        target = language_name(target_language or spec.target_language or "")
        source = language_name(spec.source_language)
        return (
            f"Translate the following text from {source} to {target}. "
            f"Reply with the {target} translation only.\n\n{text}"
        )
    if spec.kind == TaskKind.CLASSIFY:
        options = ", ".join(spec.labels)
        extra = f"{spec.instructions}\n\n" if spec.instructions else ""
        return (
            f"{extra}Classify the following text into exactly one of these categories: {options}.\n\n"
            f"Text: {text}\n\nAnswer with the category name only."
        )
    if spec.kind == TaskKind.GENERATE:
        # str.replace, not str.format: the row text and the template may hold other braces.
        return (spec.prompt_template or "{text}").replace("{text}", text)
    raise ValueError(f"unknown task {spec.kind!r}")


def build_messages(spec: TaskSpec, text: str, target_language: str | None = None,
                   examples: Sequence[Example] = ()) -> list[dict]:
    """The chat of one row: the system prompt, each example as a user turn (the task's message
    for the example's text) answered by an assistant turn (its output), then the row's message."""
    messages = []
    if spec.system_prompt:
        messages.append({"role": "system", "content": spec.system_prompt})
    for example in examples:
        messages.append({"role": "user",
                         "content": user_message(spec, example.text, example.target_language or target_language)})
        messages.append({"role": "assistant", "content": example.output})
    messages.append({"role": "user", "content": user_message(spec, text, target_language)})
    return messages


# Small models often announce their answer ("The one-sentence version: ...", "Here's a summary:").
_PREFIXES = re.compile(
    r"^\s*[^:\n]{0,40}\b(summary|summarization|headline|title|version|suggestion|translation|answer|category|label|output)"
    r"\b[^:\n]{0,25}:\s*",
    re.I,
)
_SENTENCE_END = re.compile(r"(?<=[A-Za-z0-9)\]]{2}[.!?])[\"']?\s+(?=[A-Z])")
_BULLET = "*-\u2022 \t#>"


def clean_output(spec: TaskSpec, raw: str) -> str:
    text = raw.strip()
    if spec.kind == TaskKind.GENERATE:
        return text
    lines = [line.strip().lstrip(_BULLET).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("```")]  # stray code fences
    while len(lines) > 1 and lines[0].endswith(":"):  # "Here's a one-line summary:" then the answer
        lines.pop(0)
    single_line = spec.kind == TaskKind.SUMMARIZE and spec.style in ("one_sentence", "headline")
    text = lines[0] if single_line and lines else "\n".join(lines)
    for _ in range(2):  # "The one-sentence summary: The one-sentence summary is: ..."
        stripped = _PREFIXES.sub("", text, count=1).strip()
        if stripped:
            text = stripped
    if text.endswith(":") and _PREFIXES.match(text + " "):
        return ""  # only an announcement, no answer
    if single_line:
        text = _SENTENCE_END.split(" ".join(text.split()))[0]
    if text[:1] and text[:1] in "\"'" and text.count(text[0]) <= 2:  # "" is in every string
        text = text.strip(text[0]).strip()
    return text


def match_label(labels: tuple[str, ...], raw: str) -> str | None:
    """The label a free-text answer names (exact, then case-insensitive, then substring)."""
    answer = raw.strip().strip(".").strip()
    for label in labels:
        if answer == label:
            return label
    lowered = answer.lower()
    for label in labels:
        if lowered == label.lower():
            return label
    hits = [label for label in labels if re.search(rf"\b{re.escape(label.lower())}\b", lowered)]
    return hits[0] if len(hits) == 1 else None
