"""The CPU decode-attention kernel (csrc/decode_attention.cpp), built on first use.

Built with torch's C++ extension builder (needs a C++ compiler, as torch.compile does) into
torch's extension cache, once per machine kind: the build is named after a hash of the source
and of the CPU's flags, since it is compiled for this CPU's vector instructions (-march=native)
and a cache shared across different nodes must not hand one node another's build. If the build
fails, or LLMBATCH_DECODE_KERNEL=off, decode attention runs SDPA as before (attention.py), with
a warning: a job never fails for want of a faster path.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import structlog
import torch

log = structlog.get_logger()

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
_lock = threading.Lock()
_state: dict[str, bool] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _build_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + _cpu_flags().encode() + torch.__version__.encode()).hexdigest()
    return f"llmbatch_decode_attention_{digest[:16]}"


def decode_kernel_available() -> bool:
    """Whether torch.ops.llmbatch.decode_attention is loaded (building it the first time)."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _load()
    return _state["ok"]


def _load() -> bool:
    if os.environ.get("LLMBATCH_DECODE_KERNEL", "on") == "off":
        return False
    if hasattr(torch.ops, "llmbatch") and hasattr(torch.ops.llmbatch, "decode_attention"):
        return True
    try:
        from torch.utils.cpp_extension import load

        load(name=_build_name(), sources=[str(SOURCE)], is_python_module=False, verbose=False,
             extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only"],
             extra_ldflags=["-fopenmp"])
        return True
    except Exception as exc:  # noqa: BLE001 - no compiler, headers, ...: SDPA still works
        log.warning("decode_kernel.unavailable", error=str(exc)[:500])
        return False
