"""The sampler's logits processing equals transformers' processors (same order, same maths)."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llm_core.engine.native.sampler import apply_no_repeat_ngram, apply_repetition_penalty, sample, warp
from llm_core.engine.native.token_history import TokenHistory
from llm_core.engine.native.sequence import Sequence
from llm_core.engine.sampling import SamplingParams


def seqs_for(tokens: list[list[int]], **settings) -> list[Sequence]:
    params = SamplingParams(**settings)
    return [Sequence(t, params, i, 0, "cpu") for i, t in enumerate(tokens)]


def test_warp_matches_temperature_top_k_top_p():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    seqs = seqs_for([[1]] * 3, temperature=0.7, top_k=10, top_p=0.8)
    want = logits.clone()
    for proc in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        want = proc(None, want)
    assert torch.equal(warp(logits.clone(), seqs), want)


def test_warp_handles_different_settings_per_row():
    logits = torch.randn(2, 40, generator=torch.Generator().manual_seed(1))
    rows = seqs_for([[1]], temperature=1.0, top_k=5) + seqs_for([[1]], temperature=2.0, top_p=0.5)
    got = warp(logits.clone(), rows)
    assert torch.equal(got[0:1], TopKLogitsWarper(5)(None, logits[0:1].clone()))
    want = TopPLogitsWarper(0.5)(None, TemperatureLogitsWarper(2.0)(None, logits[1:2].clone()))
    assert torch.equal(got[1:2], want)


def test_repetition_penalty_matches_transformers():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
    tokens = [[1, 4, 4, 9, 20], [3, 3, 29]]
    history = TokenHistory(2, 8, "cpu")
    for slot, t in enumerate(tokens):
        history.start(slot, t)
    got = logits.clone()
    apply_repetition_penalty(got, torch.tensor([1.3, 1.3]), history.rows(torch.arange(2), 5))
    proc = RepetitionPenaltyLogitsProcessor(1.3)
    for row, t in enumerate(tokens):
        assert torch.equal(got[row : row + 1], proc(torch.tensor([t]), logits[row : row + 1].clone()))


def test_token_history_follows_new_tokens_and_slot_moves():
    history = TokenHistory(3, 5, "cpu")
    history.start(0, [1, 2])
    history.start(2, [5])
    history.add(torch.tensor([0, 2]), torch.tensor([2, 1]), torch.tensor([7, 6]))
    history.move(2, 1, length=2)
    assert history.rows(torch.tensor([0, 1]), 4).tolist() == [[1, 2, 7, 1], [5, 6, 5, 5]]
    history.start(0, [3])  # a new sequence in slot 0 forgets the old one
    assert history.rows(torch.tensor([0]), 5).tolist() == [[3, 3, 3, 3, 3]]


def test_penalty_without_history_is_refused():
    seqs = seqs_for([[1, 2]], repetition_penalty=1.2)
    with pytest.raises(ValueError, match="token history"):
        sample(torch.randn(1, 10), seqs)


def test_no_repeat_ngram_matches_transformers_step_by_step():
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 6, (40,), generator=gen).tolist()
    seq = seqs_for([tokens[:10]], no_repeat_ngram_size=3)[0]
    proc = NoRepeatNGramLogitsProcessor(3)
    for t in tokens[10:]:  # the incremental n-gram index must agree at every step
        logits = torch.randn(1, 6, generator=gen)
        got = logits.clone()
        apply_no_repeat_ngram(got, [seq])
        assert torch.equal(got, proc(torch.tensor([seq.tokens]), logits.clone()))
        seq.output.append(t)


def test_no_repeat_ngram_bans_per_row_in_one_batch():
    gen = torch.Generator().manual_seed(4)
    tokens = [torch.randint(0, 5, (20,), generator=gen).tolist() for _ in range(3)]
    seqs = seqs_for(tokens[:2], no_repeat_ngram_size=2) + seqs_for(tokens[2:], no_repeat_ngram_size=0)
    logits = torch.randn(3, 5, generator=gen)
    got = logits.clone()
    apply_no_repeat_ngram(got, seqs)
    proc = NoRepeatNGramLogitsProcessor(2)
    for row in range(2):
        assert torch.equal(got[row : row + 1], proc(torch.tensor([tokens[row]]), logits[row : row + 1].clone()))
    assert torch.equal(got[2], logits[2])  # size 0: untouched
