"""The global sample order (workers.training.data) and the sample index, without Ray: the stream
is one function of (data, seed, epoch) whatever the worker count, a resume on any worker count
continues at exactly the next sample, and a resume reads only the units from there on."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifest import parse_manifest
from workers.training import units as data_mod
from workers.training.data import train_batches
from workers.training.units import StaleIndexError, global_rows, list_units, train_keep
from workers.training.encode import Encoder
from workers.training.sample_index import INDEX_FILE, build_index, ensure_sample_index


class CharTokenizer:
    """One token per character: enough for samples whose lengths differ row by row."""

    eos_token_id, pad_token_id, chat_template = 1, 0, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 200) for c in text]}

    def decode(self, ids):
        return "".join(chr(i - 2) for i in ids)


def write_data(folder: Path, rows_per_file=(40, 33), group=10, empty_every=17) -> str:
    """Parquet files of rows with distinct ids and texts of varied length; some rows empty."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for f, count in enumerate(rows_per_file):
        ids = list(range(n, n + count))
        texts = ["" if empty_every and i % empty_every == 5 else
                 f"row{i}:" + "".join(chr(97 + (i * 31 + j * 7) % 26) for j in range(i * 7 % 23)) for i in ids]
        pq.write_table(pa.table({"id": [f"r{i}" for i in ids], "text": texts}),
                       folder / f"part-{f}.parquet", row_group_size=group)
        n += count
    return str(folder)


def config(train: str, tmp: Path, packing: bool, mb: int = 3, eval_fraction: float = 0.1, seq_len: int = 16):
    m = parse_manifest({
        "version": 1, "kind": "training", "name": "t", "task": "pretrain",
        "model": {"vocab": "builtin:smollm2-135m-instruct", "hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "data": {"train": train, "seq_len": seq_len, "packing": packing, "eval_fraction": eval_fraction},
        "training": {"max_steps": 10, "micro_batch": mb, "seed": 7},
        "checkpoint": {"uri": str(tmp / "ckpt")}, "output": {"uri": str(tmp / "model")},
    })
    return m.training_config()


def rows_of(batch) -> list[tuple[int, ...]]:
    """A batch's samples as token tuples (padding stripped): what identifies a sample."""
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def run(cfg, enc, world: int, start: int, micro_batches: int, index) -> list[tuple[int, ...]]:
    """`world` ranks in lockstep, each taking `micro_batches`; the samples in global order."""
    streams = [train_batches(cfg, enc, r, world, start=start, index=index) for r in range(world)]
    out = []
    for _ in range(micro_batches):
        for s in streams:  # global micro-batch j is rank j % world's
            out += rows_of(next(s))
    return out


@pytest.fixture(params=[False, True], ids=["documents", "packed"])
def job(request, tmp_path):
    cfg = config(write_data(tmp_path / "data"), tmp_path, packing=request.param)
    enc = Encoder(cfg, CharTokenizer(), None)
    return cfg, enc, build_index(cfg, enc)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_stream_does_not_depend_on_the_worker_count(job, world):
    cfg, enc, index = job
    one = run(cfg, enc, 1, 0, 60, index)  # past the end of epoch 0 into epoch 1
    assert run(cfg, enc, world, 0, 60 // world, index) == one[: len(one) // world * world]


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (3, 2), (2, 3)])
def test_resume_on_another_worker_count_continues_at_the_next_sample(job, before, after):
    """Train k micro-batches a rank on `before` workers, resume on `after`: together they trained
    on exactly the first N samples of an uninterrupted 1-worker run, none twice, none skipped."""
    cfg, enc, index = job
    k, mb = 3, cfg.training.micro_batch
    first = run(cfg, enc, before, 0, k, index)
    start = k * mb * before  # what the checkpoint records
    second = run(cfg, enc, after, start, 4, index)
    whole = first + second
    assert whole == run(cfg, enc, 1, 0, len(whole) // mb, index)
    assert len(whole) <= index.samples_per_epoch  # within one epoch: no sample may come twice
    assert len(set(whole)) == len(whole)


def test_sft_rows_the_encoder_drops_are_skipped(tmp_path):
    (tmp_path / "sft").mkdir()
    prompts = [("p" * (i % 20)) or None for i in range(60)]  # no prompt: no sample
    pq.write_table(pa.table({"id": [str(i) for i in range(60)], "prompt": prompts,
                             "response": [f"r{i}" for i in range(60)]}), tmp_path / "sft" / "a.parquet",
                   row_group_size=8)
    m = parse_manifest({
        "version": 1, "kind": "training", "name": "t", "task": "pretrain", "objective": "sft",
        "model": {"vocab": "builtin:smollm2-135m-instruct", "hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "data": {"train": str(tmp_path / "sft"), "seq_len": 16}, "training": {"max_steps": 1, "micro_batch": 2},
        "checkpoint": {"uri": str(tmp_path / "ckpt")}, "output": {"uri": str(tmp_path / "model")}})
    cfg = m.training_config()
    enc = Encoder(cfg, CharTokenizer(), None)
    index = build_index(cfg, enc)
    dropped = sum(len(u.skip) for u in index.units)
    rows = pq.read_table(tmp_path / "sft" / "a.parquet").to_pylist()
    assert dropped == len(rows) - len(list(enc.samples(iter(rows)))) > 0
    assert index.samples_per_epoch == 60 - dropped
    one = run(cfg, enc, 1, 0, index.samples_per_epoch // 2, index)
    assert len(set(one)) == len(one) == index.samples_per_epoch // 2 * 2
    assert run(cfg, enc, 3, 4, 3, index) == run(cfg, enc, 1, 4, 9, index)


def test_packed_stream_is_the_encoders_packing_of_the_global_rows(tmp_path):
    """The rank streams cut the same sequences the Encoder packs from the epoch's rows in order."""
    cfg = config(write_data(tmp_path / "data"), tmp_path, packing=True)
    enc = Encoder(cfg, CharTokenizer(), None)
    rows = global_rows(list_units(cfg.data.train), enc.columns, cfg.training.seed, 0, train_keep(cfg.data))
    want = [tuple(s["input_ids"]) for s in enc.samples(rows)]
    got = run(cfg, enc, 2, 0, len(want) // 6, build_index(cfg, enc))
    assert got == want[: len(got)] and len(got) > 20


def test_held_out_rows_never_train(tmp_path):
    cfg = config(write_data(tmp_path / "data"), tmp_path, packing=False)
    enc = Encoder(cfg, CharTokenizer(), None)
    index = build_index(cfg, enc)
    trained = set(run(cfg, enc, 2, 0, index.samples_per_epoch // 6, index))
    rows = [r for u in list_units(cfg.data.train) for r in data_mod.read_unit(u, ["id", "text"])]
    held = {tuple(CharTokenizer()(r["text"])["input_ids"] + [1]) for r in rows
            if r["text"] and data_mod.is_holdout(r, cfg.data)}
    assert held and not held & trained
    assert index.samples_per_epoch == sum(1 for r in rows if r["text"] and not data_mod.is_holdout(r, cfg.data))


def test_a_resume_reads_only_the_units_from_the_next_sample_on(tmp_path, monkeypatch):
    # Units of 10 rows, every row a sample, micro-batches of 10: a unit is one micro-batch.
    train = write_data(tmp_path / "data", rows_per_file=(40, 40), group=10, empty_every=0)
    cfg = config(train, tmp_path, packing=False, mb=10, eval_fraction=0.0)
    enc = Encoder(cfg, CharTokenizer(), None)
    index = build_index(cfg, enc)
    assert [u.samples for u in index.units] == [10] * 8
    units = list_units(cfg.data.train)
    reads: list = []
    real = data_mod.read_unit
    monkeypatch.setattr(data_mod, "read_unit", lambda unit, columns: reads.append(unit) or real(unit, columns))
    order = [units[u] for u in data_mod.epoch_order(8, cfg.training.seed, 0)]

    next(train_batches(cfg, enc, 0, 1, start=55, index=index))  # sample 55: 6th unit of the epoch
    assert reads == [order[5], order[6]]  # its unit, and the next for the rest of the batch
    reads.clear()
    stream = train_batches(cfg, enc, 1, 2, start=30, index=index)  # rank 1 of 2: units 4, 6, 8, ...
    next(stream), next(stream)
    assert reads == [order[4], order[6]]


def test_the_index_is_stored_reused_and_rebuilt_when_the_data_changes(tmp_path, monkeypatch):
    train = write_data(tmp_path / "data")
    cfg = config(train, tmp_path, packing=True)
    enc = Encoder(cfg, CharTokenizer(), None)
    built: list = []
    real = data_mod.read_unit
    monkeypatch.setattr(data_mod, "read_unit", lambda unit, columns: built.append(unit) or real(unit, columns))
    first = ensure_sample_index(cfg, enc)
    assert len(built) == 8 and (tmp_path / "ckpt" / INDEX_FILE).exists()
    built.clear()
    assert ensure_sample_index(cfg, enc) == first and built == []  # reused: nothing read
    pq.write_table(pa.table({"id": ["new"], "text": ["y" * 50]}), Path(train) / "part-2.parquet")
    again = ensure_sample_index(cfg, enc)
    assert len(again.units) == 9 and again.tokens_per_epoch == first.tokens_per_epoch + 51
    stored = json.loads((tmp_path / "ckpt" / INDEX_FILE).read_text())
    assert stored["fingerprint"] == again.fingerprint
    longer = config(train, tmp_path, packing=True, seq_len=32)  # encoder settings are in the fingerprint
    assert ensure_sample_index(longer, Encoder(longer, CharTokenizer(), None)).seq_len == 32


def test_data_changed_under_the_index_is_refused(tmp_path):
    train = write_data(tmp_path / "data", empty_every=0)
    cfg = config(train, tmp_path, packing=False, eval_fraction=0.0, mb=10)
    enc = Encoder(cfg, CharTokenizer(), None)
    index = build_index(cfg, enc)
    part = Path(train) / "part-0.parquet"
    rows = pq.read_table(part).to_pylist()
    rows[3]["text"] = ""  # same row groups, but a counted row now yields nothing
    pq.write_table(pa.Table.from_pylist(rows), part, row_group_size=10)
    with pytest.raises(StaleIndexError, match="part-0.parquet row group 0"):
        list(itertools.islice(train_batches(cfg, enc, 0, 1, index=index), 8))
    pq.write_table(pa.table({"id": ["a"], "text": ["b"]}), part)  # other row groups
    with pytest.raises(ValueError, match="differ from the sample index"):
        next(train_batches(cfg, enc, 0, 1, index=index))


def test_a_stored_index_with_counts_out_of_range_is_rebuilt(tmp_path):
    cfg = config(write_data(tmp_path / "data"), tmp_path, packing=False)
    enc = Encoder(cfg, CharTokenizer(), None)
    good = ensure_sample_index(cfg, enc)
    stored = json.loads((tmp_path / "ckpt" / INDEX_FILE).read_text())
    stored["units"][0]["samples"] = -5
    (tmp_path / "ckpt" / INDEX_FILE).write_text(json.dumps(stored))
    assert ensure_sample_index(cfg, enc) == good
