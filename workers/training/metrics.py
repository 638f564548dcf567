"""Throughput and quality numbers: tokens/s, model FLOPs utilisation, eval loss/perplexity/F1.

MFU = achieved model FLOPs / peak FLOPs. Model FLOPs per trained token follow the PaLM paper's
count: 6 x non-embedding parameters + 12 x layers x hidden x sequence (attention scores), so the
figure is comparable across frameworks (recomputation is not counted as useful work). The
lm_head is a matmul whatever its weight: a tied one (the input embedding's matrix, which the
parameter count leaves out as an embedding) counts as vocab x hidden parameters. A frozen weight
(LoRA's base) costs 4 FLOPs per parameter, not 6: its input gradient, no weight gradient.
SFT runs the lm_head only where there is a target (llm_core.models.training), so on this
standard count its MFU includes lm_head work it skips.
"""

from __future__ import annotations

import math
import os

import torch

from llm_core.metrics.classification import accuracy, macro_f1

# Dense bf16/fp16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 125e12, "A10": 125e12, "V100": 125e12, "T4": 65e12,
}


def flops_per_token(non_embedding_params: int, layers: int, hidden: int, seq_len: int,
                    tied_lm_head_params: int = 0, frozen_params: int = 0) -> float:
    """`non_embedding_params` includes `frozen_params` (the part of them that does not train);
    `tied_lm_head_params`: vocab x hidden when the lm_head shares the embedding's weight."""
    dense = non_embedding_params + tied_lm_head_params
    return 6.0 * dense - 2.0 * frozen_params + 12.0 * layers * hidden * seq_len


def model_flops_per_token(module: torch.nn.Module, config, seq_len: int) -> float:
    """flops_per_token of a training module whose decoder has ModelConfig `config`; parameter
    counts from the module (ZeRO-3 partitions report ds_numel), embeddings left out. The tied
    lm_head counts as trainable when the embedding trains (its gradient is the weight's)."""
    non_embedding = frozen = embedding_frozen = 0
    for name, p in module.named_parameters():
        n = getattr(p, "ds_numel", p.numel())
        if "embed_tokens" in name:
            embedding_frozen = 0 if p.requires_grad else n
            continue
        non_embedding += n
        frozen += 0 if p.requires_grad else n
    tied = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    if tied and embedding_frozen:
        frozen += tied
    return flops_per_token(non_embedding, config.num_hidden_layers, config.hidden_size, seq_len,
                           tied_lm_head_params=tied, frozen_params=frozen)


def peak_flops(device: str) -> float | None:
    """Peak of one device; $LLMBATCH_PEAK_FLOPS overrides; None on CPU (no meaningful peak)."""
    if os.environ.get("LLMBATCH_PEAK_FLOPS"):
        return float(os.environ["LLMBATCH_PEAK_FLOPS"])
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, value in GPU_PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def mfu(tokens_per_s: float, flops_tok: float, devices: int, peak: float | None) -> float | None:
    if not peak:
        return None
    return tokens_per_s * flops_tok / (peak * devices)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def classification_scores(references: list[str], predictions: list[str]) -> dict[str, float]:
    return {"accuracy": accuracy(references, predictions), "macro_f1": macro_f1(references, predictions)}
