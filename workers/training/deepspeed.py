"""The DeepSpeed config of a training configuration, and its check by DeepSpeed's own parser.

The manifest's typed fields build the config; `deepspeed.override` is deep-merged last, so a
user can reach any DeepSpeed option we do not model. The same function serves the manifest
check (on the submitting machine) and the workers, so both see one config.

Precision: `precision` names DeepSpeed's own (its bf16/fp16 sections, or fp32). CPU bf16
autocast (llm_core.device.training_precision) leaves DeepSpeed at fp32 and runs the forward under
torch.autocast in workers.training.eval.forward_loss, not through DeepSpeed's `torch_autocast`
section. That section works on CPU with ZeRO 0-3 (DeepSpeed 0.19.8), but it marks every
nn.Linear weight to have its gradient reduced in bf16 (`comm_dtype`): ZeRO 1-3 would then sum
gradients in bf16 and train differently from ZeRO 0 (measured: a different loss by the third
step of the same run), and its per-dtype gradient buckets are a ZeRO state layout that our
checkpoints and universal rescale were never tested with.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from workers.training.config import DeepSpeedSpec, TrainingSpec


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def deepspeed_config(ds: DeepSpeedSpec, tr: TrainingSpec, precision: str) -> dict[str, Any]:
    """Full DeepSpeed config dict. `precision`: the one decided for the device (bf16/fp16/fp32)."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer}
    if ds.offload_params != "none":
        zero["offload_param"] = {"device": ds.offload_params}
    if ds.zero_stage == 3:
        # Export gathers parameters itself; keep saves of ZeRO-3 shards small and complete.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config = {
        "train_micro_batch_size_per_gpu": tr.micro_batch,
        "gradient_accumulation_steps": tr.grad_accum,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        # We pass a torch AdamW (the same on CPU and GPU, no op build); DeepSpeed's CPU Adam is
        # only required for optimizer offload, where it is much faster.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": ds.offload_optimizer != "none",
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, ds.override)


def check_deepspeed_config(config: dict, world_size: int) -> list[tuple[tuple, str]]:
    """Problems DeepSpeed's own parser finds in `config`, as (location, message) pairs.

    DeepSpeedConfig reads the world size from torch.distributed (1 when there is none), so the
    batch-size identity is checked here against the manifest's worker count instead.
    """
    # Lazy: deepspeed takes seconds to import, and only a manifest with an override needs it.
    from deepspeed.runtime.config import DeepSpeedConfig

    problems: list[tuple[tuple, str]] = []
    probe = copy.deepcopy(config)
    train_batch = probe.pop("train_batch_size", None)
    micro = probe.get("train_micro_batch_size_per_gpu")
    accum = probe.get("gradient_accumulation_steps")
    if train_batch is not None and micro and accum and train_batch != micro * accum * world_size:
        problems.append(((
            "train_batch_size",),
            f"must equal micro_batch * grad_accum * workers = {micro * accum * world_size}",
        ))
    try:
        DeepSpeedConfig(probe)
    except ValidationError as exc:  # DeepSpeed's sub-configs are pydantic models
        section = _section_of(exc, probe)
        for err in exc.errors():
            problems.append(((*section, *[str(x) for x in err["loc"]]), err["msg"]))
    except Exception as exc:  # noqa: BLE001 - AssertionError, ValueError, DeepSpeedConfigError, KeyError ...
        problems.append(((), f"DeepSpeed refused the config: {type(exc).__name__}: {exc}"))
    return problems


def _section_of(exc, config: dict) -> tuple:
    """Which top-level block a DeepSpeed sub-config error came from (its model's title)."""
    titles = {
        "DeepSpeedZeroConfig": "zero_optimization",
        "DeepSpeedBF16Config": "bf16",
        "DeepSpeedFP16Config": "fp16",
        "DeepSpeedActivationCheckpointingConfig": "activation_checkpointing",
        "DeepSpeedFlopsProfilerConfig": "flops_profiler",
        "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
        "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param",
    }
    name = titles.get(getattr(exc, "title", ""), "")
    return tuple(name.split(".")) if name else ()
