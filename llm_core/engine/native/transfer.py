"""Host lists to device tensors without a host-device sync.

`torch.tensor(values, device="cuda")` copies with non_blocking=False, and PyTorch follows such a
copy with a stream synchronize: the CPU waits for every queued kernel. Built on the host first
and copied with non_blocking=True, the driver stages the pageable buffer at once and the copy
queues behind the running kernels instead. On CPU this is plain torch.tensor.
"""

from __future__ import annotations

import torch


def to_device(values, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == "cpu":
        return host
    return host.to(device, non_blocking=True)
