"""Device and dtype choice (llm_core.device), shared by both engines, the classifier and training."""

from __future__ import annotations

import pytest
import torch

from llm_core import device


@pytest.fixture
def gpu(monkeypatch):
    """A machine whose GPU has bf16 unless the test says otherwise (no GPU needed to test the rule)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    return monkeypatch


def test_auto_device_is_the_gpu_when_there_is_one(gpu):
    assert device.pick_device() == "cuda"
    gpu.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device("auto") == "cpu"


def test_an_explicit_device_keeps_its_index(gpu):
    assert device.pick_device("cuda:1") == "cuda:1"
    assert device.pick_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_every_gpu_spelling_gets_bf16_where_supported_else_fp16(gpu, name):
    assert device.pick_dtype(name) == torch.bfloat16
    assert device.precision_name(name) == "bf16"
    gpu.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert device.pick_dtype(name) == torch.float16
    assert device.precision_name(name) == "fp16"


def test_cpu_gets_fp32(gpu):
    assert device.pick_dtype("cpu") == torch.float32
    assert device.precision_name("cpu") == "fp32"


def test_an_explicit_dtype_wins(gpu):
    assert device.pick_dtype("cpu", "bf16") == torch.bfloat16
    assert device.pick_dtype("cuda:0", "float32") == torch.float32
    assert device.pick_dtype("cuda", torch.float16) == torch.float16
    assert device.precision_name("cuda", "fp32") == "fp32"
    with pytest.raises(KeyError):
        device.pick_dtype("cpu", "int8")
