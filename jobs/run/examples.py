"""A job's few-shot examples, ready for the TaskSpec: inline items as they are, or a Parquet
`task.examples.uri` read once on the driver by the pre-flight (jobs.run.preflight.prompts.
check_examples; scope-checked where each file is opened) and sent to the workers inside the TaskSpec.

Refused before any work, naming the file and row: a file or column that is not there, a row with
an empty text or output, a classify output that is not one of the labels, a translate example
without its target language where one is needed, or no usable example at all. A file with more
rows than llm_core.fewshot.MAX_POOL is sampled down to that many (seeded by `examples.seed`, in
file order), and each text and output is stored cut to max_example_tokens x
CHARS_PER_TOKEN_BOUND characters (the workers then cut them to max_example_tokens tokens).
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from cluster import storage
from cluster.hashing import stable_json_sha256
from jobs.manifest import InferenceManifest
from jobs.manifest.tasks import Examples
from llm_core.fewshot import CHARS_PER_TOKEN_BOUND, MAX_POOL, Example, FewShotSpec
from llm_core.languages import language_name
from llm_core.tasks import TaskKind

log = structlog.get_logger()

FIELD = "task.examples.uri"
MAX_LISTED = 5  # row problems named in a refusal; the rest counted


class ExamplesError(ValueError):
    """The examples cannot be used; the message names the field, the file and the rows."""


def fewshot_spec(m: InferenceManifest, loaded: tuple[Example, ...] | None = None) -> FewShotSpec | None:
    """The task's FewShotSpec: inline items from the manifest, or `loaded` (load_examples) for a URI."""
    section: Examples | None = getattr(m.task, "examples", None)
    if section is None:
        return None
    if section.items is not None:  # cut as a file's are: the TaskSpec stays small whatever the manifest holds
        cap = section.max_example_tokens * CHARS_PER_TOKEN_BOUND
        examples = tuple(Example(i.text[:cap], i.output[:cap], i.target_language) for i in section.items)
    elif loaded is None:
        raise ValueError(f"{FIELD}: the examples file was not loaded (jobs.run.examples.load_examples)")
    else:
        examples = loaded
    return FewShotSpec(examples, k=section.k, select=section.select, seed=section.seed,
                       max_example_tokens=section.max_example_tokens)


def load_examples(m: InferenceManifest, scope: storage.Scope | None) -> tuple[tuple[Example, ...], str]:
    """(the examples of task.examples.uri, a note when the file was sampled down). ExamplesError
    (or storage.ScopeError) when they cannot be used."""
    section: Examples = m.task.examples
    try:
        refs = storage.list_files(section.uri, scope=scope)
    except FileNotFoundError as exc:
        raise ExamplesError(f"{FIELD}: {exc}") from exc
    if not refs:
        raise ExamplesError(f"{FIELD}: no Parquet file at {section.uri}")
    columns = [section.text_column, section.output_column] + (
        [section.target_language_column] if section.target_language_column else [])
    rows: list[tuple[str, int, list]] = []  # (file, row number in the file, values)
    for ref in refs:
        rows += [(ref.uri, n, values) for n, values in enumerate(_read(ref.uri, columns, scope))]
    if not rows:
        raise ExamplesError(f"{FIELD}: {section.uri} holds no rows")
    note = ""
    if len(rows) > MAX_POOL:  # the pool travels to every worker: bounded, a seeded sample in file order
        keep = sorted(random.Random(section.seed).sample(range(len(rows)), MAX_POOL))
        note = (f"task.examples: {section.uri} has {len(rows)} rows; {MAX_POOL} of them (seeded by "
                f"examples.seed) are the pool (at most {MAX_POOL})")
        rows = [rows[i] for i in keep]
    examples, problems = _examples(m, section, rows)
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise ExamplesError(f"{FIELD}: " + "; ".join(problems[:MAX_LISTED]) + more)
    log.info("examples.loaded", uri=section.uri, files=len(refs), examples=len(examples), sampled=bool(note))
    return tuple(examples), note


def _read(uri: str, columns: list[str], scope: storage.Scope | None) -> list[list]:
    try:
        parquet = pq.ParquetFile(storage.open_input(uri, scope=scope))
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise ExamplesError(f"{FIELD}: {uri}: no column {', '.join(map(repr, missing))} "
                                f"(columns: {', '.join(parquet.schema_arrow.names)})")
        table = parquet.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise ExamplesError(f"{FIELD}: {uri}: cannot be read as Parquet ({exc})") from exc
    return [list(values) for values in zip(*(table.column(c).to_pylist() for c in columns))]


def _examples(m: InferenceManifest, section: Examples, rows: list[tuple[str, int, list]]) -> tuple[list, list]:
    task, cap = m.task, section.max_example_tokens * CHARS_PER_TOKEN_BOUND
    labels = set(getattr(task, "labels", ()) or ())
    fixed = getattr(task, "target_language", None)
    per_row = bool(getattr(task, "target_language_column", None))
    examples, problems = [], []
    for uri, n, values in rows:
        text, output, language = (values + [None])[:3]
        where = f"{uri} row {n}"
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: {section.text_column} is empty or not a string")
        elif not isinstance(output, str) or not output.strip():
            problems.append(f"{where}: {section.output_column} is empty or not a string")
        elif task.kind == TaskKind.CLASSIFY and output not in labels:
            problems.append(f"{where}: {section.output_column} {output[:80]!r} is not one of the labels")
        elif section.target_language_column and per_row and not fixed and not (isinstance(language, str)
                                                                                and language.strip()):
            problems.append(f"{where}: {section.target_language_column} is empty (rows take their language "
                            "from the input, so each example needs its own)")
        else:
            lang = language.strip() if isinstance(language, str) and language.strip() else None
            examples.append(Example(text[:cap], output[:cap], lang))
    if not problems and task.kind == TaskKind.TRANSLATE and fixed and not per_row:
        usable = [e for e in examples if e.target_language is None
                  or language_name(e.target_language).lower() == language_name(fixed).lower()]
        if not usable:
            problems.append(f"no example has the task's target_language {fixed!r}")
    return examples, problems


def examples_digest(spec: FewShotSpec | None) -> str | None:
    """The content of the examples, for the run's fingerprint (a changed file is a different run)."""
    if spec is None:
        return None
    return stable_json_sha256([[e.text, e.output, e.target_language] for e in spec.examples])
