"""What benchmarks/engine.py runs: the models (the built-in one, or random-weight folders of real
shapes) and the prompts (Debian summarize chats, or random token ids), and each engine's untimed
warm-up at the timed lengths."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

PROMPT = "Summarize the following Debian package description in one sentence:\n\n{text}"

# Shapes of Qwen2.5-0.5B and Llama-3.2-1B, with random weights (no downloads needed).
RANDOM_CONFIGS = {
    "0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        rope_theta=1e6, max_position_embeddings=32768, rms_norm_eps=1e-6,
    ),
    "1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192, rope_theta=500000.0),
        rope_theta=500000.0,
    ),
}


def builtin_model_dir() -> Path:
    """The built-in model's canonical folder, fetched and converted once into the model cache."""
    from workers.model_resolver import resolve_model

    return resolve_model("builtin:smollm2-135m-instruct")


def random_model_dir(name: str) -> Path:
    """A random-weight HF folder of the given shape, cached in the temp dir between runs."""
    folder = Path(tempfile.gettempdir()) / f"llmbatch-bench-{name}"
    if (folder / "config.json").exists():
        return folder
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, eos_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    # Random models still need a tokenizer.json to decode completions: one word per id.
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    Tokenizer(WordLevel(vocab, unk_token="t0")).save(str(folder / "tokenizer.json"))
    return folder


def debian_prompts(model_dir: Path, data: Path, count: int) -> list[list[int]]:
    import pyarrow.parquet as pq

    from llm_core.tokenizer import ModelTokenizer

    tok = ModelTokenizer(model_dir)
    texts = pq.read_table(data, columns=["text"]).column("text").to_pylist()[:count]
    chats = [tok.apply_chat_template([{"role": "user", "content": PROMPT.format(text=t)}]) for t in texts]
    return tok.encode_batch(chats)


def random_prompts(vocab_size: int, count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, 513, (count,), generator=gen).tolist()
    return [torch.randint(1, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def warmup_prompts(engine_name: str, prompts: list[list[int]], on_gpu: bool, batch_size: int) -> list[list[int]]:
    """What each engine runs untimed first, with the timed max_new_tokens. The native engine
    sizes its KV cache from the longest prompt + max_new_tokens and, on a GPU, captures one
    CUDA graph per (batch, attention length) bucket it meets: there it runs every prompt once,
    on CPU (no graphs) the longest prompt suffices. transformers allocates per batch: its
    largest batch (the longest prompts) warms its allocator."""
    by_length = sorted(prompts, key=len, reverse=True)
    if engine_name == "native":
        return list(prompts) if on_gpu else by_length[:1]
    return by_length[:batch_size]
