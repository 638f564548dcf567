"""What both manifest kinds share: strict models, cross-field checks, the output spec, the hash.

Unknown fields are refused everywhere (`Strict`). A manifest whose fields also constrain each
other lists those problems in `_cross_field_problems`; they are reported with the same paths and
wording as field errors, after field validation passed. The hash is cluster.hashing's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from cluster.hashing import stable_json_sha256
from workers.uri_field import WRITES

JobName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Problems = list[tuple[tuple, str]]  # (location, message) pairs


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrossChecked(Strict):
    """A whole manifest: field validation, then the checks that span fields; and its hash."""

    def _cross_field_problems(self) -> Problems:
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

    def manifest_hash(self) -> str:
        """Identifies the work: stored in `_manifest.json` and checkpoints, compared on resume."""
        return stable_json_sha256(self.model_dump(mode="json"))


class OutputSpec(Strict):
    uri: Annotated[str, WRITES] = Field(..., min_length=1)  # overwrite deletes there: a write too
    # retry_errors (inference only): redo the error rows of the published snapshot, publish a new one.
    mode: Literal["error_if_exists", "overwrite", "resume", "retry_errors"] = "error_if_exists"
