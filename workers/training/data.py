"""Training data: Parquet rows streamed per rank, tokenized per objective, cut into micro-batches.

Every rank must take the same number of optimizer steps (ZeRO's collectives run in lockstep),
so the train stream of each rank is endless: it cycles over the rank's share, reshuffled each
epoch from (seed, epoch). The share is a deterministic function of (files, rank, world size):
row groups dealt round-robin, or every world-th row when there are fewer row groups than ranks.
A resumed run skips the micro-batches already consumed, so it sees exactly the data it would have.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from cluster import storage
from workers.training.config import DataSpec, TrainingConfig
from workers.training.encode import Encoder, collate


@dataclass(frozen=True)
class Unit:
    uri: str
    row_group: int


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


def _read_unit(unit: Unit, columns: list[str]) -> list[dict]:
    with storage.open_input(unit.uri) as f:  # checked again: the file may have been swapped
        pf = pq.ParquetFile(f)
        present = [c for c in columns if c in pf.schema_arrow.names]
        return pf.read_row_group(unit.row_group, columns=present).to_pylist()


def is_holdout(row: dict, data: DataSpec) -> bool:
    """Deterministic eval split by a hash of the row id (or text when there is no id)."""
    key = str(row.get(data.id_column) or row.get(data.text_column) or row.get(data.prompt_column))
    return zlib.crc32(key.encode()) % 10_000 < data.eval_fraction * 10_000


def rank_rows(units: list[Unit], columns: list[str], rank: int, world: int, seed: int,
              epoch: int, keep=None) -> Iterator[dict]:
    """One epoch of this rank's rows, in an order fixed by (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_group = len(units) >= world
    mine = units[rank::world] if by_group else units
    order = list(mine)
    rng.shuffle(order)
    for unit in order:
        rows = _read_unit(unit, columns)
        if not by_group:
            rows = rows[rank::world]
        rng.shuffle(rows)
        for row in rows:
            if keep is None or keep(row):
                yield row


def _batches(samples: Iterator[dict], size: int, pad_id: int) -> Iterator[dict]:
    batch: list[dict] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield collate(batch, pad_id)
            batch = []
    if batch:
        yield collate(batch, pad_id)


def train_batches(config: TrainingConfig, encoder: Encoder, rank: int, world: int,
                  skip: int = 0) -> Iterator[dict]:
    """Endless micro-batches of this rank; the first `skip` (already trained on) are dropped."""
    data, seed = config.data, config.training.seed
    units = list_units(data.train)
    keep = (lambda r: not is_holdout(r, data)) if data.eval_fraction else None
    epoch, produced = 0, 0
    while True:
        rows = rank_rows(units, encoder.columns, rank, world, seed, epoch, keep)
        empty = True
        for batch in _batches(encoder.samples(rows), config.training.micro_batch, encoder.tok.pad_token_id):
            empty = False
            produced += 1
            if produced > skip:
                yield batch
        if empty:
            raise ValueError(f"rank {rank} of {world} has no training samples in {data.train}")
        epoch += 1


def eval_batches(config: TrainingConfig, encoder: Encoder, rank: int, world: int) -> list[dict]:
    """This rank's eval micro-batches (at most training.eval_max_batches); [] if no eval data."""
    data, loop = config.data, config.training
    if data.eval is not None:
        units, keep = list_units(data.eval), None
    elif data.eval_fraction:
        units, keep = list_units(data.train), (lambda r: is_holdout(r, data))
    else:
        return []
    rows = rank_rows(units, encoder.columns, rank, world, loop.seed, 0, keep)
    out = []
    for batch in _batches(encoder.samples(rows), loop.micro_batch, encoder.tok.pad_token_id):
        out.append(batch)
        if len(out) >= loop.eval_max_batches:
            break
    return out


def discover_labels(data: DataSpec) -> list[str]:
    """The configured labels, else the sorted distinct labels of the training data."""
    if data.labels:
        return list(data.labels)
    column = data.label_column
    found: set[str] = set()
    for unit in list_units(data.train):
        found |= {r[column] for r in _read_unit(unit, [column]) if r.get(column) is not None}
    if len(found) < 2:
        raise ValueError(f"classification needs at least 2 labels in column {column!r}")
    return sorted(found)


def count_samples(config: TrainingConfig, encoder: Encoder) -> int:
    """Training samples in one epoch over all ranks (tokenizes the data when packing)."""
    data = config.data
    units = list_units(data.train)
    keep = (lambda r: not is_holdout(r, data)) if data.eval_fraction else None
    rows = rank_rows(units, encoder.columns, 0, 1, config.training.seed, 0, keep)
    return sum(1 for _ in encoder.samples(rows))
