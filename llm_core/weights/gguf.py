"""GGUF file -> canonical model folder (model.safetensors, config.json, tokenizer.json, chat template).

transformers does the GGUF reading and dequantization (it also undoes llama.cpp's rotary
permutation of the q/k weights); we write the result as a plain safetensors folder so that
loading never needs GGUF support again.
"""

from __future__ import annotations

import json
from pathlib import Path

CANONICAL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def convert_gguf(gguf_path: Path, out_dir: Path, source: str = "") -> Path:
    # torch and transformers take seconds to import and only a first-time conversion needs
    # them; the CLI imports llm_core.weights just for the built-in model names.
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    # The GGUF is the only weights source read here; no Python from the folder ever runs.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 trust_remote_code=False)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "float32"
    config["llmbatch_source"] = source or str(gguf_path)

    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # the same tensor as embed_tokens: stored once
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save_pretrained(str(out_dir))
    template = getattr(tokenizer, "chat_template", None)
    if template and not (out_dir / "chat_template.jinja").exists():
        (out_dir / "chat_template.jinja").write_text(template)
    missing = [f for f in CANONICAL_FILES if not (out_dir / f).exists()]
    if missing:
        raise RuntimeError(f"conversion of {gguf_path} did not produce {missing}")
    return out_dir
