"""Marks on the manifest fields that name storage (a URI, a path, a model reference) and how a job uses each.

The scope check at submit (jobs.service.auth.uri_violations) walks a parsed manifest and checks
every marked field against the token's prefixes, so a field is covered by marking it where it is
declared: `Annotated[str, READ]`. A schema test (tests/unit/test_scopes_submit.py) fails when a
field that looks like a URI carries no mark. The marks live here, not in jobs.manifest, because
workers.training.config declares manifest sections too and workers may not import jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

READ, WRITE = "read", "write"


@dataclass(frozen=True)
class UriField:
    """Pydantic ignores this metadata; our walkers read it.

    access: what a job does there ("read", "write" or both: a checkpoint is restored and written).
    model_ref: a model reference; `builtin:NAME` names a shipped model, not a location.
    words: values that are keywords, not locations (`vocab: bpe`).
    need: for model references, what the folder must hold ("weights" or "tokenizer").
    in_keys: for a free-form mapping (DeepSpeed's `override`): the string values under keys whose
        name contains one of these words are locations; everything else in it is not.
    """

    access: tuple[str, ...]
    model_ref: bool = False
    words: tuple[str, ...] = ()
    need: str = ""
    in_keys: tuple[str, ...] = ()


READS = UriField((READ,))
WRITES = UriField((WRITE,))
READS_WRITES = UriField((READ, WRITE))
MODEL = UriField((READ,), model_ref=True, need="weights")
TOKENIZER_SOURCE = UriField((READ,), model_ref=True, words=("bpe",), need="tokenizer")
# DeepSpeed writes (and some features read) files named in its config: nvme_path, output_path, ...
PATHS_IN_KEYS = UriField((READ, WRITE), in_keys=("path", "dir", "file", "folder"))


def uri_mark(annotation: Any) -> UriField | None:
    """The UriField on a field's type, looking through Annotated, Optional/Union and list."""
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        for item in metadata:
            if isinstance(item, UriField):
                return item
        return uri_mark(base)
    if get_origin(annotation) in (Union, list, tuple) or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            found = uri_mark(arg)
            if found is not None:
                return found
    return None
