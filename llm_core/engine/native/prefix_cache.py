"""Prefix caching: the keys and values of a prompt prefix that many sequences share, computed once.

The rows of a batch job start alike (chat template, system prompt, instruction). For each call the
engine finds the longest token prefix common to its prompts, runs the model over it once and keeps
its K/V here. Every sequence that starts with a cached prefix gets that K/V copied into its cache
slot and prefills only the rest of its prompt, from position len(prefix): RoPE positions, attention
over the prefix, the repetition-penalty history and decode (CUDA graphs included) all still see the
whole prompt. A token's K/V depends only on the tokens before it, so the result is the same as a
full prefill, up to float rounding of differently shaped kernels.

Entries outlive the call (least recently used leave first, past a few entries or a byte budget),
so the next shard of the same job finds its prefix ready. The cache is keyed by token ids only:
one engine holds one model, whose weights never change.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Sequence as Seq

import torch

from llm_core.models.attention import causal_attention

log = logging.getLogger(__name__)

MIN_PREFIX_TOKENS = 16  # shorter shared prefixes save less than the extra forward pass costs
MAX_ENTRIES = 4
MAX_BYTES = 256 * 1024**2  # all entries together


@dataclass(frozen=True, eq=False)
class CachedPrefix:
    tokens: tuple[int, ...]
    k: torch.Tensor  # [layers, kv_heads, len(tokens), head_dim], the KV cache's per-slot layout
    v: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PrefixCapture:
    """Attention backend for one prefix run alone: causal attention, keeping every layer's K/V."""

    def __init__(self):
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # [T, kv_heads, D] -> [kv_heads, T, D], copied: k/v may be views of a wider qkv output.
        self.k.append(k.transpose(0, 1).contiguous())
        self.v.append(v.transpose(0, 1).contiguous())
        return causal_attention(q, k, v)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.k), torch.stack(self.v)


def shared_prefix_length(prompts: Seq[Seq[int]]) -> int:
    """Tokens common to the start of every prompt, leaving at least one token of each prompt
    to prefill (its logits choose the first new token)."""
    if not prompts:
        return 0
    # The lexicographically smallest and largest prompts share exactly the common prefix of all.
    low, high = min(prompts), max(prompts)
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and low[n] == high[n]:
        n += 1
    return n


class PrefixCache:
    def __init__(self, min_tokens: int = MIN_PREFIX_TOKENS, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES):
        self.min_tokens, self.max_entries, self.max_bytes = min_tokens, max_entries, max_bytes
        self.entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()  # oldest use first

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())

    def match(self, prompt: Seq[int]) -> CachedPrefix | None:
        """The longest entry that `prompt` starts with and extends by at least one token."""
        best = self._longest_prefix_of(prompt, len(prompt) - 1)
        if best is not None:
            self.entries.move_to_end(best.tokens)
        return best

    def _longest_prefix_of(self, tokens: Seq[int], max_length: int) -> CachedPrefix | None:
        best = None
        for key, entry in self.entries.items():
            if len(key) <= max_length and (best is None or len(key) > len(best)) \
                    and tuple(tokens[: len(key)]) == key:
                best = entry
        return best

    def prepare(self, prompts: Seq[Seq[int]],
                compute: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Adds the common prefix of `prompts` (one per sequence, so n > 1 completions of one
        prompt count) when two or more share at least min_tokens that no entry covers yet."""
        if len(prompts) < 2:
            return
        length = shared_prefix_length(prompts)
        if length < self.min_tokens:
            return
        tokens = tuple(prompts[0][:length])
        known = self._longest_prefix_of(tokens, length)
        if known is not None and length - len(known) < self.min_tokens:
            return
        k, v = compute(list(tokens))
        self._add(CachedPrefix(tokens, k, v))

    def _add(self, entry: CachedPrefix) -> None:
        """The newest entry always stays (this call uses it), even alone over the byte budget:
        at most one sequence's KV, less than one cache slot."""
        self.entries[entry.tokens] = entry
        while len(self.entries) > 1 and (len(self.entries) > self.max_entries or self.nbytes > self.max_bytes):
            self.entries.popitem(last=False)
        log.info("prefix cache: computed a %d-token shared prefix (%d entries, %d MiB)",
                 len(entry), len(self.entries), self.nbytes >> 20)
