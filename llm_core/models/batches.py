"""Right-padded [B, S] token batches: what the trainable decoder and the classifier head take.

Right padding keeps every row's real tokens at the same positions as alone; the attention mask
marks them, and the last real token of a row is at `mask.sum(1) - 1`.
"""

from __future__ import annotations

import torch


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [len(rows), longest row], padded on the right."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
