"""A tiny random Llama in the canonical folder format, so jobs run in seconds on a CPU.

Weights are random (seeded), so outputs are gibberish that almost never hits EOS: every row
costs the same `max_new_tokens` decode steps, which is what scaling benchmarks and chaos tests
want. The tokenizer is the built-in model's when it is already in the model cache (a real
vocabulary, no download), else a small byte-level BPE trained here on a few sentences.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cluster.model_cache import models_dir

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Debian is a free operating system made of packages maintained by volunteers.",
    "Summarize the following text in one sentence.",
    "Translate the following text into French, German or Spanish.",
    "Classify this review as positive, negative or neutral.",
    "A batch job reads Parquet shards, runs a language model and writes results to object storage.",
] * 20


def _builtin_dir() -> Path | None:
    d = models_dir() / "smollm2-135m-instruct"
    return d if (d / "tokenizer.json").is_file() else None


def _train_tokenizer(out: Path, vocab_size: int) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(CHATML)
    (out / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"})
    )


def build_tiny_model(
    out: Path,
    *,
    tokenizer: str = "auto",
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    model_type: str = "llama",
) -> Path:
    """Write a tiny random Llama (or `model_type`: qwen2, mistral) folder at `out` (config.json,
    model.safetensors, tokenizer).

    tokenizer: "auto" = the built-in model's when cached, else a trained BPE; "bpe" = always the
    small trained BPE (512 tokens: faster, and independent of what the cache holds).
    """
    if tokenizer not in ("auto", "bpe", "trained"):
        raise ValueError(f"tokenizer must be 'auto' or 'bpe', not {tokenizer!r}")
    # torch and transformers take seconds to import, and this module is loaded by every test
    # process (it provides the tiny_dir fixture): only a test that builds a model pays that.
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builtin = _builtin_dir() if tokenizer == "auto" else None
    if builtin is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (builtin / name).is_file():
                shutil.copy(builtin / name, out / name)
        if not (out / "chat_template.jinja").exists():
            (out / "chat_template.jinja").write_text(CHATML)
    else:
        _train_tokenizer(out, vocab_size=512)
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,  # tied random weights just echo the last token
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update(model_type=model_type, architectures=[type(model).__name__], dtype="float32")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the small trained BPE tokenizer, built once per test module."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer="bpe")
