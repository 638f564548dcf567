"""Few-shot examples: the pool a task carries, and which of them each row gets.

A task may carry a pool of solved examples (text -> output). Each row gets at most `k` of them,
shown to the model as earlier chat turns (llm_core.tasks.build_messages):
- `similar`: the k examples whose texts are nearest the row's by TF-IDF cosine (scikit-learn,
  fitted on the pool's texts), in ascending similarity, so the nearest sits next to the row;
  ties go to the earlier example in the pool.
- `random`: k examples drawn for the row by a generator seeded with sha256(seed, the row's text),
  so a row gets the same draw in any shard, process, rerun or resume.
An example whose text is the row's own text (whitespace collapsed) is never picked for that row:
the answer would leak into the prompt. For translate, an example is used only for rows of its
target language.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm_core.languages import language_name

SELECTIONS = ("similar", "random")
# The pool travels inside the TaskSpec to every worker with every shard: bounded, so it stays small.
MAX_POOL = 2000
MAX_K = 32
# Where the pool is cut before a tokenizer is at hand (the driver): characters per allowed token.
CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True)
class Example:
    text: str
    output: str
    target_language: str | None = None  # translate: the language `output` is in


@dataclass(frozen=True)
class FewShotSpec:
    examples: tuple[Example, ...]
    k: int = 3
    select: str = "similar"
    seed: int = 0
    # Each example's text and output are cut to this many tokens of the model (llm_core.prompting).
    max_example_tokens: int = 256

    def __post_init__(self):
        object.__setattr__(self, "examples", tuple(self.examples))
        if not self.examples:
            raise ValueError("few-shot: the example pool is empty")
        if len(self.examples) > MAX_POOL:
            raise ValueError(f"few-shot: {len(self.examples)} examples; at most {MAX_POOL}")
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"few-shot: k must be between 1 and {MAX_K}, not {self.k}")
        if self.select not in SELECTIONS:
            raise ValueError(f"few-shot: select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        if self.max_example_tokens < 1:
            raise ValueError("few-shot: max_example_tokens must be positive")


def same_text(text: str) -> str:
    """The form two texts are compared in for the leakage rule (and seeded by): whitespace collapsed."""
    return " ".join(text.split())


def row_seed(seed: int, text: str) -> int:
    """The seed of one row's random draw: stable across processes (never Python's salted hash())."""
    digest = hashlib.sha256(f"{seed}\x00{same_text(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _language_key(language: str | None) -> str | None:
    return language_name(language).lower() if language and language.strip() else None


def select_examples(spec: FewShotSpec, texts: Sequence[str], languages: Sequence[str | None] | None = None,
                    default_language: str | None = None) -> list[tuple[Example, ...]]:
    """The examples each row gets, in prompt order (at most spec.k; fewer when fewer are eligible).

    `languages`: each row's target language (translate), else `default_language` for every row;
    an example without a target_language is taken to be in `default_language`."""
    pool = spec.examples
    own = [same_text(e.text) for e in pool]
    example_keys = [_language_key(e.target_language or default_language) for e in pool]
    row_keys = [_language_key((languages[i] if languages is not None else None) or default_language)
                for i in range(len(texts))]
    eligible_by_key: dict[str | None, np.ndarray] = {}
    for key in set(row_keys):
        eligible_by_key[key] = np.array([key is None or ek is None or ek == key for ek in example_keys])
    if spec.select == "random":
        return [_random_pick(spec, text, eligible_by_key[key], own) for text, key in zip(texts, row_keys)]
    similarity = _tfidf_index(tuple(e.text for e in pool)).similarities(texts)
    picks = []
    for n, (text, key) in enumerate(zip(texts, row_keys)):
        allowed = eligible_by_key[key] & _not_the_row(own, text)
        picks.append(_most_similar(spec, similarity[n], allowed))
    return picks


def _not_the_row(own: list[str], text: str) -> np.ndarray:
    row = same_text(text)
    return np.array([o != row for o in own])


def _random_pick(spec: FewShotSpec, text: str, eligible: np.ndarray, own: list[str]) -> tuple[Example, ...]:
    allowed = np.flatnonzero(eligible & _not_the_row(own, text)).tolist()
    rng = random.Random(row_seed(spec.seed, text))
    return tuple(spec.examples[i] for i in rng.sample(allowed, min(spec.k, len(allowed))))


def _most_similar(spec: FewShotSpec, scores: np.ndarray, allowed: np.ndarray) -> tuple[Example, ...]:
    candidates = np.flatnonzero(allowed)
    # A stable sort on the negated score: equal scores keep pool order.
    ranked = candidates[np.argsort(-scores[candidates], kind="stable")][: spec.k]
    return tuple(spec.examples[i] for i in ranked[::-1])  # the nearest last, next to the row


class _TfidfIndex:
    def __init__(self, texts: tuple[str, ...]):
        # scikit-learn loads only for `select: similar` (a second to import).
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.size = len(texts)
        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        try:
            self.matrix = self.vectorizer.fit_transform(texts)
        except ValueError:  # no word in any example text (only punctuation or one-letter words)
            self.vectorizer = None

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """[rows, pool] cosine similarities (TF-IDF rows are L2-normalised: a dot product)."""
        if self.vectorizer is None or not len(texts):
            return np.zeros((len(texts), self.size))
        return (self.vectorizer.transform(texts) @ self.matrix.T).toarray()


@functools.lru_cache(maxsize=4)
def _tfidf_index(texts: tuple[str, ...]) -> _TfidfIndex:
    """Fitted once per pool in a process (an actor runs many shards of one job)."""
    return _TfidfIndex(texts)
