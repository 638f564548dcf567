"""Training data: one global sample order, dealt to ranks by micro-batch.

The order is a function of (data, seed, epoch) only, never of the worker count: each epoch
shuffles the units (Parquet row groups) and, inside each unit, its rows (workers.training.units);
the rows' samples (packed sequences for causal_lm packing) follow one another in one endless
stream over the epochs. From a start sample S, global micro-batch j (samples S + j*mb ...) goes to
rank j % world, and all ranks step in lockstep, so after k micro-batches each the job has trained
on exactly the samples [S, S + k*mb*world). A checkpoint records that global count; a resume on
any worker count starts there. The sample index (workers.training.sample_index) says how many
samples each unit yields, so a rank skips the units holding none of its samples without reading
them, and encodes only its own rows. Packing is the exception: a rank tokenizes every unit that
holds part of one of its sequences (with units larger than world*mb*seq_len tokens, all of them).
"""

from __future__ import annotations

from collections.abc import Iterator

from workers.training import units as unit_io
from workers.training.config import DataSpec, TrainingConfig
from workers.training.encode import Encoder
from workers.training.sample_index import SampleIndex, build_index
from workers.training.units import (  # noqa: F401  (re-exported: the training package's data API)
    StaleIndexError,
    Unit,
    count_rows,
    document_tokens,
    epoch_order,
    global_rows,
    is_holdout,
    list_units,
    one_sample,
    row_order,
)


class RankShare:
    """Which global samples a rank trains on: from `start`, micro-batch j goes to rank j % world."""

    def __init__(self, start: int, micro_batch: int, rank: int, world: int):
        self.start, self.mb, self.rank, self.world = start, micro_batch, rank, world

    def owns(self, sample: int) -> bool:
        return sample >= self.start and ((sample - self.start) // self.mb) % self.world == self.rank

    def any_in(self, lo: int, hi: int) -> bool:
        """Whether one of the samples [lo, hi) is this rank's."""
        lo = max(lo, self.start)
        if lo >= hi:
            return False
        j = (lo - self.start) // self.mb
        if j % self.world == self.rank:
            return True
        mine = j + (self.rank - j) % self.world
        return self.start + mine * self.mb < hi


def _unit_rows(index: SampleIndex, units: list[Unit], u: int, columns: list[str], seed: int, epoch: int) -> list[dict]:
    """The unit's rows that yield training samples (or tokens), in the epoch's order."""
    entry = index.units[u]
    rows = unit_io.read_unit(units[u], columns)
    if len(rows) != entry.rows:
        raise StaleIndexError(f"{units[u].uri} row group {units[u].row_group} has {len(rows)} rows, "
                              f"the sample index {entry.rows}: the data changed during the job")
    skip = set(entry.skip)
    return [rows[i] for i in row_order(len(rows), seed, epoch, u) if i not in skip]


def row_samples(index: SampleIndex, units: list[Unit], encoder: Encoder, seed: int,
                share: RankShare) -> Iterator[dict]:
    """This rank's samples, one per row, in global order (unpacked objectives)."""
    per_epoch = index.samples_per_epoch
    epoch = share.start // per_epoch
    first = epoch * per_epoch  # global number of the next unit's first sample
    while True:
        for u in epoch_order(len(units), seed, epoch):
            lo, first = first, first + index.units[u].samples
            if not share.any_in(lo, first):
                continue  # none of this rank's: not even read
            for k, row in enumerate(_unit_rows(index, units, u, encoder.columns, seed, epoch)):
                if share.owns(lo + k):
                    sample = one_sample(encoder, row)
                    if sample is None:
                        raise StaleIndexError(f"{units[u].uri} row group {units[u].row_group}: a row the "
                                              "sample index counted gives no sample")
                    yield sample
        epoch += 1


def packed_samples(index: SampleIndex, units: list[Unit], encoder: Encoder, seed: int,
                   share: RankShare) -> Iterator[dict]:
    """This rank's packed sequences: sample j is tokens [j*L, (j+1)*L) of the global token stream."""
    seq_len, per_epoch = index.seq_len, index.tokens_per_epoch
    epoch = share.start * seq_len // per_epoch
    first = epoch * per_epoch  # global position of the next unit's first token
    open_sample: tuple[int, list[int]] | None = None  # a sequence of ours that goes on into the next unit
    while True:
        for u in epoch_order(len(units), seed, epoch):
            lo, first = first, first + index.units[u].tokens
            hi = first
            js = range(max(share.start, lo // seq_len), (hi - 1) // seq_len + 1) if hi > lo else range(0)
            mine = [j for j in js if share.owns(j)]
            if not mine:
                continue
            tokens = [t for row in _unit_rows(index, units, u, encoder.columns, seed, epoch)
                      for t in (document_tokens(encoder, row) or [])]
            if len(tokens) != hi - lo:
                raise StaleIndexError(f"{units[u].uri} row group {units[u].row_group} gives {len(tokens)} "
                                      f"tokens, the sample index {hi - lo}: data or tokenizer changed")
            for j in mine:
                part = tokens[max(j * seq_len, lo) - lo: min((j + 1) * seq_len, hi) - lo]
                if open_sample is not None and open_sample[0] == j:
                    open_sample[1].extend(part)
                else:
                    open_sample = (j, part)
                if (j + 1) * seq_len <= hi:
                    ids = open_sample[1]
                    open_sample = None
                    yield {"input_ids": ids, "labels": ids}
        epoch += 1


def batches_of(samples: Iterator[dict], size: int, encoder: Encoder) -> Iterator[dict]:
    batch: list[dict] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield encoder.collate(batch)
            batch = []
    if batch:
        yield encoder.collate(batch)


def train_batches(config: TrainingConfig, encoder: Encoder, rank: int, world: int, start: int = 0,
                  index: SampleIndex | None = None) -> Iterator[dict]:
    """Endless micro-batches of this rank, from global sample `start` on (always full: the stream
    runs on into the next epoch). `index`: the job's sample index (built here when not given)."""
    units = list_units(config.data.train)
    index = index if index is not None else build_index(config, encoder, units)
    index.check_units(units)
    share = RankShare(start, config.training.micro_batch, rank, world)
    stream = packed_samples if index.packed else row_samples
    samples = stream(index, units, encoder, config.training.seed, share)
    return batches_of(samples, config.training.micro_batch, encoder)


def eval_batches(config: TrainingConfig, encoder: Encoder, rank: int, world: int) -> list[dict]:
    """This rank's eval micro-batches (at most training.eval_max_batches): global eval micro-batch
    j goes to rank j % world, as in training. [] if no eval data."""
    data, loop = config.data, config.training
    if data.eval is not None:
        units, keep = list_units(data.eval), None
    elif data.eval_fraction:
        units, keep = list_units(data.train), (lambda r: is_holdout(r, data))
    else:
        return []
    rows = global_rows(units, encoder.columns, loop.seed, 0, keep)
    out = []
    for j, batch in enumerate(batches_of(encoder.samples(rows), loop.micro_batch, encoder)):
        if j % world == rank:
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
        found |= {r[column] for r in unit_io.read_unit(unit, [column]) if r.get(column) is not None}
    if len(found) < 2:
        raise ValueError(f"classification needs at least 2 labels in column {column!r}")
    return sorted(found)
