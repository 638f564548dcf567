"""The native generation engine: KV cache, continuous batching, sampling (Engine protocol).

Choosing between it and the transformers fallback is llm_core.engine.select's job.
"""

from llm_core.engine.native.llm_engine import NativeEngine

__all__ = ["NativeEngine"]
