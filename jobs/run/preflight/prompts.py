"""Prompt lengths against the model's context, on a sample of rows, and the job's token estimate.

The prompt of a row is built as the engine builds it (llm_core.llm: the task's chat messages, the
model's chat template, its tokenizer) and compared with the same limit: the context
(`max_position_embeddings`) less `max_new_tokens` (classify: less its longest label's tokens), or
`params.max_input_tokens` when smaller. Few-shot examples are chosen for the sampled rows as the
workers will choose them (llm_core.fewshot), cut to their token cap and left out where they do
not fit (llm_core.prompting): they count in the token estimate, and rows that would get fewer
than `k` are a warning. Only a model folder already on this node is read: the pre-flight never
downloads a model for this. Without one, the estimate counts ~4 characters a token and says so.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster import storage
from jobs.manifest import InferenceManifest
from jobs.manifest.tasks import Examples
from jobs.run.examples import FIELD, ExamplesError, fewshot_spec, load_examples
from jobs.run.preflight.plan import Plan
from jobs.run.work import task_spec
from llm_core.fewshot import FewShotSpec, select_examples
from llm_core.prompting import chat_ids, fit_prompt, shorten_example
from llm_core.tasks import TaskKind, TaskSpec, user_message
from llm_core.tokenizer import ChatTemplateError, ModelTokenizer

CHARS_PER_TOKEN = 4  # the rough rule for English text, when the model's tokenizer is not here
# config.json's mark of a classification-head folder (llm_core.models.classifier, which imports
# torch: read here from the config instead of importing it into every dry run).
CLASSIFIER_TASK = ("llmbatch_task", "classification")


def sample_rows(m: InferenceManifest, plan: Plan, n: int, scope: storage.Scope | None) -> list[tuple[str, str | None]]:
    """The first `n` rows with a non-empty text, in input order: (text, target language)."""
    text_col = m.input.text_column
    lang_col = getattr(m.task, "target_language_column", None)
    columns = [text_col] + ([lang_col] if lang_col else [])
    out: list[tuple[str, str | None]] = []
    readable = {s.file_uri for s in plan.shards}  # a file the input check refused is not read again
    for ref in (f for f in plan.files if f.uri in readable):
        try:
            parquet = pq.ParquetFile(storage.open_input(ref.uri, scope=scope))
            for batch in parquet.iter_batches(batch_size=max(n, 1), columns=columns):
                texts = batch.column(0).to_pylist()
                langs = batch.column(1).to_pylist() if lang_col else [None] * len(texts)
                out += [(t, lang) for t, lang in zip(texts, langs) if isinstance(t, str) and t.strip()]
                if len(out) >= n:
                    return out[:n]
        except (OSError, pa.ArrowException) as exc:  # a bad row group fails its shard (on_shard_failure)
            plan.warnings.append(f"input: {ref.uri}: rows could not be sampled ({exc})")
    return out


def check_examples(m: InferenceManifest, plan: Plan, scope: storage.Scope | None) -> FewShotSpec | None:
    """The job's few-shot examples (a file's loaded here, once), also kept as plan.examples for
    the prompt check and the run; None with the problem added to the plan when they cannot be used."""
    section: Examples | None = getattr(m.task, "examples", None)
    if section is None:
        return None
    if m.engine == "baseline":
        plan.warnings.append("task.examples: engine: baseline uses no prompt; the examples are ignored")
    try:
        loaded, note = load_examples(m, scope) if section.uri is not None else (None, "")
        spec = fewshot_spec(m, loaded)
    except (ExamplesError, ValueError, storage.ScopeError) as exc:
        plan.problems.append(str(exc) if str(exc).startswith("task.examples") else f"{FIELD}: {exc}")
        return None
    plan.examples = spec
    if note:
        plan.warnings.append(note)
    plan.checked.append(f"task.examples: {len(spec.examples)} example(s), k {spec.k}, select {spec.select}")
    return spec


def check_prompts(m: InferenceManifest, plan: Plan, model_dir: Path | None, n: int,
                  scope: storage.Scope | None) -> None:
    """Token lengths of a sample (a problem when every row would fail, a warning when some
    would be cut or fail) and plan.est_prompt_tokens / est_completion_tokens."""
    examples = plan.examples  # check_examples (above), run first by the pre-flight
    section = getattr(m.task, "examples", None)
    if section is not None and section.uri is not None and examples is None:
        plan.checked.append("prompts: not checked (task.examples could not be loaded)")
        return
    spec = task_spec(m, examples)
    rows = sample_rows(m, plan, n, scope) if plan.rows else []
    if model_dir is None:
        plan.warnings.append(f"token lengths not checked: model {m.model} is not on this node "
                             "(the token estimate counts ~4 characters a token)")
        _estimate_by_characters(m, spec, plan, rows)
        return
    try:
        tokenizer = ModelTokenizer(model_dir)
        if tokenizer.config.get(CLASSIFIER_TASK[0]) == CLASSIFIER_TASK[1]:
            plan.checked.append("prompts: a classification-head model cuts each text to its trained length")
            if spec.fewshot is not None:
                plan.warnings.append("task.examples: a classification-head model uses no prompt; "
                                     "the examples are ignored")
            return
        lengths = [len(chat_ids(tokenizer, spec, t, lang)) for t, lang in rows]
        bare = len(chat_ids(tokenizer, spec, "", rows[0][1] if rows else None))
        context = int(tokenizer.config.get("max_position_embeddings") or 2048)
        label_tokens = [len(tokenizer.encode(label)) + 1 for label in spec.labels]  # then end-of-turn
        reserved = max(label_tokens) if spec.kind == TaskKind.CLASSIFY else m.params.max_new_tokens
        limit = min(m.params.max_input_tokens or context - reserved, context - reserved)
        prompted = _with_examples(m, spec, plan, tokenizer, rows, limit) if limit > 0 else lengths
    except ChatTemplateError as exc:
        plan.problems.append(f"model: {m.model}: the prompt cannot be built ({exc})")
        return
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
        plan.problems.append(f"model: {m.model}: its tokenizer cannot be read ({exc})")
        return
    _judge(m, plan, lengths, bare, limit, context, reserved)
    plan.est_prompt_tokens = round(sum(min(x, limit) for x in prompted) / len(prompted) * plan.rows) if prompted else 0
    if spec.kind == TaskKind.CLASSIFY:
        plan.est_completion_tokens = round(sum(label_tokens) / len(label_tokens) * plan.rows)
    else:  # an upper bound: rows that stop early take fewer; params.n completions each
        plan.est_completion_tokens = m.params.max_new_tokens * m.params.n * plan.rows


def _with_examples(m: InferenceManifest, spec: TaskSpec, plan: Plan, tokenizer: ModelTokenizer,
                   rows: list[tuple[str, str | None]], limit: int) -> list[int]:
    """The sampled rows' prompt lengths with their few-shot examples, as the workers build them
    (rows that fail get none); a warning when examples would be left out to fit."""
    fewshot = spec.fewshot
    if fewshot is None or not rows:
        return [len(chat_ids(tokenizer, spec, t, lang)) for t, lang in rows]
    picks = select_examples(fewshot, [t for t, _ in rows], [lang for _, lang in rows], spec.target_language)
    lengths, short = [], 0
    for (text, lang), pick in zip(rows, picks):
        shots = tuple(shorten_example(tokenizer, e, fewshot.max_example_tokens) for e in pick)
        prompt = fit_prompt(tokenizer, spec, text, lang, shots, limit, m.params.on_long_input)
        if prompt.ids is not None:
            lengths.append(len(prompt.ids))
            short += len(prompt.examples) < len(shots)
    if lengths:
        plan.checked.append(f"prompts: with up to {fewshot.k} example(s) a row, sampled prompts are "
                            f"{round(sum(lengths) / len(lengths))} tokens on average (longest {max(lengths)})")
    if short:
        plan.warnings.append(f"task.examples: {short} of {len(rows)} sampled rows fit fewer of their examples "
                             f"than chosen within {limit} tokens (examples are left out before a row is cut; "
                             "a smaller examples.k or examples.max_example_tokens keeps them all)")
    return lengths


def _judge(m: InferenceManifest, plan: Plan, lengths: list[int], bare: int, limit: int, context: int,
           reserved: int) -> None:
    spent = "the longest label's tokens" if m.task.kind == TaskKind.CLASSIFY else "max_new_tokens"
    where = (f"{limit} tokens (the model's context {context}" + (f" less {spent} {reserved}" if reserved else "")
             + (f", or params.max_input_tokens {m.params.max_input_tokens}" if m.params.max_input_tokens else "") + ")")
    if limit <= 0:
        what = ("task.labels: the longest label's" if m.task.kind == TaskKind.CLASSIFY else "params.max_new_tokens")
        plan.problems.append(f"{what} {reserved} leaves no room for a prompt in the model's context of {context} tokens")
        return
    if bare > limit:
        what = f" (the task lists {len(m.task.labels)} labels)" if m.task.kind == TaskKind.CLASSIFY else ""
        plan.problems.append(f"prompts: the prompt without any row text is already {bare} tokens{what}, over "
                             f"the limit of {where}: every row would fail")
        return
    plan.checked.append(f"prompts: {len(lengths)} sampled row(s) tokenized; limit {where}")
    long = [x for x in lengths if x > limit]
    if not long:
        return
    share = f"{len(long)} of {len(lengths)} sampled prompts ({len(long) / len(lengths):.0%}) are longer than {where}"
    if m.params.on_long_input == "error":
        if len(long) == len(lengths):
            plan.problems.append(f"prompts: every one of {share}; params.on_long_input: error would fail every "
                                 "row (use truncate, a shorter text or a model with a longer context)")
        else:
            plan.warnings.append(f"prompts: {share}; params.on_long_input: error makes such rows error rows")
    else:
        plan.warnings.append(f"prompts: {share}; params.on_long_input: truncate cuts their text to fit "
                             f"(longest sampled: {max(long)} tokens)")


def _estimate_by_characters(m: InferenceManifest, spec: TaskSpec, plan: Plan, rows: list) -> None:
    if rows:
        chars = sum(len(user_message(spec, t, lang)) + len(spec.system_prompt or "") for t, lang in rows)
        plan.est_prompt_tokens = round((chars / len(rows) + _example_chars(spec, rows)) / CHARS_PER_TOKEN * plan.rows)
    if spec.kind == TaskKind.CLASSIFY:
        per_row = sum(len(label) / CHARS_PER_TOKEN + 1 for label in spec.labels) / len(spec.labels)
        plan.est_completion_tokens = round(per_row * plan.rows)
    else:
        plan.est_completion_tokens = m.params.max_new_tokens * m.params.n * plan.rows


def _example_chars(spec: TaskSpec, rows: list) -> float:
    """Characters the sampled rows' examples add to a prompt, on average (each cut to its cap)."""
    if spec.fewshot is None:
        return 0.0
    cap = spec.fewshot.max_example_tokens * CHARS_PER_TOKEN
    picks = select_examples(spec.fewshot, [t for t, _ in rows], [lang for _, lang in rows], spec.target_language)
    added = sum(len(user_message(spec, e.text[:cap], e.target_language or lang)) + min(len(e.output), cap)
                for (_, lang), pick in zip(rows, picks) for e in pick)
    return added / len(rows)
