"""How many KV-cache slots of what length to allocate for a call that needs `needed` tokens.

CPU: every slot (max_num_seqs), just long enough, rounded up to 256 tokens: memory is rarely
the limit there and growing the cache is cheap (no CUDA graphs to re-capture).
CUDA: slots are fixed-length, so one long prompt times max_num_seqs slots can exceed the GPU.
The cache gets `fraction` of the free device memory (torch.cuda.mem_get_info, with the old
cache counted as free) less a reserve for activations and sampling; its length is the next
power of two (so growth, and graph re-capture, happens O(log context) times), and the number
of slots is what fits, at most max_num_seqs. The batcher admits no more sequences than slots.
A sequence that does not fit even alone is refused with KVCacheMemoryError, not an OOM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_core.models.config import ModelConfig

GIB = 1024**3
CPU_LENGTH_STEP = 256
GPU_MIN_LENGTH = 256


class KVCacheMemoryError(ValueError):
    """A sequence's KV cache does not fit in the device memory left."""


@dataclass(frozen=True)
class CachePlan:
    num_slots: int
    max_len: int


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Keys and values of one token over all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * itemsize


def activation_reserve(cfg: ModelConfig, dtype: torch.dtype, max_batch_tokens: int, max_num_seqs: int) -> int:
    """Bytes kept out of the cache budget: a prefill of max_batch_tokens (the widest live
    activations, twice for the tensors alive at once) and the sampler's fp32 [batch, vocab]
    temporaries (logits buffer, softmax, sort values and int64 indices, masks)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    per_token = (2 * cfg.intermediate_size + 4 * cfg.hidden_size + qkv) * itemsize * 2
    return max_batch_tokens * per_token + max_num_seqs * cfg.vocab_size * 4 * 8


def plan_cache(needed: int, max_num_seqs: int, max_context: int, bytes_per_token: int,
               free_bytes: int | None = None, reserve_bytes: int = 0, fraction: float = 0.9) -> CachePlan:
    """free_bytes None: CPU sizing. Otherwise the CUDA rule in the module docstring."""
    if free_bytes is None:
        return CachePlan(max_num_seqs, -(-needed // CPU_LENGTH_STEP) * CPU_LENGTH_STEP)
    budget_tokens = max(0, int(free_bytes * fraction) - reserve_bytes) // bytes_per_token
    length = GPU_MIN_LENGTH
    while length < needed:
        length *= 2
    for max_len in (min(length, max(max_context, needed)), needed):  # exact length as a last resort
        slots = min(max_num_seqs, budget_tokens // max_len)
        if slots >= 1:
            return CachePlan(slots, max_len)
    raise KVCacheMemoryError(
        f"a sequence of {needed} tokens (prompt + max_new_tokens) needs {needed * bytes_per_token / GIB:.2f} GiB "
        f"of KV cache; {budget_tokens * bytes_per_token / GIB:.2f} GiB is left for it on this GPU "
        f"({free_bytes / GIB:.2f} GiB free, {reserve_bytes / GIB:.2f} GiB kept for activations): "
        "shorten the prompt or max_new_tokens, or use a larger GPU")
