"""The plan as a user reads it (`llmbatch validate --deep`, `llmbatch run --dry-run`)."""

from __future__ import annotations

from collections import Counter

from jobs.run.preflight.plan import Plan
from workers.model_identity import identity_digest

MAX_FILES = 20  # files listed one by one; more are counted


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def model_line(ref: str, identity: dict) -> str:
    """`ref (kind, N files, identity <12 hex>)`: the short form of a model identity."""
    if not identity:
        return ref
    facts = [str(identity.get("kind", "?"))]
    if isinstance(identity.get("files"), dict):
        facts.append(f"{len(identity['files'])} files")
    facts.append(f"identity {identity_digest(identity)[:12]}")
    return f"{ref} ({', '.join(facts)})"


def plan_lines(plan: Plan, *, title: str, model_ref: str | None = None, id_column: str | None = None) -> list[str]:
    lines = [title]
    if plan.files:
        total = sum(f.size for f in plan.files)
        lines.append(f"input: {len(plan.files)} file(s), {human_bytes(total)}")
        rows = plan.file_rows()
        for f in plan.files[:MAX_FILES]:
            lines.append(f"  {f.uri}  {human_bytes(f.size)}" + (f"  {rows[f.uri]} rows" if plan.shards else ""))
        if len(plan.files) > MAX_FILES:
            lines.append(f"  ... and {len(plan.files) - MAX_FILES} more")
    if plan.shards:
        lines.append(f"shards: {len(plan.shards)}")
    lines.append(f"rows: {plan.rows}")
    if plan.dropped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(Counter(d["reason"] for d in plan.dropped).items()))
        lines.append(f"dropped rows: {len(plan.dropped)} ({reasons})")
    if plan.id_type:
        lines.append(f"id column: {id_column!r} read as {plan.id_type}" if id_column else f"id type: {plan.id_type}")
    if model_ref:
        lines.append(f"model: {model_line(model_ref, plan.model)}")
    if plan.adapter:
        lines.append(f"adapter: {model_line(plan.adapter.get('uri') or plan.adapter.get('path', '?'), plan.adapter)}")
    if plan.est_prompt_tokens or plan.est_completion_tokens:
        lines.append(f"estimated tokens: {plan.est_prompt_tokens:,} prompt + {plan.est_completion_tokens:,} completion")
    if plan.checked:
        lines.append("checked:")
        lines += [f"  {c}" for c in plan.checked]
    if plan.warnings:
        lines.append(f"warnings ({len(plan.warnings)}):")
        lines += [f"  - {w}" for w in plan.warnings]
    if plan.problems:
        lines.append(f"problems ({len(plan.problems)}): the job would be refused")
        lines += [f"  - {p}" for p in plan.problems]
    else:
        lines.append("ok: no problems found")
    return lines
