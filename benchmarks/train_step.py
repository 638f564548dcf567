"""One training step (forward + backward) of a ~30M-parameter Llama: transformers vs llm_core.

Same shape on both sides: SmolLM2's 49,152-token vocabulary, hidden 384, 6 layers, 6 heads
(2 KV heads), tied embeddings; batch 4 x 512 tokens. transformers' LlamaForCausalLM (SDPA
attention, logits for every token, then its loss) against our TrainableCausalLM (fused
projections, one causal SDPA call, chunked cross-entropy). Each side runs in its own subprocess
so that its peak memory is its own: peak RSS on CPU, torch.cuda.max_memory_allocated on GPU
(bf16 autocast over fp32 weights there, as benchmarks/train.py's plain torch loop).

    python benchmarks/train_step.py --device cpu
    python benchmarks/train_step.py --device cuda --batch 8 --seq-len 2048 --compile

The last line is `speedup=<transformers step time / ours>`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPE = dict(
    model_type="llama", vocab_size=49152, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
IMPLS = {"hf": "transformers LlamaForCausalLM", "ours": "llm_core TrainableCausalLM"}


def build(impl: str, compile_layers: bool, chunk_tokens: int | None):
    """(module, loss of a batch)."""
    import torch

    torch.manual_seed(0)
    if impl == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation="sdpa"))
        return model, lambda batch: model(**batch).loss
    from llm_core.models import LlamaForCausalLM, ModelConfig, TrainableCausalLM
    from llm_core.models.training import DEFAULT_CHUNK_TOKENS, init_weights

    decoder = LlamaForCausalLM(ModelConfig.from_dict(SHAPE))
    init_weights(decoder)
    model = TrainableCausalLM(decoder, chunk_tokens=chunk_tokens or DEFAULT_CHUNK_TOKENS, compile_layers=compile_layers)
    return model, lambda batch: model(**batch)


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def child(args) -> dict:
    """Time `steps` fwd+bwd steps after `warmup`; memory as the module docstring says."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, loss_of = build(args.child, args.compile, args.chunk_tokens)
    model.to(args.device).train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SHAPE["vocab_size"], (args.batch, args.seq_len), generator=gen).to(args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    cuda = args.device == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mib()
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with amp:
            loss = loss_of(batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    params = sum(p.numel() for p in model.parameters())
    return {"impl": args.child, "step_s": statistics.median(times), "loss": float(loss),
            "params": params, "base_mib": base, "peak_mib": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile each decoder layer")
    p.add_argument("--chunk-tokens", type=int, default=None, help="ours: tokens per cross-entropy chunk")
    p.add_argument("--child", choices=list(IMPLS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    rows = {}
    for impl in IMPLS:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", impl]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[impl] = json.loads(out.strip().splitlines()[-1])
    tokens = args.batch * args.seq_len
    mem = "GPU MiB allocated" if args.device == "cuda" else "RSS MiB"
    print(f"{rows['ours']['params'] / 1e6:.1f}M params, vocab {SHAPE['vocab_size']}, batch {args.batch} x seq "
          f"{args.seq_len}, device {args.device}, median of {args.steps} fwd+bwd steps")
    print(f"{'':32s}{'s/step':>8s}{'tokens/s':>10s}{'loss':>8s}{'peak ' + mem:>20s}{'step +' + mem:>20s}")
    for impl, r in rows.items():
        print(f"{IMPLS[impl]:32s}{r['step_s']:8.3f}{tokens / r['step_s']:10.0f}{r['loss']:8.3f}"
              f"{r['peak_mib']:20.0f}{r['peak_mib'] - r['base_mib']:20.0f}")
    print(f"speedup={rows['hf']['step_s'] / rows['ours']['step_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
