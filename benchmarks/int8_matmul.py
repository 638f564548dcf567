"""int8 vs bf16 matmuls at the built-in model's shapes, one CPU, side by side (issue 16's int8 target).

    python benchmarks/int8_matmul.py --threads 2            # rows 64 (a decode step) and 2048 (prefill)

For each projection of SmolLM2-135M (q/k/v, o, gate/up, down, the output head) it times, in one run:
  bf16         the native engine's bf16 layer (oneDNN-packed weights, packed_linear.py)
  w8 (a16)     the engine's `quantization: int8` (int8 weights, bf16 activations, quantize.py)
  w8a8 mm      oneDNN's int8 x int8 matmul alone (`onednn.qlinear_pointwise`, prepacked weights),
               what a W8A8 layer could cost with its activation quantization fused away
  w8a8 eager   the same with per-row dynamic activation quantization and the row scales applied
               by eager torch ops (what a W8A8 layer costs without a fused kernel)
and the relative output error of each int8 form against bf16's fp32 reference. The last line sums
a decoder layer (4 projections) for each form, and the ratio to bf16.
Times are medians of repeated calls (ms); nothing else should run (load under ~1.5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llm_core.engine.native.packed_linear import PackedLinear, onednn_bf16
from llm_core.engine.native.quantize import Int8Linear, quantize_rows
from llm_core.engine.native.w8a8_linear import quantize_rows_u8_eager as quantize_rows_u8  # the eager passes measured
from llm_core.engine.native.w8a8_linear import weight_max_q

SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576), "head": (576, 49152)}
LAYER = ("qkv", "o", "gate_up", "down")


def median_ms(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="64,2048", help="activation rows (tokens) per matmul, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if not onednn_bf16():
        raise SystemExit("oneDNN has no bf16 on this CPU: the bf16 baseline would be emulated")
    torch.manual_seed(0)
    flags = sorted(f for f in open("/proc/cpuinfo").read().split() if f in {"avx512_bf16", "avx512_vnni", "amx_int8",
                                                                           "amx_bf16", "avx_vnni"})
    print(f"threads={args.threads} cpu flags: {' '.join(flags) or 'none of avx512_bf16/vnni/amx'}")
    print("| rows | layer | bf16 ms | w8 (a16) ms | w8a8 mm ms | w8a8 eager ms | err w8 | err w8a8 |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        totals: dict[str, float] = dict.fromkeys(("bf16", "w8", "mm", "eager"), 0.0)
        for name, (k, n) in SHAPES.items():
            if name == "head" and rows > 64:
                continue  # prefill computes the head for each prompt's last token only
            linear = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16)
            x = torch.randn(rows, k).to(torch.bfloat16)
            reference = x.float() @ linear.weight.float().t()
            packed, int8 = PackedLinear(linear), Int8Linear.from_linear(linear)
            qweight, wscales = quantize_rows(linear.weight, weight_max_q())  # the range the engine uses here
            prepacked = torch.ops.onednn.qlinear_prepack(qweight, None)
            zeros = torch.zeros(n, dtype=torch.int64)

            def qmm(q):
                return torch.ops.onednn.qlinear_pointwise(q, 1.0, 128, prepacked, wscales, zeros, None, 1.0, 0,
                                                          torch.bfloat16, "none", [], "")

            def w8a8():
                q, s = quantize_rows_u8(x)
                return qmm(q).mul_(s)

            qx, _ = quantize_rows_u8(x)
            t = {"bf16": median_ms(lambda: packed(x), args.calls), "w8": median_ms(lambda: int8(x), args.calls),
                 "mm": median_ms(lambda: qmm(qx), args.calls), "eager": median_ms(w8a8, args.calls)}
            err = {key: float((out.float() - reference).norm() / reference.norm()) for key, out in
                   (("w8", int8(x)), ("w8a8", w8a8()))}
            if name in LAYER:
                for key in totals:
                    totals[key] += t[key]
            print(f"| {rows} | {name} | {t['bf16']:.3f} | {t['w8']:.3f} | {t['mm']:.3f} | {t['eager']:.3f} "
                  f"| {err['w8']:.4f} | {err['w8a8']:.4f} |")
        ratio = {key: totals["bf16"] / v for key, v in totals.items()}
        print(f"| {rows} | decoder layer | {totals['bf16']:.3f} | {totals['w8']:.3f} ({ratio['w8']:.2f}x) "
              f"| {totals['mm']:.3f} ({ratio['mm']:.2f}x) | {totals['eager']:.3f} ({ratio['eager']:.2f}x) | | |")


if __name__ == "__main__":
    main()
