"""The calibration sample of a classify job (`task.calibrate: batch`, llm_core.calibration):
texts of the job's own rows, drawn once on the driver and sent to every worker inside the TaskSpec.

The draw depends only on the input files (sorted by URI, as listed; their rows in file order)
and a fixed seed: the same for every shard and every resume, whatever the shard layout, so a
row's label never depends on the shard it is in. Only the row groups holding sampled rows are
read, and, given each file's rows (the pre-flight plan's), only the files holding them are
opened. Null and blank texts (rows that fail anyway) are left out; each text is cut to
CALIBRATION_TEXT_CHARS characters.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.parquet as pq

from cluster import storage
from jobs.manifest import InferenceManifest
from llm_core.calibration import CALIBRATION_ROWS, CALIBRATION_TEXT_CHARS, sample_indices


def needs_sample(m: InferenceManifest) -> bool:
    return m.engine != "baseline" and getattr(m.task, "calibrate", False) == "batch"


def calibration_texts(m: InferenceManifest, scope: storage.Scope | None, k: int = CALIBRATION_ROWS,
                      file_rows: Iterable[tuple[str, int]] | None = None) -> tuple[str, ...]:
    """Up to k texts of the input's rows, drawn by llm_core.calibration.sample_indices.
    `file_rows`: each input file's URI and rows, as listed (the pre-flight plan's,
    Plan.file_rows): only the files holding sampled rows are then opened. Without it, the
    files are listed and each one's metadata read for its rows."""
    readers: dict[str, pq.ParquetFile] = {}
    if file_rows is None:
        readers = {f.uri: _parquet(f.uri, scope) for f in storage.list_files(m.input.uri, scope=scope)}
        file_rows = [(uri, r.metadata.num_rows) for uri, r in readers.items()]
    file_rows = list(file_rows)
    wanted = sample_indices(sum(count for _, count in file_rows), k)
    texts: list[str] = []
    offset = 0
    for uri, count in file_rows:
        mine = [i - offset for i in wanted if offset <= i < offset + count]
        if mine:
            reader = readers.get(uri) or _parquet(uri, scope)
            texts += _texts_at(reader, m.input.text_column, mine)
        offset += count
    return tuple(t[:CALIBRATION_TEXT_CHARS] for t in texts if isinstance(t, str) and t.strip())


def _parquet(uri: str, scope: storage.Scope | None) -> pq.ParquetFile:
    return pq.ParquetFile(storage.open_input(uri, scope=scope))


def _texts_at(reader: pq.ParquetFile, column: str, rows: list[int]) -> list:
    """The column's values at `rows` (ascending) of one file, reading only their row groups."""
    out: list = []
    start = 0
    for group in range(reader.metadata.num_row_groups):
        size = reader.metadata.row_group(group).num_rows
        inside = [r - start for r in rows if start <= r < start + size]
        if inside:
            values = reader.read_row_group(group, columns=[column]).column(0)
            out += [values[r].as_py() for r in inside]
        start += size
    return out
