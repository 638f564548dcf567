"""Optimizer and learning-rate schedule: AdamW with linear warmup, then cosine/linear decay.

The scheduler is handed to DeepSpeed, which saves and restores it with each checkpoint.
"""

from __future__ import annotations

import math

import torch

from workers.training.config import OptimizerSpec


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The parameters that train (frozen ones, e.g. a LoRA base, are left out), in two groups:
    no weight decay on biases, norms and embeddings (1-D or embedding weights), as usual. An
    empty group is dropped (LoRA matrices are all 2-D): ZeRO flattens each group into a buffer."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no parameter to train (every one is frozen)")
    return groups


def build_optimizer(module: torch.nn.Module, spec: OptimizerSpec, offload: bool):
    groups = param_groups(module, spec.weight_decay)
    betas = tuple(spec.betas)
    if offload:  # ZeRO-Offload runs the step on CPU: DeepSpeed's vectorized CPU Adam
        # Lazy: deepspeed takes seconds to import; only an offloading worker needs this class.
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=spec.lr, betas=betas, eps=spec.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=betas, eps=spec.eps)


def lr_factor(step: int, total: int, spec: OptimizerSpec) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total`."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    span = max(1, total - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    floor = spec.min_lr_ratio
    if spec.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, total_steps: int, spec: OptimizerSpec):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, spec))
