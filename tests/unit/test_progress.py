"""Whole-job progress: row totals, pace and ETA, and the shard latency histogram, as they cross
the API (to_dict / from_dict)."""

from __future__ import annotations

import json

from jobs.run.results import JobProgress, empty_buckets


def test_row_fields_round_trip_through_the_api_shape():
    p = JobProgress(shards_total=4, shards_done=1, shards_skipped=1, rows_total=1000, rows=600,
                    error_rows=7, completion_tokens=900, rows_per_s=50.0, eta_s=8.0, elapsed_s=9.0,
                    phase="running")
    data = json.loads(json.dumps(p.to_dict()))
    assert data["rows_total"] == 1000 and data["rows"] == data["rows_done"] == 600
    assert data["eta_s"] == 8.0 and data["rows_per_s"] == 50.0 and data["tokens_per_s"] == 100.0
    assert JobProgress.from_dict(data) == p


def test_rows_done_is_the_rows_field():
    p = JobProgress()
    p.rows_done = 12  # what a publisher may set by either name
    assert p.rows == 12 and p.to_dict()["rows_done"] == 12
    assert JobProgress.from_dict({"rows_done": 5}).rows == 5


def test_eta_is_unknown_until_a_pace_is():
    data = JobProgress(rows_total=10).to_dict()
    assert data["eta_s"] is None and JobProgress.from_dict(data).eta_s is None


def test_shard_latency_histogram_is_cumulative_per_upper_bound():
    p = JobProgress()
    for seconds in (0.5, 3.0, 45.0, 45.0, 7200.0):
        p.observe_shard(seconds)
    assert p.shard_seconds_count == 5 and p.shard_seconds_sum == 7293.5
    b = p.shard_seconds_buckets
    assert list(b) == list(empty_buckets())  # every bound present, in order, "+Inf" last
    assert (b["1.0"], b["2.5"], b["5.0"], b["30.0"], b["60.0"], b["3600.0"], b["+Inf"]) == (1, 1, 2, 2, 4, 4, 5)
    values = list(b.values())
    assert values == sorted(values)
    again = JobProgress.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again.shard_seconds_buckets == b and again.shard_seconds_count == 5


def test_training_progress_keeps_its_values_beside_the_row_fields():
    p = JobProgress(phase="running")
    p.record({"event": "step", "step": 2, "total_steps": 10, "loss": 3.5, "tokens_per_s": 800.0})
    data = p.to_dict()
    assert data["loss"] == 3.5 and data["tokens_per_s"] == 800.0
    assert JobProgress.from_dict(data) == p
