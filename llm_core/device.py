"""Which device and dtype a model runs on: one decision for both engines, the classifier and training.

`auto` means the GPU when there is one; there bf16, or fp16 on a GPU without bf16. On CPU `auto`
is fp32 here (greedy outputs token-exact with transformers). bf16 is faster than fp32 only where
the CPU multiplies bf16 faster than fp32 (`cpu_bf16_fast()`: AMX, or AVX-512 BF16 on AMD), and not
merely where it has bf16 instructions (`cpu_bf16_native()`); `pick_dtype` logs both. A job's `auto`
never reaches this: the driver decides it for the whole run (jobs/run/precision.py: bf16 where every
node has it fast, recorded in the fingerprint), so one output never mixes precisions. An explicit choice always wins, and a device string keeps its index ("cuda:1"
stays "cuda:1" and gets a GPU's dtype like "cuda").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch

log = structlog.get_logger()

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}

# DeepSpeed's names for the three precisions.
PRECISION_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# CPU flags (/proc/cpuinfo) with bf16 dot products in hardware; without them torch emulates bf16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# Whether this module's `auto` picks bf16 on a CPU with native bf16. Off: a library caller's fp32
# stays token-exact with transformers; jobs decide on the driver instead (jobs/run/precision.py).
CPU_AUTO_BF16 = False


@functools.cache
def _cpuinfo_fields(cpuinfo: str) -> dict[str, str] | None:
    """The first processor's `key: value` lines of /proc/cpuinfo; None where there is no such file."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """This CPU's feature flags (/proc/cpuinfo's `flags` line); None where there is no such file."""
    fields = _cpuinfo_fields(cpuinfo)
    return None if fields is None else frozenset(fields.get("flags", "").split())


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """/proc/cpuinfo's `vendor_id` (GenuineIntel, AuthenticAMD, ...); None where there is none."""
    return (_cpuinfo_fields(cpuinfo) or {}).get("vendor_id")


def bf16_fast(flags: frozenset[str], vendor: str | None) -> bool:
    """Whether a CPU with these flags multiplies bf16 faster than fp32: AMX-BF16 tiles, or AVX-512
    BF16 on AMD (Zen 4 and later: the engine ran 2.2x fp32). Intel's AVX-512 BF16 without AMX
    (Cooper Lake, or a VM that hides AMX) dot-products bf16 pairs at the rate of fp32's FMAs, so bf16
    only adds conversions there: the engine ran 0.75x fp32 (benchmarks/RESULTS.md, seventh session).
    cluster/ray_code.py's node probe repeats this rule (it cannot import llmbatch)."""
    return "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")


@functools.cache
def cpu_bf16_fast(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where bf16 matmuls beat fp32's on this CPU (`bf16_fast`): what CPU `auto` runs bf16 on."""
    flags = cpu_flags(cpuinfo)
    if flags is None:  # not Linux: ask torch what it dispatches to
        return torch.backends.cpu.get_cpu_capability() == "AMX"
    return bf16_fast(flags, cpu_vendor(cpuinfo))


@functools.cache
def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512 BF16 or AMX-BF16)."""
    flags = cpu_flags(cpuinfo)
    if flags is None:  # not Linux: ask torch what it dispatches to
        return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(device: str, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """The dtype for `device` (already picked: not "auto"); `dtype` is a name from DTYPES or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if torch.device(device).type != "cuda":
        return _cpu_dtype(dtype)
    if dtype != "auto":
        return DTYPES[dtype]
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _cpu_dtype(dtype: str) -> torch.dtype:
    native, fast = cpu_bf16_native(), cpu_bf16_fast()
    if dtype != "auto":
        chosen = DTYPES[dtype]
        if chosen != torch.float32 and not native:
            log.warning("device.cpu_dtype_emulated", dtype=dtype,
                        reason="this CPU has no native bf16/fp16 (avx512_bf16, amx_bf16): expect it slower than fp32")
        elif chosen == torch.bfloat16 and not fast:
            log.warning("device.cpu_bf16_slow", dtype=dtype,
                        reason="AVX-512 BF16 without AMX on an Intel CPU: bf16 matmuls are no faster than fp32 "
                               "here, expect bf16 slower (use it to halve memory, not for speed)")
        return chosen
    chosen = torch.bfloat16 if fast and CPU_AUTO_BF16 else torch.float32
    log.info("device.cpu_dtype", dtype=str(chosen).removeprefix("torch."), cpu_bf16_native=native,
             cpu_bf16_fast=fast,
             hint="bf16 is fast here: set params.dtype: bfloat16 to use it" if fast and not CPU_AUTO_BF16
             else None)
    return chosen


def precision_name(device: str, precision: str = "auto") -> str:
    """`pick_dtype` under DeepSpeed's names ("bf16", "fp16", "fp32"), for the training config."""
    return precision if precision != "auto" else PRECISION_NAMES[pick_dtype(device)]


@dataclass(frozen=True)
class TrainingPrecision:
    """How training computes: `deepspeed` is the weights' precision as DeepSpeed's bf16/fp16
    sections take it; `autocast`, when set, the dtype the forward (loss included) runs its
    matmuls in under torch.autocast, over those fp32 weights and an fp32 optimizer."""

    deepspeed: str
    autocast: torch.dtype | None = None

    @property
    def name(self) -> str:
        return f"{PRECISION_NAMES[self.autocast]}-autocast" if self.autocast is not None else self.deepspeed


def training_precision(device: str, precision: str = "auto") -> TrainingPrecision:
    """The training precision for `device` (already picked) and the manifest's `precision`.

    GPU `auto`: DeepSpeed bf16 (fp16 without bf16). CPU `auto`: bf16 autocast where the CPU
    multiplies bf16 faster than fp32 (`cpu_bf16_fast`), fp32 elsewhere. Unlike inference, training
    needs no token-exact outputs, and autocast keeps fp32 master weights and optimizer state,
    RMSNorm and the loss's softmax in fp32. An explicit choice is DeepSpeed's, as given.
    """
    if precision != "auto" or torch.device(device).type == "cuda":
        return TrainingPrecision(precision_name(device, precision))
    fast = cpu_bf16_fast()
    chosen = TrainingPrecision("fp32", torch.bfloat16 if fast else None)
    log.info("device.training_precision", precision=chosen.name, cpu_bf16_fast=fast)
    return chosen
