"""Which device and dtype a model runs on: one decision for both engines, the classifier and training.

`auto` means the GPU when there is one; there bf16, or fp16 on a GPU without bf16; on CPU fp32,
where bf16 matmuls are usually slower without AMX. An explicit choice always wins, and a device
string keeps its index ("cuda:1" stays "cuda:1" and gets a GPU's dtype like "cuda").
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}

# DeepSpeed's names for the three precisions.
PRECISION_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(device: str, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """The dtype for `device` (already picked: not "auto"); `dtype` is a name from DTYPES or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return DTYPES[dtype]
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(device: str, precision: str = "auto") -> str:
    """`pick_dtype` under DeepSpeed's names ("bf16", "fp16", "fp32"), for the training config."""
    return precision if precision != "auto" else PRECISION_NAMES[pick_dtype(device)]
