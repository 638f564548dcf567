"""Where a LoRA adapter's matrices go in the native decoder, and how they fold into its weights.

The native decoder fuses q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj`; an
adapter is stored per HF module (q_proj, k_proj, ..., the names PEFT and every HF checkpoint
use), so each HF target is a row slice of one native weight. Training (llm_core.models.lora),
the adapter folder (llm_core.models.lora_files) and a merged export all go through here.
"""

from __future__ import annotations

import torch

from llm_core.models.config import ModelConfig

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def target_slice(cfg: ModelConfig, target: str) -> tuple[str, slice]:
    """(native module name inside a decoder layer, rows of its weight) for an HF target name."""
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, \
        cfg.intermediate_size
    rows = {
        "q_proj": ("self_attn.qkv_proj", slice(0, q)),
        "k_proj": ("self_attn.qkv_proj", slice(q, q + kv)),
        "v_proj": ("self_attn.qkv_proj", slice(q + kv, q + 2 * kv)),
        "o_proj": ("self_attn.o_proj", slice(0, cfg.hidden_size)),
        "gate_proj": ("mlp.gate_up_proj", slice(0, inter)),
        "up_proj": ("mlp.gate_up_proj", slice(inter, 2 * inter)),
        "down_proj": ("mlp.down_proj", slice(0, cfg.hidden_size)),
    }
    if target not in rows:
        raise ValueError(f"unknown LoRA target {target!r}; targets: {', '.join(LORA_TARGETS)}")
    return rows[target]


def hf_module(layer: int, target: str) -> str:
    """The HF module path of a target (what PEFT keys and adapter_config target_modules name)."""
    group = "self_attn" if target in ATTENTION_TARGETS else "mlp"
    return f"model.layers.{layer}.{group}.{target}"


def peft_key(layer: int, target: str, which: str) -> str:
    """The tensor name PEFT saves for one LoRA matrix: which is "A" ([rank, in]) or "B" ([out, rank])."""
    return f"base_model.model.{hf_module(layer, target)}.lora_{which}.weight"


@torch.no_grad()
def merge_adapter_weights(model, weights: dict[str, torch.Tensor], scale: float) -> int:
    """Fold W += scale * B @ A into the native decoder `model` (a LlamaForCausalLM) for every
    (layer, target) pair present in `weights` (PEFT keys). Returns how many pairs were merged.
    The product is taken in fp32 and cast to the weight's dtype once."""
    cfg, merged = model.config, 0
    for layer_index, layer in enumerate(model.layers):
        for target in LORA_TARGETS:
            a, b = weights.get(peft_key(layer_index, target, "A")), weights.get(peft_key(layer_index, target, "B"))
            if a is None and b is None:
                continue
            if a is None or b is None:
                raise ValueError(f"adapter has only one of lora_A / lora_B for {hf_module(layer_index, target)}")
            module_name, rows = target_slice(cfg, target)
            weight = layer.get_submodule(module_name).weight
            delta = scale * (b.float().to(weight.device) @ a.float().to(weight.device))
            if delta.shape != weight[rows].shape:
                raise ValueError(f"adapter {hf_module(layer_index, target)}: B @ A is {tuple(delta.shape)}, "
                                 f"the model's weight is {tuple(weight[rows].shape)}")
            weight[rows] += delta.to(weight.dtype)
            merged += 1
    return merged
