"""The sample index: how many samples each unit of the training data yields, so the global stream
(workers.training.data) can seek to any sample without reading what comes before it.

Built once per job by the driver in the pass that counts an epoch (the data is read, and encoded,
once), stored beside the checkpoints as `<checkpoint.uri>/sample_index.json`, reused by later runs
of the job while its fingerprint holds (data files by uri, size and version; the encoder's
settings; the tokenizer's digest), rebuilt when it does not.

Per unit, in list_units order: its row count, the rows that yield nothing (held out, empty, a
prompt that fills the window ...), and what it yields: `samples` (one per kept row), or for
packing `tokens`. What unit holds sample j of epoch e is then arithmetic, for any epoch order:
samples run on unit after unit, and for packing, sequence j is tokens [j*L, (j+1)*L) of the
token stream, so the carry-over into a unit is the tokens before it modulo L.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import structlog

from cluster import storage
from workers.training.config import TrainingConfig
from workers.training import units as unit_io
from workers.training.units import Unit, document_tokens, is_packed, list_units, one_sample, train_keep
from workers.training.encode import Encoder

INDEX_FILE = "sample_index.json"
VERSION = 1

log = structlog.get_logger()


@dataclass(frozen=True)
class UnitCount:
    uri: str
    row_group: int
    rows: int
    skip: list[int]  # rows (by position in the row group) that yield no training sample
    samples: int = 0  # unpacked: samples the unit yields
    tokens: int = 0  # packed: tokens the unit adds to the stream


@dataclass(frozen=True)
class SampleIndex:
    fingerprint: dict
    packed: bool
    seq_len: int
    units: list[UnitCount]

    @property
    def samples_per_epoch(self) -> int:
        if self.packed:
            return self.tokens_per_epoch // self.seq_len
        return sum(u.samples for u in self.units)

    @property
    def tokens_per_epoch(self) -> int:
        return sum(u.tokens for u in self.units)

    def check_units(self, units: list[Unit]) -> None:
        listed = [(u.uri, u.row_group) for u in units]
        if listed != [(u.uri, u.row_group) for u in self.units]:
            raise ValueError("the training data's files or row groups differ from the sample index's: "
                             "the data changed since the job was planned")

    def to_dict(self) -> dict:
        return {"version": VERSION, "fingerprint": self.fingerprint, "packed": self.packed,
                "seq_len": self.seq_len, "units": [asdict(u) for u in self.units]}

    @classmethod
    def from_dict(cls, d: dict) -> SampleIndex:
        if d.get("version") != VERSION:
            raise ValueError(f"sample index version {d.get('version')!r}, expected {VERSION}")
        units = [UnitCount(uri=str(u["uri"]), row_group=int(u["row_group"]), rows=int(u["rows"]),
                           skip=[int(i) for i in u["skip"]], samples=int(u["samples"]), tokens=int(u["tokens"]))
                 for u in d["units"]]
        for n, u in enumerate(units):
            if not (0 <= u.samples <= u.rows and u.tokens >= 0 and len(set(u.skip)) == len(u.skip)
                    and all(0 <= i < u.rows for i in u.skip)):
                raise ValueError(f"sample index unit {n} ({u.uri} row group {u.row_group}): counts out of range")
        return cls(fingerprint=dict(d["fingerprint"]), packed=bool(d["packed"]), seq_len=int(d["seq_len"]),
                   units=units)


def tokenizer_digest(tokenizer) -> str:
    """What the tokenizer is: its whole definition where it has one (fast tokenizers), its type and
    special ids otherwise; and the chat template the SFT prompts go through."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else type(tokenizer).__qualname__
    extra = [tokenizer.eos_token_id, tokenizer.pad_token_id, getattr(tokenizer, "chat_template", None)]
    return hashlib.sha256((body + json.dumps(extra, default=str)).encode()).hexdigest()[:32]


def index_fingerprint(config: TrainingConfig, encoder: Encoder) -> dict:
    """Everything the counts depend on; a change to any of it makes a stored index stale."""
    d = config.data
    files = [[f.uri, f.size, f.version] for f in storage.list_files(d.train)]
    return {"files": files, "objective": str(config.objective), "packed": is_packed(config),
            "seq_len": d.seq_len, "columns": encoder.columns, "eval_fraction": d.eval_fraction,
            "labels": sorted(encoder.label_index), "tokenizer": tokenizer_digest(encoder.tok)}


def build_index(config: TrainingConfig, encoder: Encoder, units: list[Unit] | None = None) -> SampleIndex:
    """Read (and encode) the training data once, in file order, and count what each unit yields."""
    units = list_units(config.data.train) if units is None else units
    keep, packed = train_keep(config.data), is_packed(config)
    counts = []
    for unit in units:
        rows = unit_io.read_unit(unit, encoder.columns)
        skip, made = [], 0
        for i, row in enumerate(rows):
            kept = keep is None or keep(row)
            got = (len(document_tokens(encoder, row) or []) if packed else int(one_sample(encoder, row) is not None)
                   ) if kept else 0
            if got:
                made += got
            else:
                skip.append(i)
        counts.append(UnitCount(unit.uri, unit.row_group, len(rows), skip,
                                samples=0 if packed else made, tokens=made if packed else 0))
    index = SampleIndex(index_fingerprint(config, encoder), packed, config.data.seq_len, counts)
    if index.samples_per_epoch == 0:
        raise ValueError(f"no training samples in {config.data.train}"
                         + (f" (packing needs at least {config.data.seq_len} tokens)" if packed else ""))
    return index


def index_uri(config: TrainingConfig) -> str:
    return storage.join(config.checkpoint.uri, INDEX_FILE)


def ensure_sample_index(config: TrainingConfig, encoder: Encoder) -> SampleIndex:
    """The job's index: the stored one if it still describes this data and encoder, else a new
    one, built and stored. The driver calls it before the workers start."""
    uri = index_uri(config)
    want = index_fingerprint(config, encoder)
    if storage.exists(uri):
        try:
            stored = SampleIndex.from_dict(json.loads(storage.read_bytes(uri)))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("train.sample_index_unreadable", uri=uri, error=str(exc))
        else:
            if stored.fingerprint == want:
                return stored
            log.info("train.sample_index_stale", uri=uri)
    index = build_index(config, encoder)
    storage.write_bytes(uri, json.dumps(index.to_dict(), separators=(",", ":")).encode())
    log.info("train.sample_index_built", uri=uri, units=len(index.units), samples_per_epoch=index.samples_per_epoch)
    return index
