"""Every running sequence's token ids (prompt + output) on the device, one row per cache slot.

The repetition penalty touches, per row, the logits of the ids seen so far. Building that from
Python lists every step costs a host-to-device copy and several kernels per sequence; keeping
the ids in a [slots, max_len] tensor, written with one indexed store per step, lets the penalty
run as one gather and one scatter for the whole batch (O(batch x length), not O(batch x vocab)).
A row's unused tail repeats its first id, so gathering the full width never adds a new id.
Rows follow the KV cache's slots, moves included.
"""

from __future__ import annotations

import torch

from llm_core.engine.native.transfer import to_device


class TokenHistory:
    def __init__(self, num_slots: int, max_len: int, device):
        self.ids = torch.zeros(num_slots, max_len, dtype=torch.long, device=device)

    def start(self, slot: int, prompt: list[int]) -> None:
        """A new sequence takes `slot`: its prompt, then its first id as filler."""
        row = to_device(prompt, self.ids.device, torch.long)
        self.ids[slot].fill_(prompt[0])
        self.ids[slot, : len(prompt)] = row

    def add(self, slots: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        self.ids[slots, positions] = tokens

    def move(self, src: int, dst: int, length: int) -> None:  # same signature as KVCache.move
        self.ids[dst] = self.ids[src]

    def rows(self, slots: torch.Tensor, length: int) -> torch.Tensor:
        """[len(slots), length]: the first `length` ids of each row (longer rows are cut)."""
        return self.ids[slots, :length]
