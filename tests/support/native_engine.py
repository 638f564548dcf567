"""Tiny random HF model folders for the native engine's tests, and transformers' greedy
decoding to compare with (tests/integration/test_native_engine*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_core.engine.native import NativeEngine
from llm_core.engine.sampling import SamplingParams

VOCAB = 256
TINY = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
)


def make_folder(path: Path, model_type: str = "llama", **extra):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the default init: sharper, less tied logits
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(path)
    # One word per id; decoding joins words with spaces: "t5 t17 ...".
    Tokenizer(WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0")).save(str(path / "tokenizer.json"))
    return model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = make_folder(path, "llama", eos_token_id=None)
    return path, hf


@pytest.fixture(scope="module")
def engine(llama):
    return NativeEngine(llama[0], device="cpu", dtype="float32")


def prompts(count: int = 6, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (count,), generator=gen).tolist()
    return [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def hf_greedy(hf, prompt: list[int], params: SamplingParams) -> list[int]:
    kwargs = dict(
        max_new_tokens=params.max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
        repetition_penalty=params.repetition_penalty, no_repeat_ngram_size=params.no_repeat_ngram_size or None,
    )
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
    return out[0, len(prompt):].tolist()


def ids(results) -> list[list[int]]:
    return [[c.token_ids for c in per_prompt] for per_prompt in results]
