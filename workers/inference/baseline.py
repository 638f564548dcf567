"""`engine: baseline`: the model-free baselines as an inference engine, so they run as jobs.

summarize -> lead sentence, translate -> identity (the floor for chrF/BLEU), classify -> TF-IDF
+ logistic regression. The classifier is fitted once, by the job runner (`prepare_classifier`),
on `task.train_uri`, and saved to `<output>/_baseline/`: every actor then loads the same fitted
weights, and a resumed job reuses them, so all shards of a job are labelled by one model.

`BaselineRunner.run_task` answers like `llm_core.llm.LLM.run_task`: one RowResult per text, the
same per-row errors for null/empty text. There is no tokenizer, so token counts are whitespace
words (prompt: the text; completion: the output), which keeps the report's length plots
meaningful; there is no context limit, so `max_input_tokens`/`on_long_input` do not apply.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from cluster import storage
from llm_core.baselines import TfidfClassifier, identity_translation, lead_sentence
from llm_core.llm import RowResult
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskKind, TaskSpec, screen_rows

log = structlog.get_logger()

BASELINE_DIR = "_baseline"
CLASSIFIER_FILES = ("config.json", "vocabulary.json", "weights.npz")


def read_training_rows(train_uri: str | list[str], text_column: str, label_column: str,
                       labels: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Texts and labels of the training rows whose label is one of the task's (others are dropped)."""
    tables = []
    for ref in storage.list_files(train_uri):
        with storage.open_input(ref.uri) as f:  # checked at open against the job's scope
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            missing = [c for c in (text_column, label_column) if c not in schema.names]
            if missing:
                raise ValueError(f"training data {ref.uri}: column(s) {missing} missing (columns: {schema.names})")
            table = parquet.read(columns=[text_column, label_column])
        tables.append(table.select([text_column, label_column]).rename_columns(["text", "label"]))
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.set_column(1, "label", pc.cast(table.column("label"), pa.string()))
    keep = pc.and_(pc.is_in(table.column("label"), pa.array(list(labels), pa.string())),
                   pc.invert(pc.is_null(table.column("text"))))
    kept = table.filter(keep)
    if kept.num_rows < table.num_rows:
        log.info("baseline.train_rows_dropped", dropped=table.num_rows - kept.num_rows,
                 reason="null text or a label not in task.labels")
    return kept.column("text").to_pylist(), kept.column("label").to_pylist()


def prepare_classifier(output_uri: str, train_uri: str | list[str], text_column: str, label_column: str,
                       labels: tuple[str, ...]) -> str:
    """Fit the TF-IDF classifier once and save it under the output; reuse one already there (resume)."""
    model_uri = storage.join(output_uri, BASELINE_DIR)
    if all(storage.exists(storage.join(model_uri, name)) for name in CLASSIFIER_FILES):
        log.info("baseline.classifier_reused", uri=model_uri)
        return model_uri
    texts, train_labels = read_training_rows(train_uri, text_column, label_column, labels)
    classifier = TfidfClassifier().fit(texts, train_labels)
    with tempfile.TemporaryDirectory(prefix="llmbatch-baseline-") as tmp:
        classifier.save(tmp)
        for name in CLASSIFIER_FILES:
            storage.write_bytes(storage.join(model_uri, name), (Path(tmp) / name).read_bytes())
    log.info("baseline.classifier_fitted", rows=len(texts), classes=classifier.classes, uri=model_uri)
    return model_uri


def load_classifier(model_uri: str) -> TfidfClassifier:
    with tempfile.TemporaryDirectory(prefix="llmbatch-baseline-") as tmp:
        for name in CLASSIFIER_FILES:
            (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(model_uri, name)))
        return TfidfClassifier.load(tmp)


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


class BaselineRunner:
    """Stands in for `LLM` in an inference actor when the manifest says `engine: baseline`."""

    name = "baseline"

    def __init__(self, classifier_uri: str | None = None):
        self.classifier = load_classifier(classifier_uri) if classifier_uri else None

    def run_task(self, spec: TaskSpec, texts: list, params: SamplingParams | None = None, *,
                 max_input_tokens: int | None = None, on_long_input: str = "truncate",
                 target_languages: list | None = None) -> list[RowResult]:
        errors, good = screen_rows(spec, texts, target_languages)
        results: list[RowResult | None] = [RowResult(None, errors[i]) if i in errors else None
                                           for i in range(len(texts))]
        outputs = self._outputs(spec, [texts[i] for i in good])
        for i, output in zip(good, outputs):
            results[i] = RowResult(output or None, None if output else "baseline produced an empty output",
                                   "stop", _words(texts[i]), _words(output))
        return results  # type: ignore[return-value]

    def _outputs(self, spec: TaskSpec, texts: list[str]) -> list[str]:
        if spec.kind == TaskKind.SUMMARIZE:
            return [lead_sentence(text) for text in texts]
        if spec.kind == TaskKind.TRANSLATE:
            return [identity_translation(text) for text in texts]
        if spec.kind == TaskKind.CLASSIFY:
            if self.classifier is None:
                raise RuntimeError("classify baseline without a fitted classifier (task.train_uri)")
            return self.classifier.predict(texts)
        raise ValueError(f"no baseline for task {spec.kind!r}")
