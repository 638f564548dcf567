"""gpu_check, stage 1: correctness of the native engine on tiny random Llama and Qwen2 models.

Per architecture: logits vs transformers (fp32 and bf16), greedy generation token-exact with
transformers' generate (fp32), CUDA graphs vs eager decoding, seeded sampling repeatable and
batch-independent, score() vs transformers' log-likelihoods, which SDPA kernel each attention
path runs (from the profiler's aten op names), and device reads / CUDA syncs per decode step.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from benchmarks.host_reads import HostReads
from llm_core.engine.native import NativeEngine
from llm_core.engine.sampling import SamplingParams
from llm_core.models import load_model
from llm_core.models.attention import PackedCausalAttention

SHAPES = {  # smoke: the unit tests' tiny model; GPU: a little wider, still seconds to build
    True: dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5),
    False: dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5),
}
ARCHS = {"llama": dict(tie_word_embeddings=False), "qwen2": dict(tie_word_embeddings=True, rope_theta=1e6)}
MATH = "math"  # SDPA's unfused fallback: its aten op is _scaled_dot_product_attention_math


def tiny_folder(root: Path, arch: str, smoke: bool) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = root / f"tiny-{arch}"
    shape = SHAPES[smoke]
    config = AutoConfig.for_model(arch, **shape, **ARCHS[arch], eos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # sharper logits than the default init: fewer near-ties in greedy
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
    Tokenizer(WordLevel(vocab, unk_token="t0")).save(str(folder / "tokenizer.json"))
    return folder


def random_prompts(vocab: int, count: int, seed: int, longest: int = 60) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, longest, (count,), generator=gen).tolist()
    return [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in lengths]


def hf_model(folder: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()


@torch.inference_mode()
def check_logits(report, name: str, folder: Path, device: str, dtype: torch.dtype, prompts) -> None:
    native, _ = load_model(folder, device, dtype)
    hf = hf_model(folder, device, dtype)
    diffs, agree, total = [], 0, 0
    for seq in prompts:
        ids = torch.tensor(seq, device=device)
        got = native.compute_logits(native(ids, torch.arange(len(seq), device=device),
                                           PackedCausalAttention([len(seq)]))).float()
        want = hf(ids[None]).logits[0].float()
        diffs.append((got - want).abs().max().item())
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(seq)
    limit = 2e-4 if dtype == torch.float32 else 0.25  # bf16: both round differently; argmax must agree
    report.check(name, max(diffs) < limit and agree / total >= (1.0 if dtype == torch.float32 else 0.97),
                 max_abs_diff=max(diffs), limit=limit, argmax_agreement=agree / total)


@torch.inference_mode()
def check_greedy(report, name: str, engine: NativeEngine, hf, prompts) -> None:
    params = SamplingParams(max_new_tokens=16)
    got = [c[0].token_ids for c in engine.generate(prompts, params)]
    same = 0
    for prompt, tokens in zip(prompts, got):
        ids = torch.tensor([prompt], device=engine.device)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        same += int(out[0, len(prompt):].tolist() == tokens)
    report.check(name, same == len(prompts), token_exact=f"{same}/{len(prompts)}")


@torch.inference_mode()
def measure_bf16_agreement(report, name: str, folder: Path, device: str, prompts) -> None:
    """bf16 greedy vs transformers' bf16 generate: rounding differs, so agreement is reported,
    not required (the fp32 check above is the exact one)."""
    engine = NativeEngine(folder, device=device, dtype="bfloat16", max_num_seqs=8)
    hf = hf_model(folder, device, torch.bfloat16)
    got = [c[0].token_ids for c in engine.generate(prompts, SamplingParams(max_new_tokens=16))]
    same_tokens = same_rows = 0
    for prompt, tokens in zip(prompts, got):
        ids = torch.tensor([prompt], device=device)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        prefix = next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), len(want))
        same_tokens += prefix
        same_rows += int(tokens == want)
    report.measure(name, rows_exact=f"{same_rows}/{len(prompts)}",
                   common_prefix=same_tokens / (16 * len(prompts)))


def check_graphs_vs_eager(report, name: str, folder: Path, engine: NativeEngine, prompts) -> None:
    if not engine.runner.use_cuda_graphs:
        report.skip(name, "CUDA graphs run only on a GPU (their buffers and buckets are tested on CPU "
                          "by tests/integration/test_native_engine.py)")
        return
    params = SamplingParams(max_new_tokens=24)
    graphed = [c[0].token_ids for c in engine.generate(prompts, params)]
    eager_engine = NativeEngine(folder, device=engine.device, dtype="float32", max_num_seqs=engine.max_num_seqs)
    eager_engine.runner.use_cuda_graphs = False
    eager = [c[0].token_ids for c in eager_engine.generate(prompts, params)]
    captured = sorted(engine.runner.graphs.graphs)
    same = sum(a == b for a, b in zip(graphed, eager))
    report.check(name, same == len(prompts), token_exact=f"{same}/{len(prompts)}", graphs=len(captured))


def check_seeded(report, name: str, engine: NativeEngine, prompts) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=40, top_p=0.9, seed=7)
    first = [c[0].token_ids for c in engine.generate(prompts, params)]
    again = [c[0].token_ids for c in engine.generate(prompts, params)]
    alone = engine.generate(prompts[1:2], params)[0][0].token_ids
    other = [c[0].token_ids for c in engine.generate(prompts, params.with_updates(seed=8))]
    report.check(name, first == again and alone == first[1] and other != first,
                 repeatable=first == again, batch_independent=alone == first[1], seed_matters=other != first)


@torch.inference_mode()
def check_score(report, name: str, engine: NativeEngine, hf, prompts) -> None:
    continuations = [[5], [7, 8, 9], [11, 3]]
    got = engine.score(prompts, continuations)
    worst = 0.0
    for prompt, row in zip(prompts, got):
        for cont, value in zip(continuations, row):
            ids = torch.tensor([prompt + cont], device=engine.device)
            logits = hf(ids).logits[0, len(prompt) - 1: -1].float()
            want = logits.log_softmax(-1).gather(1, torch.tensor(cont, device=engine.device)[:, None]).sum().item()
            worst = max(worst, abs(value - want))
    report.check(name, worst < 1e-3, max_abs_diff=worst)


def sdpa_ops(fn) -> list[str]:
    """The attention ops `fn` runs: SDPA's (flash, efficient, cudnn, math, or the CPU fused kernel),
    or on CPU the engine's own (llmbatch::cache_attention)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    keys = {e.key for e in prof.key_averages()}
    return sorted(k for k in keys if k.startswith("aten::_scaled_dot_product") or k.startswith("aten::_flash")
                  or k.startswith("aten::_efficient") or k.startswith("llmbatch::"))


@torch.inference_mode()
def check_sdpa_kernels(report, name: str, engine: NativeEngine, prompts) -> None:
    runner = engine.runner
    runner.ensure_cache(max(len(p) for p in prompts) + 8)
    batch = prompts[:3]
    phases = {
        "prefill": lambda: runner.extend([(s, 0, p) for s, p in enumerate(batch)]),
        "score": lambda: runner.extend([(s, len(p), [4, 5, 6]) for s, p in enumerate(batch)], all_logits=True),
    }
    graphs, runner.graphs = runner.graphs, None  # profile the eager decode: graphs replay its kernels
    phases["decode"] = lambda: runner.decode([1] * len(batch), [len(p) + 3 for p in batch])
    try:
        ops = {phase: sdpa_ops(fn) for phase, fn in phases.items()}
    finally:
        runner.graphs = graphs
    figures = {phase: ",".join(o.removeprefix("aten::") for o in found) for phase, found in ops.items()}
    if not engine.device.startswith("cuda"):
        report.measure(name + " (CPU kernels; the verdict is for CUDA)", **figures)
        return
    report.check(name, all(found and not any(MATH in o for o in found) for found in ops.values()), **figures)


def is_sync_warning(w) -> bool:
    return "synchroniz" in str(w.message)


def steps_and_reads(engine: NativeEngine, prompts, params) -> dict:
    """One generate call's steps, HostReads counts and (CUDA) syncs: those inside the model's
    prefill and decode calls, and all of them. Run the call once before, to warm up."""
    on_cuda = engine.device.startswith("cuda")
    found = {"steps": 0, "prefill_syncs": 0, "decode_syncs": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def counted(kind, method):
            def call(*args, **kwargs):
                before = sum(map(is_sync_warning, caught))
                out = method(*args, **kwargs)
                found["steps"] += 1
                found[f"{kind}_syncs"] += sum(map(is_sync_warning, caught)) - before
                return out
            return call

        engine.runner.extend = counted("prefill", engine.runner.extend)
        engine.runner.decode = counted("decode", engine.runner.decode)
        try:
            if on_cuda:
                torch.cuda.set_sync_debug_mode("warn")
            with HostReads() as reads:
                engine.generate(prompts, params)
        finally:
            if on_cuda:
                torch.cuda.set_sync_debug_mode(0)
            del engine.runner.extend, engine.runner.decode  # back to the class's methods
    found["reads"] = dict(reads.counts)
    found["syncs"] = sum(map(is_sync_warning, caught)) if on_cuda else None
    return found


def check_syncs(report, name: str, engine: NativeEngine, prompts) -> None:
    """Decode steps must not sync inside the model (graph replay, input copies); the loop around
    them syncs once per step, to read the sampled tokens."""
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=3, ignore_eos=True)
    engine.generate(prompts, params)  # capture graphs and size the cache outside the count
    found = steps_and_reads(engine, prompts, params)
    steps = found["steps"]
    report.check(name + ": device reads per step", found["reads"] == {"tolist": steps}, steps=steps,
                 reads=found["reads"])
    if found["syncs"] is None:
        report.skip(name + ": CUDA syncs per step", "torch.cuda.set_sync_debug_mode needs a GPU")
        return
    outside_model = found["syncs"] - found["prefill_syncs"] - found["decode_syncs"]
    report.check(name + ": CUDA syncs per step", found["decode_syncs"] == 0 and outside_model <= steps,
                 steps=steps, syncs=found["syncs"], in_decode=found["decode_syncs"],
                 in_prefill=found["prefill_syncs"], outside_model=outside_model)


def run(report, device: str, smoke: bool, work: Path) -> None:
    report.stage = "correctness"
    for arch in ARCHS:
        folder = tiny_folder(work, arch, smoke)
        vocab = SHAPES[smoke]["vocab_size"]
        prompts = random_prompts(vocab, 6, seed=1)
        for dtype in (torch.float32, torch.bfloat16):
            tag = "fp32" if dtype == torch.float32 else "bf16"
            report.guarded(f"{arch} logits vs transformers {tag}",
                           lambda: check_logits(report, f"{arch} logits vs transformers {tag}", folder, device,
                                                dtype, prompts))
        engine = NativeEngine(folder, device=device, dtype="float32", max_num_seqs=8)
        hf = hf_model(folder, device, torch.float32)
        checks = {
            "greedy token-exact vs transformers generate (fp32)": lambda n: check_greedy(report, n, engine, hf, prompts),
            "greedy bf16 agreement with transformers bf16": lambda n: measure_bf16_agreement(
                report, n, folder, device, prompts),
            "CUDA graphs vs eager": lambda n: check_graphs_vs_eager(report, n, folder, engine, prompts),
            "seeded sampling": lambda n: check_seeded(report, n, engine, prompts),
            "score vs transformers": lambda n: check_score(report, n, engine, hf, prompts[:3]),
            "SDPA kernels": lambda n: check_sdpa_kernels(report, n, engine, prompts),
            "host syncs": lambda n: check_syncs(report, n, engine, prompts),
        }
        for label, fn in checks.items():
            full = f"{arch} {label}"
            report.guarded(full, lambda fn=fn, full=full: fn(full))
        del engine, hf
