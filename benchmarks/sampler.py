"""The decode-step sampler with the summarize defaults (repetition penalty, no-repeat n-grams)
vs transformers' logits processors on the same logits, side by side.

    python benchmarks/sampler.py --batch 64 --vocab 49152            # SmolLM2's vocabulary
    python benchmarks/sampler.py --batch 256 --vocab 151936 --device cuda

Each step feeds both sides the same random logits for a batch of sequences with prompts of
--prompt-len tokens; both pick the greedy token after the penalty and the n-gram ban, and the
picks must agree. The last line is `speedup=<transformers s/step / ours s/step>`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_core.engine.native.sampler import sample  # noqa: E402
from llm_core.engine.native.sequence import Sequence  # noqa: E402
from llm_core.engine.native.token_history import TokenHistory  # noqa: E402
from llm_core.engine.sampling import SamplingParams  # noqa: E402


def run(args) -> tuple[float, float]:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, args.vocab, (args.batch, args.prompt_len), generator=gen)
    params = SamplingParams(repetition_penalty=args.penalty, no_repeat_ngram_size=args.ngram)
    seqs = [Sequence(p.tolist(), params, i, 0, args.device) for i, p in enumerate(prompts)]
    history = TokenHistory(args.batch, args.prompt_len + args.warmup + args.steps, args.device)
    for slot, seq in enumerate(seqs):
        seq.slot = slot
        history.start(slot, seq.prompt)
    slots = torch.arange(args.batch, device=args.device)
    processors = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(args.penalty), NoRepeatNGramLogitsProcessor(args.ngram),
    ])
    input_ids = prompts.to(args.device)
    ours_s = theirs_s = 0.0
    for step in range(args.warmup + args.steps):
        logits = torch.randn(args.batch, args.vocab, generator=gen).to(args.device)
        mine = logits.clone()  # sample() edits its logits in place
        _sync(args.device)
        t0 = time.perf_counter()
        length = len(seqs[0])
        tokens = sample(mine, seqs, history.rows(slots, length))
        history.add(slots, torch.full_like(slots, length), torch.tensor(tokens, device=args.device))
        _sync(args.device)
        t1 = time.perf_counter()
        want = processors(input_ids, logits.clone()).argmax(dim=-1).tolist()
        _sync(args.device)
        t2 = time.perf_counter()
        if tokens != want:
            raise SystemExit(f"step {step}: the two sides picked different tokens")
        for seq, token in zip(seqs, tokens):
            seq.output.append(token)
        input_ids = torch.cat([input_ids, torch.tensor(want, device=args.device)[:, None]], dim=1)
        if step >= args.warmup:
            ours_s += t1 - t0
            theirs_s += t2 - t1
    return ours_s / args.steps, theirs_s / args.steps


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--prompt-len", type=int, default=300)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--penalty", type=float, default=1.1)
    p.add_argument("--ngram", type=int, default=4)
    args = p.parse_args(argv)
    ours, theirs = run(args)
    print(f"batch {args.batch}, vocab {args.vocab}, prompt {args.prompt_len} tokens, {args.steps} steps, "
          f"repetition_penalty {args.penalty}, no_repeat_ngram_size {args.ngram}, device {args.device}")
    print(f"{'':28s}{'ms/step':>10s}")
    print(f"{'transformers processors':28s}{theirs * 1e3:10.2f}")
    print(f"{'llmbatch sampler':28s}{ours * 1e3:10.2f}")
    print(f"speedup={theirs / ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
