"""One layer's decode call of the engine's CPU attention kernel (llmbatch::cache_attention), with
the KV cache in the CPU's caches and from memory (the engine's case: a layer's cache is megabytes,
every layer's far more than the L3).

    python benchmarks/cache_attention.py                     # SmolLM2-135M's shape: 3 KV heads of 64, GQA 3
    python benchmarks/cache_attention.py --kv-heads 8 --group 4 --head-dim 128
    python benchmarks/cache_attention.py --dtype float32 --shared-prefix 50

Prints microseconds a call, best of --repeats, and the keys and values read per second. With
--shared-prefix P every sequence holds the same first P entries (a cached system prompt) and the
from-memory figure is taken side by side, rounds alternating: reading them from each slot's copy
(the layout alone) and from the prefix's one copy (shared_k / shared_v, what the engine passes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_core.engine.native import cpu_kernels  # noqa: E402


def time_calls(calls, repeats: int) -> float:
    """Best seconds a call over `repeats` rounds of `calls` (a list of thunks)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for call in calls:
            call()
        best = min(best, (time.perf_counter() - start) / len(calls))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--group", type=int, default=3, help="query heads per KV head")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--context", type=int, nargs=2, default=[130, 230], help="each sequence's length, drawn from")
    ap.add_argument("--layers", type=int, default=30, help="caches cycled through for the from-memory figure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--shared-prefix", type=int, default=0, help="entries every sequence shares (< --context's low)")
    args = ap.parse_args()
    if not cpu_kernels.cpu_kernels_available():
        raise SystemExit("the CPU kernels did not build here (see the log)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, h, g, d = args.sequences, args.kv_heads, args.group, args.head_dim
    length = args.context[1] + 1
    dtype = getattr(torch, args.dtype)
    caches = [(torch.randn(n, h, length, d).to(dtype), torch.randn(n, h, length, d).to(dtype))
              for _ in range(args.layers)]
    p = args.shared_prefix
    if not 0 <= p < args.context[0]:
        raise SystemExit("--shared-prefix must be below the shortest context")
    prefixes = [(kc[0, :, :p].clone(), vc[0, :, :p].clone()) for kc, vc in caches]
    for (kc, vc), (pk, pv) in zip(caches, prefixes):
        kc[:, :, :p] = pk
        vc[:, :, :p] = pv
    q, k, v = torch.randn(n, h, g, d).to(dtype), torch.randn(n, h, d).to(dtype), torch.randn(n, h, d).to(dtype)
    slots, pos = torch.arange(n), torch.randint(args.context[0], args.context[1], (n,))
    op, scale = torch.ops.llmbatch.cache_attention, d ** -0.5
    read = float(((pos + 1) * h * d * 2 * dtype.itemsize).sum())  # keys and values, bytes a call

    def call(kc, vc):
        return lambda: op(q, k, v, kc, vc, slots, pos, scale)

    lengths = torch.full((n,), p)

    def call_shared(kc, vc, pk, pv):
        return lambda: op(q, k, v, kc, vc, slots, pos, scale, shared_k=pk, shared_v=pv, shared_len=lengths)

    hot = [call(*caches[0])] * 50
    cold = [call(kc, vc) for kc, vc in caches] * 2
    time_calls(hot[:5] + cold[: args.layers], 1)  # first calls: thread pool, page faults
    print(f"shape: {n} sequences of {args.context[0]}-{args.context[1]} tokens, {h} KV heads x {g} query heads "
          f"of {d}, {args.dtype}, {args.threads} threads; {read / 1e6:.1f} MB of keys and values a call")
    if not p:
        for name, calls in (("one cache, in the CPU's caches", hot), (f"{args.layers} layers' caches in turn", cold)):
            seconds = time_calls(calls, args.repeats)
            print(f"{name}: {seconds * 1e6:.0f} us a call, {read / seconds / 1e9:.1f} GB/s")
        return
    shared = [call_shared(kc, vc, pk, pv) for (kc, vc), (pk, pv) in zip(caches, prefixes)] * 2
    own, one = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternating, so drifts of the machine hit both alike
        own = min(own, time_calls(cold, 1))
        one = min(one, time_calls(shared, 1))
    for name, seconds in (("each slot's copy", own), ("its one shared copy", one)):
        print(f"{args.layers} layers' caches in turn, the {p}-entry prefix from {name}: {seconds * 1e6:.0f} us a call")
    print(f"speedup={own / one:.2f}")


if __name__ == "__main__":
    main()
