"""Turn the last-position logits of a batch into next tokens.

Order and semantics follow transformers' generate so greedy output can be compared token for
token: repetition penalty and no-repeat-ngram bans first, then temperature, top-k, top-p.
A seeded sequence draws from its own torch.Generator, so a seed gives the same output whatever
else is in the batch; unseeded rows share one batched draw from the default generator.

No step reads the device back except the final token list: which warpers run is decided from
the rows' Python SamplingParams (never from a tensor), masks are applied with torch.where /
masked_fill (never boolean-index assignment, which syncs to count the selected elements).
"""

from __future__ import annotations

import torch

from llm_core.engine.native.sequence import Sequence
from llm_core.engine.native.transfer import to_device
from llm_core.engine.ngram import NgramIndex


def apply_repetition_penalty(logits: torch.Tensor, penalties: torch.Tensor, history: torch.Tensor) -> None:
    """transformers' rule for every row at once: the logit of an id in the row's history is
    divided by its penalty when positive, multiplied when negative. penalties [B]; history
    [B, L] token ids (repeats are harmless: every copy gets the same value)."""
    p = penalties[:, None]
    scores = logits.gather(1, history)
    logits.scatter_(1, history, torch.where(scores < 0, scores * p, scores / p))


def banned_ngram_tokens(seq: Sequence) -> list[int]:
    """Tokens that would repeat an n-gram already present in prompt + output."""
    if seq.ngram_index is None:  # kept on the sequence: each step indexes only its new n-grams
        seq.ngram_index = NgramIndex(seq.params.no_repeat_ngram_size)
    return seq.ngram_index.banned(seq.tokens)


def apply_no_repeat_ngram(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Ban, in one indexed write for the whole batch, each row's n-gram-repeating tokens."""
    rows: list[int] = []
    banned: list[int] = []
    for row, seq in enumerate(seqs):
        if seq.params.no_repeat_ngram_size > 0:
            tokens = banned_ngram_tokens(seq)
            rows += [row] * len(tokens)
            banned += tokens
    if banned:
        device = logits.device
        logits[to_device(rows, device, torch.long), to_device(banned, device, torch.long)] = float("-inf")


def warp(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, top-k and top-p for rows that sample (logits: [B, V], fp32)."""
    device = logits.device
    temps = [s.params.temperature for s in seqs]
    if any(t != 1.0 for t in temps):
        logits = logits / to_device(temps, device, logits.dtype)[:, None]
    top_ks = [min(s.params.top_k, logits.shape[1]) for s in seqs]
    if any(top_ks):
        kth = torch.topk(logits, max(top_ks), dim=-1).values
        idx = to_device([max(k, 1) - 1 for k in top_ks], device, torch.long)
        threshold = kth.gather(1, idx[:, None])
        if not all(top_ks):  # rows without top-k keep every token
            keeps_all = to_device([k == 0 for k in top_ks], device, torch.bool)[:, None]
            threshold = torch.where(keeps_all, float("-inf"), threshold)
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    top_ps = [s.params.top_p for s in seqs]
    if any(p < 1.0 for p in top_ps):
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - to_device(top_ps, device, logits.dtype))[:, None]
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return logits


def exponential_noise(probs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """E ~ Exp(1) shaped like probs: one batched draw for unseeded rows, then each seeded row
    redrawn from its own generator (one small kernel per seeded row, none per unseeded row)."""
    noise = torch.empty_like(probs).exponential_()
    for row, seq in enumerate(seqs):
        if seq.generator is not None:
            noise[row].exponential_(generator=seq.generator)
    return noise


def sample(logits: torch.Tensor, seqs: list[Sequence], history: torch.Tensor | None = None) -> list[int]:
    """logits: [B, V] for seqs (row b is seqs[b]); history: [B, L] each row's token ids, needed
    when a row has a repetition penalty (see TokenHistory). Returns one token id per sequence.
    fp32 logits are edited in place (no [B, V] copy per step): callers must not reuse them."""
    logits = logits.float()
    penalties = [s.params.repetition_penalty for s in seqs]
    if any(p != 1.0 for p in penalties):
        if history is None:
            raise ValueError("a repetition penalty needs the rows' token history")
        apply_repetition_penalty(logits, to_device(penalties, logits.device, logits.dtype), history)
    if any(s.params.no_repeat_ngram_size > 0 for s in seqs):
        apply_no_repeat_ngram(logits, seqs)
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampled:
        everyone = len(sampled) == len(seqs)  # the usual case: one SamplingParams per call
        rows = None if everyone else to_device(sampled, logits.device, torch.long)
        chosen = [seqs[i] for i in sampled]
        probs = warp(logits if everyone else logits[rows], chosen).softmax(dim=-1)
        # argmax(p / E) with E ~ Exp(1) is an exact draw from p (the exponential race).
        drawn = (probs / exponential_noise(probs, chosen)).argmax(dim=-1)
        tokens = drawn if everyone else tokens.index_copy(0, rows, drawn)
    return tokens.tolist()
