"""Manifest loading errors: every problem at once, each with its field path."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from llm_core.tasks import TaskKind
from workers.training.config import TrainingTask


@dataclass(frozen=True)
class FieldError:
    path: str  # dotted path, list indices in brackets: "input.uri", "task.labels[2]"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(ValueError):
    """A manifest was refused. `errors` lists every problem found, each with its field path."""

    def __init__(self, source: str, errors: list[FieldError]):
        self.source = source
        self.errors = errors
        if len(errors) == 1:  # one problem, one line (the CLI and logs show it as is)
            super().__init__(f"invalid manifest {source}: {errors[0]}")
        else:
            lines = "\n".join(f"  - {e}" for e in errors)
            super().__init__(f"invalid manifest {source}: {len(errors)} error(s)\n{lines}")

    def __reduce__(self):
        # Rebuilt from its fields, not from the message (`args`): it crosses Ray's pickling.
        return type(self), (self.source, self.errors)


# Discriminated-union tags that pydantic puts in error locations but users never write.
_TAGS = {*TaskKind, *TrainingTask, "inference"}
# How pydantic says "unknown field" and "missing": models and (training config) dataclasses differ.
_UNKNOWN = {"extra_forbidden", "unexpected_keyword_argument"}
_MISSING = {"missing", "missing_argument"}


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def errors_from_validation(exc: ValidationError) -> list[FieldError]:
    found: list[FieldError] = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] in _UNKNOWN:
            msg = "unknown field (not part of manifest schema v1)"
        elif err["type"] in _MISSING:
            msg = "required field is missing"
        msg = msg.removeprefix("Value error, ")
        fe = FieldError(format_loc(tuple(err["loc"])), msg)
        if fe not in found:
            found.append(fe)
    return found
