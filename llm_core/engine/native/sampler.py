"""Turn the last-position logits of a batch into next tokens.

Order and semantics follow transformers' generate so greedy output can be compared token for
token: repetition penalty and no-repeat-ngram bans first, then temperature, top-k, top-p.
Each sampled sequence draws from its own torch.Generator, so a seed gives the same output
whatever else is in the batch.
"""

from __future__ import annotations

import torch

from llm_core.engine.native.sequence import Sequence


def apply_repetition_penalty(logits: torch.Tensor, penalties: torch.Tensor, history: torch.Tensor) -> None:
    """transformers' rule for every row at once: the logit of an id in the row's history is
    divided by its penalty when positive, multiplied when negative. penalties [B]; history
    [B, L] token ids (repeats are harmless: every copy gets the same value)."""
    p = penalties[:, None]
    scores = logits.gather(1, history)
    logits.scatter_(1, history, torch.where(scores < 0, scores * p, scores / p))


def banned_ngram_tokens(seq: Sequence) -> list[int]:
    """Tokens that would repeat an n-gram already present in prompt + output."""
    n = seq.params.no_repeat_ngram_size
    tokens = seq.tokens
    if len(tokens) + 1 < n:
        return []
    index = seq.ngram_index
    if index is None:
        index = seq.ngram_index = {"upto": 0, "next": {}}
    # Extend the index with the n-grams completed since the last step.
    for end in range(max(index["upto"], n), len(tokens) + 1):
        prefix = tuple(tokens[end - n : end - 1])
        index["next"].setdefault(prefix, set()).add(tokens[end - 1])
    index["upto"] = len(tokens) + 1
    return list(index["next"].get(tuple(tokens[len(tokens) - n + 1 :]), ()))


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
        logits[torch.tensor(rows, device=device), torch.tensor(banned, device=device)] = float("-inf")


def warp(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, top-k and top-p for rows that sample (logits: [B, V], fp32)."""
    device = logits.device
    temps = torch.tensor([s.params.temperature for s in seqs], device=device)
    logits = logits / temps[:, None]
    top_ks = [min(s.params.top_k, logits.shape[1]) for s in seqs]
    if any(top_ks):
        kth = torch.topk(logits, max(top_ks), dim=-1).values
        idx = torch.tensor([max(k, 1) - 1 for k in top_ks], device=device)
        threshold = kth.gather(1, idx[:, None])
        threshold[torch.tensor(top_ks, device=device) == 0] = float("-inf")
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    top_ps = torch.tensor([s.params.top_p for s in seqs], device=device)
    if bool((top_ps < 1.0).any()):
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_ps)[:, None]
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return logits


def sample(logits: torch.Tensor, seqs: list[Sequence], history: torch.Tensor | None = None) -> list[int]:
    """logits: [B, V] for seqs (row b is seqs[b]); history: [B, L] each row's token ids, needed
    when a row has a repetition penalty (see TokenHistory). Returns one token id per sequence.
    fp32 logits are edited in place (no [B, V] copy per step): callers must not reuse them."""
    logits = logits.float()
    penalties = [s.params.repetition_penalty for s in seqs]
    if any(p != 1.0 for p in penalties):
        if history is None:
            raise ValueError("a repetition penalty needs the rows' token history")
        apply_repetition_penalty(logits, torch.tensor(penalties, device=logits.device), history)
    if any(s.params.no_repeat_ngram_size > 0 for s in seqs):
        apply_no_repeat_ngram(logits, seqs)
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        probs = warp(logits[rows], [seqs[i] for i in sampled]).softmax(dim=-1)
        # argmax(p / E) with E ~ Exp(1) is an exact draw from p (the exponential race).
        noise = torch.stack(
            [torch.empty_like(probs[0]).exponential_(generator=seqs[i].generator) for i in sampled]
        )
        tokens[rows] = (probs / noise).argmax(dim=-1)
    return tokens.tolist()
