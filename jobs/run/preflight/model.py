"""The job's model, checked before any worker starts: resolvable (a built-in name known; a local
folder or S3 prefix holding config.json and weights, found by listing) and its identity known
(workers.model_identity). Nothing is downloaded: the folder is read only when it is already on
this node."""

from __future__ import annotations

from pathlib import Path

from cluster import storage
from cluster.model_cache import models_dir
from jobs.run.preflight.plan import Plan
from llm_core.tokenizer import TOKENIZER_FILE
from workers.model_identity import identity_digest, model_identity


def check_model(ref: str, plan: Plan, scope: storage.Scope | None, need: str = "weights",
                field: str = "model") -> dict | None:
    """The model's identity (also in plan.model), or None with a problem naming `field`."""
    try:
        identity = model_identity(ref, scope, need)
    except (OSError, ValueError) as exc:  # ModelNotFound, ScopeError, an unreadable folder
        plan.problems.append(f"{field}: {exc}")
        return None
    plan.model = plan.model or identity
    what = ("a known built-in model" if identity.get("kind") == "builtin"
            else f"{identity.get('kind')} folder with config.json and " + ("weights" if need == "weights" else need))
    plan.checked.append(f"{field}: {ref} resolvable ({what})")
    return identity


def model_dir_on_node(identity: dict) -> Path | None:
    """The model's folder when it is on this node with its tokenizer, else None (never fetched):
    a built-in model or an S3 model already in the node cache, or a local folder."""
    kind = identity.get("kind")
    if kind == "builtin":
        folder = models_dir() / identity["name"]
    elif kind == "s3":  # the cache entry workers.model_resolver names by the model's content
        folder = models_dir() / "s3" / identity_digest(identity)
    elif kind == "local":
        folder = Path(identity["path"])
    else:
        return None
    return folder if (folder / "config.json").is_file() and (folder / TOKENIZER_FILE).is_file() else None
