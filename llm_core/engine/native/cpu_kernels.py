"""The native engine's CPU kernels (csrc/*.cpp), built on first use into one library:
prefill and decode attention over the KV cache (cache_attention.cpp), RMSNorm, SiLU-and-multiply
and RoPE (fused_elementwise.cpp),
and the per-row quantize / rescale around W8A8 matmuls, alone or folded into the norms, SiLU-multiply
and residual adds (int8_rows.cpp, w8a8_layers.py), all `torch.ops.llmbatch.*`.

Built with torch's C++ extension builder (needs a C++ compiler, as torch.compile does) into
torch's extension cache, once per machine kind: the build is named after a hash of the sources
and of the CPU's flags, since it is compiled for this CPU's vector instructions (-march=native)
and a cache shared across different nodes must not hand one node another's build. It compiles
copies of the sources kept in the build folder, not the files where this module lies: torch's
build file records source paths, so two checkouts (or Ray's per-session copies of the package)
compiling their own paths would each rebuild the other's build in turn. Processes
build and load under build_lock.py's lock, which a builder killed mid-build does not leave held
(torch's own lock file would stall every later actor forever). If the build fails, waits past
BUILD_WAIT_S, or LLMBATCH_CPU_KERNELS=off, the engine runs torch's ops as before (SDPA
attention, eager norms, eager activation quantization), with a warning when the build failed: a
job never fails for want of a faster path.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import structlog
import torch

from llm_core.device import cpu_flags
from llm_core.engine.native.build_lock import build_lock

log = structlog.get_logger()

SOURCES = tuple(sorted((Path(__file__).parent / "csrc").glob("*.cpp")))
HEADERS = tuple(sorted((Path(__file__).parent / "csrc").glob("*.h")))  # in the build name's hash, not compiled alone
BUILD_WAIT_S = 600.0  # a build takes 10-60 s; past this another process's build is taken as stuck
_lock = threading.Lock()
_state: dict[str, bool] = {}


def _build_name() -> str:
    text = b"".join(source.read_bytes() for source in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(text + " ".join(sorted(cpu_flags() or ())).encode() + torch.__version__.encode()).hexdigest()
    return f"llmbatch_cpu_kernels_{digest[:16]}"


def _build_dir(name: str) -> Path:
    """Where the build lives: torch's extension cache (TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions),
    a folder per Python version (the library links against its headers)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return root / f"llmbatch_py{sys.version_info.major}{sys.version_info.minor}" / name


def _source_copies(folder: Path) -> list[Path]:
    """The sources and headers copied into `folder` (the build's own; the build name hashes
    their contents, so a copy already there is this content), for a build whose recorded paths
    are the same from any checkout. Called under the build lock."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (*SOURCES, *HEADERS):
        copy = folder / source.name
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            partial = copy.with_name(copy.name + ".partial")
            partial.write_bytes(source.read_bytes())
            partial.replace(copy)  # whole or absent, whatever kills this process
    return [folder / source.name for source in SOURCES]


def cpu_kernels_available() -> bool:
    """Whether the torch.ops.llmbatch CPU kernels are loaded (building them the first time)."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _load()
    return _state["ok"]


def _load() -> bool:
    if os.environ.get("LLMBATCH_CPU_KERNELS", "on") == "off":
        return False
    if hasattr(torch.ops, "llmbatch") and hasattr(torch.ops.llmbatch, "cache_attention"):
        return True
    try:
        from torch.utils.cpp_extension import load

        start = time.perf_counter()
        name = _build_name()
        log.info("cpu_kernels.loading", build=name, detail="compiled on a machine's first use, then cached")
        build_dir = _build_dir(name)
        with build_lock(build_dir, BUILD_WAIT_S):
            sources = _source_copies(build_dir / "src")
            load(name=name, sources=[str(s) for s in sources], is_python_module=False, verbose=False,
                 build_directory=str(build_dir),
                 extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only"],
                 extra_ldflags=["-fopenmp"])
        _register_shapes()
        log.info("cpu_kernels.ready", build=name, seconds=round(time.perf_counter() - start, 1))
        return True
    except Exception as exc:  # noqa: BLE001 - no compiler, headers, a stuck build...: SDPA still works
        log.warning("cpu_kernels.unavailable", error=str(exc)[:500])
        return False


def _register_shapes() -> None:
    """Output shapes for torch.compile (compiled_decode.py traces the fused norms and SiLU-multiply)."""
    torch.library.register_fake("llmbatch::rms_norm")(lambda x, w, eps: torch.empty_like(x))
    torch.library.register_fake("llmbatch::silu_mul")(lambda x: x.new_empty(x.shape[0], x.shape[1] // 2))
    torch.library.register_fake("llmbatch::rotary_qkv")(_rotary_qkv_shapes)
    torch.library.register_fake("llmbatch::cache_attention")(
        lambda q, k, v, k_cache, v_cache, slots, pos, scale, shared_k=None, shared_v=None, shared_len=None:
        torch.empty_like(q))


def _rotary_qkv_shapes(qkv, cos, sin, heads, kv_heads, scales=None):
    tokens, head_dim = qkv.shape[0], cos.shape[1]
    return (qkv.new_empty(tokens, heads, head_dim), qkv.new_empty(tokens, kv_heads, head_dim),
            qkv.new_empty(tokens, kv_heads, head_dim))
