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


def test_a_sampling_step_reads_the_device_once():
    """Only the final token list comes back to the host: which warpers run is decided from the
    Python params and masks use torch.where (on CUDA every other read is a sync per step)."""
    from benchmarks.host_reads import HostReads

    logits = torch.randn(5, 64, generator=torch.Generator().manual_seed(5))
    rows = (seqs_for([[1]], temperature=0.9, top_k=8) + seqs_for([[1]], temperature=0.7, top_p=0.8)
            + seqs_for([[1]]) + seqs_for([[1]], temperature=1.0, seed=3)
            + seqs_for([[1, 2, 1]], temperature=1.2, top_k=4, top_p=0.9, no_repeat_ngram_size=2))
    with HostReads() as reads:
        tokens = sample(logits.clone(), rows)
    assert len(tokens) == 5
    assert dict(reads.counts) == {"tolist": 1}


def test_seeded_rows_do_not_depend_on_their_neighbours():
    logits = torch.randn(4, 80, generator=torch.Generator().manual_seed(6))
    seeded = seqs_for([[1]], temperature=1.0, top_p=0.95, seed=42)
    alone = [sample(logits[2:3].clone(), seqs_for([[1]], temperature=1.0, top_p=0.95, seed=42))[0]
             for _ in range(2)]
    assert alone[0] == alone[1]
    mixed = seqs_for([[1]], temperature=1.0) + seqs_for([[1]]) + seeded + seqs_for([[1]], temperature=0.5, top_k=3)
    assert sample(logits.clone(), mixed)[2] == alone[0]


def test_only_seeded_rows_get_a_generator():
    assert seqs_for([[1]], temperature=1.0)[0].generator is None  # the batched draw serves it
    assert seqs_for([[1]], temperature=1.0, seed=1)[0].generator is not None
    assert seqs_for([[1]], seed=1)[0].generator is None  # greedy never draws


def test_unseeded_rows_draw_from_the_real_distribution():
    # Two tokens with probabilities 0.8 / 0.2: the batched exponential race must honour them.
    logits = torch.log(torch.tensor([[0.8, 0.2]])).repeat(4000, 1)
    torch.manual_seed(0)
    tokens = sample(logits, seqs_for([[1]] * 4000, temperature=1.0))
    assert abs(tokens.count(0) / 4000 - 0.8) < 0.03
