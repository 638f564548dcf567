"""LoRA adapter folders for tests: random nonzero matrices for a model folder, written as training's
`adapter.export: adapter` writes them (llm_core.models.lora_files), naming the model as their base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llm_core.models.config import ModelConfig
from llm_core.models.lora_files import write_adapter_folder
from workers.adapter_base import expected_shapes
from workers.model_identity import model_identity

TARGETS = ("q_proj", "v_proj", "down_proj")


def random_lora(cfg: ModelConfig, rank: int = 4, targets=TARGETS, seed: int = 0, std: float = 0.2) -> dict:
    """PEFT-keyed A and B for every layer and target; B nonzero, so the adapter changes the model."""
    g = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(cfg, rank, list(targets))
    return {name: torch.randn(*shape, generator=g) * std for name, shape in shapes.items()}


def make_adapter(dest: Path, base_dir: Path, *, rank: int = 4, alpha: float = 8.0, targets=TARGETS, seed: int = 0,
                 base_identity: dict | None = "auto", base_config: ModelConfig | None = None, extra: dict | None = None,
                 std: float = 0.2) -> Path:
    """An adapter folder at `dest` trained (in name) on the model folder `base_dir`.

    base_identity: "auto" = the base's workers.model_identity identity (as the training driver
    records it); base_config: the shape recorded (default: the base's own)."""
    cfg = ModelConfig.from_folder(base_dir)
    identity = model_identity(str(base_dir)) if base_identity == "auto" else base_identity
    write_adapter_folder(Path(dest), random_lora(cfg, rank, targets, seed, std), rank, alpha, 0.0, list(targets),
                         str(base_dir), identity, base_config or cfg, extra)
    return Path(dest)


def merged_copy(base, adapter, dest):
    """The base folder with W += alpha / r * B @ A folded into its HF weights, by hand from the PEFT
    keys (independent of llm_core's merge into the fused native layout)."""
    shutil.copytree(base, dest)
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(base / "model.safetensors"))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for key, a in lora.items():
        if ".lora_A." in key:
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            weights[f"{module}.weight"] = weights[f"{module}.weight"] + scale * (b @ a)
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest
