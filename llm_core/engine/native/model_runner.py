"""Runs the model for prefill and decode steps over the KV cache; returns fp32 logits.

Prefill packs every sequence's new tokens into one flat batch and computes the lm_head only
where logits are needed; a prompt's cached prefix (prefix_cache.py) is copied into its slot
instead of computed. Decode feeds one token per sequence; on CUDA it replays a captured
graph (see cuda_graphs.py), on CPU it runs eagerly, or with compile_decode through
torch.compile'd regions around attention (compiled_decode.py). CPU attention, prefill and
decode, is the engine's own kernel (cpu_kernels.py) where it builds; where it does not, SDPA
over padded sequences (prefill) or over the cache cut to each group's longest context (decode).
Prefill stays eager: through the same regions it measured slower in the engine (issue 16).
The cache's size is cache_plan's decision (free GPU memory on CUDA).
"""

from __future__ import annotations

import torch

from llm_core.engine.native.attention import (
    DecodeAttention, KernelAttention, PrefillAttention, length_groups, packed_tokens,
)
from llm_core.engine.native.cache_plan import activation_reserve, kv_bytes_per_token, plan_cache
from llm_core.engine.native.compiled_decode import CompiledDecode
from llm_core.engine.native.cpu_kernels import cpu_kernels_available
from llm_core.engine.native.cuda_graphs import DecodeGraphs
from llm_core.engine.native.kv_cache import KVCache
from llm_core.engine.native.prefix_cache import CachedPrefix, PrefixCapture
from llm_core.engine.native.transfer import to_device
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM

# Slots per decode attention group (eager decode; attention.DecodeAttention): small enough that a
# group's longest sequence is close to its others, large enough that the calls stay few.
DECODE_GROUP_SLOTS = 16


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, cfg: ModelConfig, device: str, dtype: torch.dtype,
        max_num_seqs: int, use_cuda_graphs: bool, max_context: int | None = None, max_batch_tokens: int = 2048,
        compile_decode: bool = False, attention_kernel: bool = True,
    ):
        self.model, self.cfg, self.device, self.dtype = model, cfg, device, dtype
        self.max_num_seqs = max_num_seqs
        self.max_context = max_context or cfg.max_position_embeddings
        self.max_batch_tokens = max_batch_tokens
        self.use_cuda_graphs = use_cuda_graphs
        self.on_cuda = torch.device(device).type == "cuda"
        self.cache: KVCache | None = None
        self.graphs = None
        # CPU decode through torch.compile (compiled_decode.py), compiled now; CUDA replays graphs.
        # CPU prefill and decode attention: the engine's kernel (cpu_kernels.py) where it builds.
        self.attention_kernel = attention_kernel and not self.on_cuda and cpu_kernels_available()
        # Decode reads a cached prefix from its one copy (KernelAttention); off: from each slot's.
        self.shared_prefix_reads = True
        self.compiled_decode: CompiledDecode | None = None
        if compile_decode and not self.on_cuda:
            self.compiled_decode = CompiledDecode(model)
            self.compiled_decode.warm_up()

    def plan(self, needed: int):
        """The cache a call needing `needed` tokens per sequence should have (cache_plan)."""
        per_token = kv_bytes_per_token(self.cfg, self.dtype)
        if not self.on_cuda:
            return plan_cache(needed, self.max_num_seqs, self.max_context, per_token)
        torch.cuda.empty_cache()  # blocks the allocator keeps but does not use count as free
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        if self.cache is not None:  # it would be released first
            free += 2 * self.cache.k.numel() * self.cache.k.element_size()
        reserve = activation_reserve(self.cfg, self.dtype, self.max_batch_tokens, self.max_num_seqs)
        return plan_cache(needed, self.max_num_seqs, self.max_context, per_token, free, reserve)

    def ensure_cache(self, needed: int) -> KVCache:
        """(Re)allocate the cache when a call needs longer slots than the current one has, or
        (CUDA) when an earlier long call left fewer slots than a call this short can have."""
        cache = self.cache
        if cache is not None and cache.max_len >= needed and cache.num_slots == self.max_num_seqs:
            return cache
        plan = self.plan(needed)
        if cache is not None and cache.max_len >= needed and plan.num_slots <= cache.num_slots:
            return cache
        self.cache = self.graphs = None
        if self.on_cuda:
            torch.cuda.empty_cache()
        self.cache = KVCache(self.cfg, plan.num_slots, plan.max_len, self.device, self.dtype)
        if self.use_cuda_graphs:
            self.graphs = DecodeGraphs(self.model, self.cache, plan.num_slots, self.cfg.vocab_size)
        return self.cache

    def extend(
        self, chunks: list[tuple[int, int, list[int]]], all_logits: bool = False
    ) -> list[torch.Tensor]:
        """chunks: (slot, start, new tokens). Writes the tokens' KV at start.. in each slot and
        returns per chunk the logits of its last token [V], or of every token [n, V]."""
        slots = [slot for slot, _, _ in chunks]
        starts = [start for _, start, _ in chunks]
        lens = [len(tokens) for _, _, tokens in chunks]
        flat = [t for _, _, tokens in chunks for t in tokens]
        input_ids = to_device(flat, self.device, torch.long)
        if self.attention_kernel:
            backend = KernelAttention(self.cache, *packed_tokens(slots, starts, lens, self.device))
        else:
            backend = PrefillAttention(self.cache, slots, starts, lens, self.device)
        hidden = self.model(input_ids, backend.positions, backend)
        if all_logits:
            return list(self.model.compute_logits(hidden).float().split(lens))
        last = to_device(lens, self.device, torch.long).cumsum(0) - 1
        return list(self.model.compute_logits(hidden[last]).float())

    def prefix_kv(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of `tokens` run alone from position 0: [layers, kv_heads, len, head_dim] each."""
        capture = PrefixCapture()
        positions = torch.arange(len(tokens), device=self.device)
        self.model(to_device(tokens, self.device, torch.long), positions, capture)
        return capture.stacked()

    def prefill(self, items: list[tuple[int, list[int], CachedPrefix | None]]) -> list[torch.Tensor]:
        """items: (slot, prompt, cached prefix of the prompt or None). Copies each prefix's K/V
        into its slots, runs the rest of every prompt and returns each prompt's last logits [V]."""
        slots_of: dict[int, tuple[CachedPrefix, list[int]]] = {}
        for slot, _, prefix in items:
            if prefix is not None:
                slots_of.setdefault(id(prefix), (prefix, []))[1].append(slot)
        for prefix, slots in slots_of.values():
            self.cache.load_prefix(to_device(slots, self.device, torch.long), prefix.k, prefix.v)
        starts = [0 if prefix is None else len(prefix) for _, _, prefix in items]
        return self.extend([(slot, start, prompt[start:]) for (slot, prompt, _), start in zip(items, starts)])

    def decode(self, last_tokens: list[int], positions: list[int],
               prefixes: list[CachedPrefix | None] | None = None) -> torch.Tensor:
        """Sequence b (in slot b) adds last_tokens[b] at positions[b]; returns logits [B, V].
        prefixes[b]: the cached prefix loaded into slot b at its prefill, if any."""
        if self.graphs is not None:
            return self.graphs.run(last_tokens, positions)
        input_ids = to_device(last_tokens, self.device, torch.long)
        pos = to_device(positions, self.device, torch.long)
        if self.attention_kernel:
            shared = shared_prefix(prefixes, self.cache.k.dtype) if self.shared_prefix_reads else None
            backend = KernelAttention(self.cache, torch.arange(len(positions), device=self.device), pos, shared)
        else:
            length = max(positions) + 1
            mask = (torch.arange(length, device=self.device)[None, :] <= pos[:, None])[:, None, None, :]
            backend = DecodeAttention(self.cache, pos, mask, length, length_groups(positions, DECODE_GROUP_SLOTS))
        forward = self.compiled_decode or self.model
        hidden = forward(input_ids, pos, backend)
        return self.model.compute_logits(hidden).float()


def shared_prefix(prefixes: list[CachedPrefix | None] | None,
                  dtype: torch.dtype) -> tuple[CachedPrefix, torch.Tensor] | None:
    """The cached prefix most of a decode batch's slots hold, with each slot's count of entries
    read from it (its length for those slots, 0 for the others), for KernelAttention; None when
    no slot holds one. One prefix per call: a job's rows share one system prompt."""
    counts: dict[int, tuple[CachedPrefix, int]] = {}
    for prefix in prefixes or ():
        if prefix is not None:
            counts[id(prefix)] = (prefix, counts.get(id(prefix), (prefix, 0))[1] + 1)
    if not counts:
        return None
    chosen = max(counts.values(), key=lambda entry: entry[1])[0]
    if chosen.k.dtype != dtype:  # computed before a dtype change of the cache: read the slots' copies
        return None
    lengths = [len(chosen) if prefix is chosen else 0 for prefix in prefixes]
    return chosen, torch.tensor(lengths, dtype=torch.long)
