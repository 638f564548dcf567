"""The shared no-repeat-ngram rule (llm_core.engine.ngram): against a brute-force reading of the
rule, the same whether the index grows a token at a time or is built at once, and the same
bans in the native sampler and the vLLM logits processor that both use it."""

from __future__ import annotations

import random

import pytest
import torch

from llm_core.engine.native.sampler import banned_ngram_tokens
from llm_core.engine.native.sequence import Sequence
from llm_core.engine.ngram import NgramIndex
from llm_core.engine.sampling import SamplingParams
from llm_core.engine.vllm_engine import NgramBan


def brute_force(tokens: list[int], n: int) -> set[int]:
    """Every token that follows, somewhere in `tokens`, the last n - 1 tokens."""
    if len(tokens) < n - 1:
        return set()
    tail = tokens[len(tokens) - n + 1:]
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == tail}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_the_index_bans_what_the_rule_says_grown_or_built_at_once(n, seed):
    rng = random.Random(seed * 10 + n)
    tokens = [rng.randrange(5) for _ in range(rng.randrange(0, 6))]  # a prompt, possibly shorter than n
    grown = NgramIndex(n)
    for _ in range(40):
        expected = brute_force(tokens, n)
        assert set(grown.banned(tokens)) == expected
        assert set(NgramIndex(n).banned(tokens)) == expected
        tokens.append(rng.randrange(5))  # a small vocabulary: n-grams repeat often
        if rng.random() < 0.2:  # a step of several tokens (a prompt taken at once, a resumed row)
            tokens += [rng.randrange(5) for _ in range(rng.randrange(2, 5))]


def test_a_repeat_is_banned_only_after_its_prefix():
    index = NgramIndex(3)
    assert index.banned([7, 8]) == []
    assert index.banned([7, 8, 9, 7]) == []
    assert index.banned([7, 8, 9, 7, 8]) == [9]


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        NgramIndex(0)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_native_sampler_and_vllm_processor_ban_alike(n):
    rng = random.Random(n)
    prompt = [rng.randrange(6) for _ in range(12)]
    seq = Sequence(prompt, SamplingParams(no_repeat_ngram_size=n), 0, 0, "cpu")
    ban = NgramBan(n)
    for _ in range(30):
        logits = ban(prompt, seq.output, torch.zeros(6))
        from_vllm = {i for i in range(6) if logits[i] == float("-inf")}
        assert from_vllm == set(banned_ngram_tokens(seq)) == brute_force(seq.tokens, n)
        seq.output.append(rng.choice([i for i in range(6) if i not in from_vllm] or [0]))
