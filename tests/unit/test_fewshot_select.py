"""Few-shot selection (llm_core.fewshot): nearest by TF-IDF, seeded random draws, the leakage rule,
translate languages, the pool's bounds; and the examples as chat turns (llm_core.tasks)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from llm_core.fewshot import MAX_POOL, Example, FewShotSpec, row_seed, select_examples
from llm_core.tasks import TaskSpec, build_messages

POOL = (
    Example("the kernel network driver for wireless cards", "net"),
    Example("a python library to parse yaml files", "python"),
    Example("command line tools to copy files", "utils"),
    Example("an email client for the terminal", "mail"),
    Example("python bindings for the network stack", "python"),
)


def texts_of(picks):
    return [[e.text for e in pick] for pick in picks]


def test_similar_picks_the_nearest_with_the_nearest_next_to_the_row():
    spec = FewShotSpec(POOL, k=2, select="similar")
    [pick] = select_examples(spec, ["a python library for yaml"])
    assert [e.output for e in pick] == ["python", "python"]
    assert pick[-1].text == "a python library to parse yaml files"  # the nearest last


def test_a_row_sharing_no_word_gets_the_first_examples_in_pool_order():
    spec = FewShotSpec(POOL, k=2, select="similar")
    assert texts_of(select_examples(spec, ["zzz qqq"])) == [[POOL[1].text, POOL[0].text]]


@pytest.mark.parametrize("select", ["similar", "random"])
def test_an_example_identical_to_the_row_is_never_picked(select):
    spec = FewShotSpec(POOL, k=len(POOL), select=select)
    row = "  an email client   for the\nterminal "  # the same text, other whitespace
    [pick] = select_examples(spec, [row])
    assert POOL[3] not in pick and len(pick) == len(POOL) - 1


@pytest.mark.parametrize("select", ["similar", "random"])
def test_k_bounds_the_examples_and_a_small_pool_gives_fewer(select):
    assert all(len(p) == 3 for p in select_examples(FewShotSpec(POOL, k=3, select=select), ["x y", "python"]))
    small = FewShotSpec(POOL[:2], k=5, select=select)
    assert [len(p) for p in select_examples(small, ["python yaml"])] == [2]


def test_random_draws_are_seeded_per_row_whatever_the_batch():
    spec = FewShotSpec(POOL, k=2, select="random", seed=7)
    rows = [f"row number {i} about packages" for i in range(12)]
    alone = [select_examples(spec, [r])[0] for r in rows]
    together = select_examples(spec, rows)
    reversed_batch = select_examples(spec, rows[::-1])[::-1]
    assert alone == together == reversed_batch
    assert len({tuple(p) for p in together}) > 1  # rows get different draws
    other_seed = select_examples(FewShotSpec(POOL, k=2, select="random", seed=8), rows)
    assert other_seed != together


def test_random_draws_are_the_same_in_another_process():
    spec = FewShotSpec(POOL, k=3, select="random", seed=3)
    rows = ["first row", "second row", "a third one"]
    here = texts_of(select_examples(spec, rows))
    code = (
        "import json, pickle, sys\n"
        "from llm_core.fewshot import select_examples\n"
        "spec, rows = pickle.loads(sys.stdin.buffer.read())\n"
        "print(json.dumps([[e.text for e in p] for p in select_examples(spec, rows)]))\n"
    )
    for salt in ("1", "2"):  # another str hash salt: the draw must not depend on it
        done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((spec, rows)), capture_output=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": salt}, cwd=Path(__file__).parents[2])
        assert json.loads(done.stdout) == here
    assert row_seed(3, "first  row") == row_seed(3, "first row")


def test_translate_examples_serve_only_rows_of_their_language():
    pool = (Example("hello", "bonjour", "fr"), Example("good morning", "guten Morgen", "German"),
            Example("thanks", "gracias", "es"))
    spec = FewShotSpec(pool, k=3, select="random")
    picks = select_examples(spec, ["good evening", "hi", "thank you"], ["French", "de", None])
    assert [[e.output for e in p] for p in picks[:2]] == [["bonjour"], ["guten Morgen"]]
    assert len(picks[2]) == 3  # a row without a language: any example
    # examples without a language are the task's language
    plain = FewShotSpec((Example("cat", "chat"), Example("dog", "Hund", "de")), k=2, select="similar")
    [pick] = select_examples(plain, ["a cat and a dog"], None, "fr")
    assert [e.output for e in pick] == ["chat"]


def test_the_pool_is_bounded_and_refuses_bad_settings():
    with pytest.raises(ValueError, match="empty"):
        FewShotSpec(())
    with pytest.raises(ValueError, match=f"at most {MAX_POOL}"):
        FewShotSpec((Example("a", "b"),) * (MAX_POOL + 1))
    with pytest.raises(ValueError, match="k must be"):
        FewShotSpec(POOL, k=0)
    with pytest.raises(ValueError, match="select must be"):
        FewShotSpec(POOL, select="nearest")


def test_a_full_pool_travels_in_the_task_spec():
    pool = tuple(Example(f"package {i} " + "description words " * 20, f"summary {i}") for i in range(MAX_POOL))
    spec = TaskSpec("summarize", fewshot=FewShotSpec(pool))
    blob = pickle.dumps(spec)
    assert pickle.loads(blob) == spec
    assert len(blob) < 2 * sum(len(e.text) + len(e.output) for e in pool)  # the texts, little more


def test_examples_become_earlier_chat_turns():
    spec = TaskSpec("translate", target_language="fr", system_prompt="Be brief.")
    examples = (Example("cat", "chat"), Example("dog", "Hund", "German"))
    messages = build_messages(spec, "bird", None, examples)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "to French" in messages[1]["content"] and messages[1]["content"].endswith("cat")
    assert "to German" in messages[3]["content"] and messages[4]["content"] == "Hund"
    assert messages[5]["content"].endswith("bird") and "to French" in messages[5]["content"]
    assert build_messages(spec, "bird") == [messages[0], messages[5]]
