"""Units of training data (Parquet row groups), their rows, and the order every epoch reads them in.

The order is a function of (data, seed, epoch) only: each epoch shuffles the units and, inside
each unit, its rows, seeded per unit so a reader can start at any unit without replaying the ones
before it. workers.training.data builds the global sample stream on it.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from cluster import storage
from workers.training.config import DataSpec, Objective, TrainingConfig
from workers.training.encode import Encoder


@dataclass(frozen=True)
class Unit:
    uri: str
    row_group: int


class StaleIndexError(RuntimeError):
    """The data no longer matches the sample index built from it (a file changed under the job)."""


def list_units(uri: str | list[str]) -> list[Unit]:
    units = []
    for ref in storage.list_files(uri):
        with storage.open_input(ref.uri) as f:  # checked at open against the job's scope
            n = pq.ParquetFile(f).metadata.num_row_groups
        units += [Unit(ref.uri, i) for i in range(n)]
    return units


def count_rows(uri: str | list[str]) -> int:
    total = 0
    for ref in storage.list_files(uri):
        with storage.open_input(ref.uri) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def read_unit(unit: Unit, columns: list[str]) -> list[dict]:
    with storage.open_input(unit.uri) as f:  # checked again: the file may have been swapped
        pf = pq.ParquetFile(f)
        present = [c for c in columns if c in pf.schema_arrow.names]
        return pf.read_row_group(unit.row_group, columns=present).to_pylist()


def is_holdout(row: dict, data: DataSpec) -> bool:
    """Deterministic eval split by a hash of the row id (or text when there is no id)."""
    key = str(row.get(data.id_column) or row.get(data.text_column) or row.get(data.prompt_column))
    return zlib.crc32(key.encode()) % 10_000 < data.eval_fraction * 10_000


def train_keep(data: DataSpec) -> Callable[[dict], bool] | None:
    """The rows training may use: all but the held-out ones."""
    return (lambda r: not is_holdout(r, data)) if data.eval_fraction else None


def is_packed(config: TrainingConfig) -> bool:
    return config.objective == Objective.CAUSAL_LM and config.data.packing is not False


def epoch_order(n_units: int, seed: int, epoch: int) -> list[int]:
    """The units of an epoch, by their index in list_units order."""
    order = list(range(n_units))
    random.Random(f"units:{seed}:{epoch}").shuffle(order)
    return order


def row_order(n_rows: int, seed: int, epoch: int, unit: int) -> list[int]:
    """A unit's rows in an epoch: seeded per unit, so a resume can start at any unit."""
    order = list(range(n_rows))
    random.Random(f"rows:{seed}:{epoch}:{unit}").shuffle(order)
    return order


def global_rows(units: list[Unit], columns: list[str], seed: int, epoch: int, keep=None) -> Iterator[dict]:
    """One epoch's rows in the global order (the rows every rank's samples come from)."""
    for u in epoch_order(len(units), seed, epoch):
        rows = read_unit(units[u], columns)
        for i in row_order(len(rows), seed, epoch, u):
            if keep is None or keep(rows[i]):
                yield rows[i]


def document_tokens(encoder: Encoder, row: dict) -> list[int] | None:
    """The tokens one row adds to the packed causal_lm stream (as Encoder._packed concatenates them)."""
    text = row.get(encoder.data.text_column)
    return encoder._ids(text) + [encoder.eos] if text else None


def one_sample(encoder: Encoder, row: dict) -> dict | None:
    """The sample of one row for the unpacked objectives (None: the row yields none)."""
    return next(iter(encoder.samples(iter([row]))), None)
