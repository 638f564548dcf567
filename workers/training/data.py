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
import torch

from cluster import storage
from llm_core.models.batches import right_pad
from llm_core.models.training import IGNORE_INDEX
from workers.training.config import DataSpec, Objective, TrainingConfig

IGNORE = IGNORE_INDEX  # label value the loss skips: the one llm_core's training module uses


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


# ---- tokenizing, per objective -------------------------------------------------------------


class Encoder:
    """Rows -> samples {input_ids, labels} (causal_lm, sft) or {input_ids, label} (classification)."""

    def __init__(self, config: TrainingConfig, tokenizer, labels: list[str] | None):
        self.objective, self.tok, self.data = config.objective, tokenizer, config.data
        self.label_index = {l: i for i, l in enumerate(labels or [])}
        self.eos = tokenizer.eos_token_id
        self.seq_len = config.data.seq_len
        self.columns = [self.data.id_column, self.data.text_column, self.data.prompt_column,
                        self.data.response_column, self.data.label_column]

    def samples(self, rows: Iterator[dict]) -> Iterator[dict]:
        if self.objective == Objective.CAUSAL_LM:
            yield from (self._documents(rows) if self.data.packing is False else self._packed(rows))
        elif self.objective == Objective.SFT:
            yield from filter(None, (self._sft(r) for r in rows))
        else:
            yield from filter(None, (self._classify(r) for r in rows))

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _packed(self, rows) -> Iterator[dict]:
        buf: list[int] = []
        for row in rows:
            text = row.get(self.data.text_column)
            if not text:
                continue
            buf += self._ids(text) + [self.eos]
            while len(buf) >= self.seq_len:
                chunk, buf = buf[: self.seq_len], buf[self.seq_len :]
                yield {"input_ids": chunk, "labels": chunk}

    def _documents(self, rows) -> Iterator[dict]:
        for row in rows:
            text = row.get(self.data.text_column)
            if text:
                ids = (self._ids(text) + [self.eos])[: self.seq_len]
                yield {"input_ids": ids, "labels": ids}

    def _sft(self, row) -> dict | None:
        prompt, response = row.get(self.data.prompt_column), row.get(self.data.response_column)
        if not prompt or response is None:
            return None
        if getattr(self.tok, "chat_template", None):
            # The same template inference uses, so the tuned model sees its prompts as trained.
            p_ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=True)
            if hasattr(p_ids, "keys"):
                p_ids = p_ids["input_ids"]
        else:
            p_ids = self._ids(prompt + "\n")
        r_ids = self._ids(response) + [self.eos]
        ids = (list(p_ids) + r_ids)[: self.seq_len]
        labels = ([IGNORE] * len(p_ids) + r_ids)[: self.seq_len]
        if all(l == IGNORE for l in labels):
            return None  # prompt alone fills the window: nothing to learn from
        return {"input_ids": ids, "labels": labels}

    def _classify(self, row) -> dict | None:
        text, label = row.get(self.data.text_column), row.get(self.data.label_column)
        if not text or label not in self.label_index:
            return None
        ids = self._ids(text)[: self.seq_len]
        return {"input_ids": ids, "label": self.label_index[label]}


def collate(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; labels of padding are IGNORE."""
    ids, mask = right_pad([s["input_ids"] for s in samples], pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if "labels" in samples[0]:
        out["labels"], _ = right_pad([s["labels"] for s in samples], IGNORE)
    else:
        out["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return out


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
