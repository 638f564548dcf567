"""Throughput and quality numbers: tokens/s, model FLOPs utilisation, eval loss/perplexity/F1.

MFU = achieved model FLOPs / peak FLOPs. Model FLOPs per trained token follow the PaLM paper's
count: 6 x non-embedding parameters + 12 x layers x hidden x sequence (attention scores), so the
figure is comparable across frameworks (recomputation is not counted as useful work).
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


def flops_per_token(non_embedding_params: int, layers: int, hidden: int, seq_len: int) -> float:
    return 6.0 * non_embedding_params + 12.0 * layers * hidden * seq_len


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
