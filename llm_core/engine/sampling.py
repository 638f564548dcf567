"""Generation settings shared by every engine (native and transformers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.hashing import stable_json_sha256

# A row's seed is cut to 60 bits so that seed + completion index stays within torch's 64-bit seeds.
_ROW_SEED_BITS = 60


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt. temperature == 0 means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; >1 discourages tokens already in prompt+output
    no_repeat_ngram_size: int = 0  # 0 = off
    stop: tuple[str, ...] = ()  # stop strings (not included in the output text)
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's EOS
    ignore_eos: bool = False  # benchmarks generate exactly max_new_tokens
    seed: int | None = None
    n: int = 1  # completions per prompt (completion j of a seeded prompt draws from seed + j)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def with_updates(self, **changes) -> "SamplingParams":
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return SamplingParams(**values)


@dataclass
class Completion:
    """One generated continuation. finish_reason is 'stop' (EOS, stop token or string) or 'length'."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    extra: dict = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def row_seed(seed: int, row_id: Any) -> int:
    """The seed of one input row: a hash of (the job's seed, the row's id), so a row's sampled
    completions are the same whatever shard, batch or resume it is generated in, and rows with the
    same text still draw differently. Ids are compared as the plan reads them (its id type)."""
    return int(stable_json_sha256([seed, row_id]), 16) >> (256 - _ROW_SEED_BITS)
