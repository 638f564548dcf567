"""A job's checkpoint written by 2 workers, resumed on 1, trains on exactly the samples, step by
step, that the 2-worker run took after it: the global sample order does not depend on the
worker count.

With the same samples per optimizer step (2 workers x 1 micro-batch = 1 worker x grad_accum 2:
global micro-batches 2j and 2j+1 either way) and fp32, both take the same steps, so their
exported weights agree to float rounding. A resume that skipped or repeated a sample, or dealt
the samples to steps differently, would move the weights by about lr per step. And the same
checkpoints are refused to a job that would train on other data.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from jobs.manifest import parse_manifest
from jobs.run.training import run_training
from tests.integration.test_training import DATA, tiny
from workers.training import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_checkpoint_of_2_workers_resumed_on_1_trains_what_2_would_have(ray_local, tmp_path):
    def manifest(name: str, workers: int, grad_accum: int) -> dict:
        d = tiny(tmp_path / name, deepspeed={"zero_stage": 0, "precision": "fp32"}, resources={"workers": workers},
                 training={"max_steps": 6, "micro_batch": 4, "grad_accum": grad_accum, "log_every": 3,
                           "eval_every": None},
                 optimizer={"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
                 checkpoint={"every_steps": 3, "keep": 2}, max_failures=0)
        d["data"]["eval_fraction"] = 0.0
        return d

    whole = run_training(parse_manifest(manifest("whole", 2, 1)), job_id="t-order-whole")
    assert whole.status == "succeeded", whole.error
    # The step-3 checkpoint (and the job's BPE tokenizer beside it), as a stopped job would leave it.
    shutil.copytree(tmp_path / "whole" / "ckpt", tmp_path / "resumed" / "ckpt",
                    ignore=shutil.ignore_patterns("step-6"))
    uri = str(tmp_path / "resumed" / "ckpt")
    assert ckpt.latest_complete(uri) == 3 and ckpt.read_meta(uri, 3)["samples"] == 3 * 4 * 2

    resumed = run_training(parse_manifest(manifest("resumed", 1, 2)), job_id="t-order-resumed")
    assert resumed.status == "succeeded", resumed.error
    assert resumed.summary["resumed_from"] == [3]
    assert ckpt.read_meta(uri, 6)["samples"] == 6 * 4 * 2

    want = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    # The runs trained (RMSNorm weights start at 1): equal untrained weights would prove nothing.
    assert (want["model.norm.weight"] - 1).abs().max() > 1e-2
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=0, atol=2e-4, msg=name)

    # The same checkpoints with other training data: refused on the driver, naming what changed.
    other = manifest("resumed", 1, 2)
    other["data"]["train"] = str(DATA / "debian-classify-sample.parquet")
    other["output"]["uri"] = str(tmp_path / "other-model")
    refused = run_training(parse_manifest(other), job_id="t-order-other")
    assert refused.status == "failed" and "ResumeRefused" in refused.error, refused.error
    assert "data.train:" in refused.error and "debian-classify-sample" in refused.error
    assert ckpt.latest_complete(uri) == 6  # nothing trained
