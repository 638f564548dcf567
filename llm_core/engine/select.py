"""Pick the generation engine for a model folder: native where supported, else transformers;
vLLM (an optional extra) only when asked for by name."""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from llm_core.engine.hf import HFEngine
from llm_core.engine.native import NativeEngine
from llm_core.engine.native.quantize import QUANTIZATIONS
from llm_core.models import is_supported
from llm_core.tokenizer import ModelTokenizer

log = structlog.get_logger()


def native_support(model_dir: Path) -> tuple[bool, str]:
    config = json.loads((model_dir / "config.json").read_text())
    if not is_supported(config):
        return False, f"architecture {config.get('model_type')!r} is not supported by the native engine"
    return True, ""


def load_engine(model_dir: str | Path, choice: str = "auto", device: str = "auto", dtype: str = "auto",
                batch_size: int = 16, max_batch_tokens: int | None = None,
                tokenizer: ModelTokenizer | None = None, quantization: str = "none",
                adapter_dir: str | Path | None = None):
    """`quantization` (none, int8, w8a8) and `adapter_dir` (a LoRA adapter folder merged into the weights
    as they load) are the native engine's: with either, no fallback to transformers."""
    model_dir = Path(model_dir)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not supported (one of: {', '.join(QUANTIZATIONS)})")
    tokenizer = tokenizer or ModelTokenizer(model_dir)
    if choice in ("auto", "native"):
        ok, why = native_support(model_dir)
        if ok:
            return NativeEngine(model_dir, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens,
                                max_num_seqs=max(batch_size, 1), tokenizer=tokenizer.tok,
                                quantization=quantization, adapter_dir=adapter_dir)
        if choice == "native":
            raise ValueError(f"engine: native requested but {why}")
        if adapter_dir is not None:
            raise ValueError(f"an adapter needs the native engine (it merges the adapter as it loads), but {why}")
        if quantization != "none":
            raise ValueError(f"quantization: {quantization} needs the native engine, but {why}")
        log.warning("engine.fallback_to_hf", model_dir=str(model_dir), reason=why)
    elif choice == "vllm":
        return _vllm_engine(model_dir, device, dtype, batch_size, max_batch_tokens, tokenizer, quantization,
                            adapter_dir)
    elif choice != "hf":
        raise ValueError(f"unknown engine {choice!r} (auto, native, hf or vllm)")
    else:
        _refuse_native_only(choice, quantization, adapter_dir)
    return HFEngine(model_dir, device=device, dtype=dtype, batch_size=batch_size,
                    max_batch_tokens=max_batch_tokens, tokenizer=tokenizer)


def _vllm_engine(model_dir: Path, device: str, dtype: str, batch_size: int, max_batch_tokens: int | None,
                 tokenizer: ModelTokenizer, quantization: str, adapter_dir: str | Path | None):
    """engine: vllm runs the model folder as it is: int8 and adapter merging are the native engine's."""
    _refuse_native_only("vllm", quantization, adapter_dir)
    # imported here: vllm_engine imports vLLM itself only when the engine is built
    from llm_core.engine.vllm_engine import VllmEngine, require_vllm

    require_vllm()
    return VllmEngine(model_dir, device=device, dtype=dtype, batch_size=batch_size,
                      max_batch_tokens=max_batch_tokens, tokenizer=tokenizer)


def _refuse_native_only(choice: str, quantization: str, adapter_dir: str | Path | None) -> None:
    """hf and vllm run the model folder as it is: int8 and adapter merging are the native engine's."""
    if adapter_dir is not None:
        raise ValueError("an adapter needs the native engine (it merges the adapter as it loads); "
                         f"engine: {choice} runs the model as it is (use engine: native or auto)")
    if quantization != "none":
        raise ValueError(f"quantization: {quantization} is the native engine's; engine: {choice} runs unquantized "
                         "(use engine: native or auto, or quantization: none)")
