"""Count the tensor operations that read device memory back to the host.

On CUDA each of them is a host-device sync (the CPU waits for the GPU queue to drain), which
stalls a decode loop; torch.cuda.set_sync_debug_mode reports them only on a GPU. This counter
works on any device, so CPU tests can prove a code path adds none: it wraps the Tensor methods
that return host values (bool(), item(), tolist(), float(), int(), nonzero(), cpu()) and
boolean-mask indexing (its result size depends on the data, so it syncs too).

    with HostReads() as reads:
        sample(logits, seqs)
    assert reads.total == 1  # the final tolist()
"""

from __future__ import annotations

from collections import Counter

import torch

READING_METHODS = ("__bool__", "item", "tolist", "__float__", "__int__", "nonzero", "cpu")
INDEXING_METHODS = ("__getitem__", "__setitem__")


def _has_bool_mask(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class HostReads:
    def __init__(self):
        self.counts: Counter[str] = Counter()
        self._saved: dict[str, object] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _wrap(self, name: str, original):
        counts = self.counts

        def wrapper(tensor, *args, **kwargs):
            if name in INDEXING_METHODS:
                if _has_bool_mask(args[0]):
                    counts[f"bool-mask {name}"] += 1
            else:
                counts[name] += 1
            return original(tensor, *args, **kwargs)

        return wrapper

    def __enter__(self) -> "HostReads":
        for name in READING_METHODS + INDEXING_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)  # None: inherited from TensorBase
            setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        self._saved.clear()
