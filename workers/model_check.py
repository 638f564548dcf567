"""Is a manifest's `model:` something a worker can load? Answered before any worker starts.

Model references are resolved here in workers (workers.model_resolver), so the rules of what a
model folder holds live beside them: the control plane calls `model_problem` at submit and
`llmbatch validate`/`run` call it before starting Ray, so `model: /etc` is refused with one plain
line instead of failing on a worker with a traceback. Nothing is downloaded: a built-in name is
looked up, a local folder is listed, an S3 prefix is listed through cluster.storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from cluster import storage
from cluster.storage import retry
from llm_core.weights import builtin

CONFIG = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".gguf")
TOKENIZER_FILE = "tokenizer.json"
# The files of a folder that decide what a model computes (what llm_core reads): a local model's
# identity hashes these and nothing else, so a log or a README beside the weights changes nothing.
MODEL_FILES = frozenset({CONFIG, "generation_config.json", "labels.json", "vocabulary.json",
                         "special_tokens_map.json", "added_tokens.json", "merges.txt", "vocab.json",
                         "vocab.txt", "model.safetensors.index.json"})
MODEL_FILE_PREFIXES = ("tokenizer", "chat_template")


def is_model_file(name: str) -> bool:
    """Whether a top-level file of a model folder is part of the model (config, tokenizer,
    chat template, weights)."""
    return name in MODEL_FILES or name.startswith(MODEL_FILE_PREFIXES) or name.endswith(WEIGHT_SUFFIXES)


def model_problem(ref: str, need: str = "weights") -> str | None:
    """One line saying why `ref` is not a loadable model folder, or None when it is.

    need: "weights" (a model to run or fine-tune), "tokenizer" (a model whose tokenizer a
    pretrain uses) or "config" (any model folder: config.json only).
    """
    name = builtin.builtin_name(ref)
    if name is not None:
        if name in builtin.BUILTIN_MODELS:
            return None
        return f"unknown built-in model {name!r}; known: {', '.join(sorted(builtin.BUILTIN_MODELS))}"
    names = _s3_names(ref) if storage.is_s3(ref) else _local_names(ref)
    if isinstance(names, str):
        return names
    return folder_problem(ref, names, need)


LISTING_ERRORS = (ClientError, BotoCoreError, OSError, ValueError)


def unlistable(ref: str, exc: BaseException) -> str:
    """One line for a prefix that could not be listed: the error code only, because the message
    of a client error can name the endpoint's host."""
    code = retry.error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return f"{ref} cannot be listed ({code})"


def no_objects(ref: str) -> str:
    return f"{ref} does not exist (no objects under this prefix)"


def _s3_names(ref: str) -> set[str] | str:
    try:
        names = set(storage.list_names(ref))
    except LISTING_ERRORS as exc:
        return unlistable(ref, exc)
    return names or no_objects(ref)


def _local_names(ref: str) -> set[str] | str:
    path = Path(os.path.expanduser(ref))  # as workers.model_resolver reads it
    if not path.exists():
        return f"{ref} does not exist (expected builtin:NAME, an s3:// folder or a local model folder)"
    if not path.is_dir():
        return f"{ref} is not a folder (a model is a folder with config.json and weights)"
    try:
        return {p.name for p in path.iterdir() if p.is_file()}
    except OSError as exc:
        return f"{ref} cannot be read ({exc.strerror})"


def folder_problem(ref: str, names: set[str], need: str = "weights") -> str | None:
    """Why a folder whose top-level file names are `names` is not the model `need` asks for."""
    if CONFIG not in names:
        return f"{ref} is not a model folder (no {CONFIG})"
    if need == "weights" and not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        return f"{ref} is not a model folder (no .safetensors or .gguf weights)"
    if need == "tokenizer" and TOKENIZER_FILE not in names:
        return f"{ref} has no {TOKENIZER_FILE} (a pretrain's vocab names a model whose tokenizer to use)"
    return None
