"""Few-shot prompts through the LLM facade on a tiny random Llama (real weights, real tokenizer):
examples as earlier turns, cut to their cap, left out before a row is cut; the pre-flight counts
them as the workers build them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifest import parse_manifest
from jobs.run.preflight import preflight
from llm_core.engine.sampling import SamplingParams
from llm_core.fewshot import Example, FewShotSpec
from llm_core.llm import LLM
from llm_core.prompting import chat_ids
from llm_core.tasks import TaskSpec

POOL = (Example("The quick brown fox jumps over the lazy dog.", "A fox jumps."),
        Example("Debian is a free operating system made of packages.", "Debian is free."),
        Example("A batch job reads Parquet shards and writes results.", "A batch job."))


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(tiny_dir, engine="native", batch_size=4)


def spy_prompts(llm, monkeypatch, method: str) -> list:
    seen: list = []
    real = getattr(llm.engine, method)

    def spy(prompts, *args, **kwargs):
        seen.extend(list(p) for p in prompts)
        return real(prompts, *args, **kwargs)

    monkeypatch.setattr(llm.engine, method, spy)
    return seen


def test_examples_are_earlier_turns_of_the_row_prompt(llm, monkeypatch):
    spec = TaskSpec("summarize", fewshot=FewShotSpec(POOL, k=2, select="similar"))
    seen = spy_prompts(llm, monkeypatch, "generate")
    row = "Debian packages are made by volunteers."
    [result] = llm.run_task(spec, [row], SamplingParams(max_new_tokens=2))
    [prompt] = seen
    expected = chat_ids(llm.tokenizer, spec, row, None, (POOL[0], POOL[1]))  # the nearest (Debian) last
    assert prompt == expected and result.prompt_tokens == len(expected)
    text = llm.tokenizer.decode(prompt)
    assert text.index("A fox jumps.") < text.index("Debian is free.") < text.index(row)


def test_a_row_never_sees_its_own_example(llm, monkeypatch):
    spec = TaskSpec("summarize", fewshot=FewShotSpec(POOL, k=3, select="random", seed=1))
    seen = spy_prompts(llm, monkeypatch, "generate")
    llm.run_task(spec, [POOL[1].text], SamplingParams(max_new_tokens=1))
    assert "Debian is free." not in llm.tokenizer.decode(seen[0])
    assert "A fox jumps." in llm.tokenizer.decode(seen[0])


def test_examples_are_cut_to_their_token_cap(llm, monkeypatch):
    long = Example("word " * 300 + "ENDMARK", "short answer")
    spec = TaskSpec("summarize", fewshot=FewShotSpec((long,), k=1, max_example_tokens=16))
    seen = spy_prompts(llm, monkeypatch, "generate")
    llm.run_task(spec, ["a row"], SamplingParams(max_new_tokens=1))
    bare = chat_ids(llm.tokenizer, spec, "a row", None, (Example("x", "short answer"),))
    assert "ENDMARK" not in llm.tokenizer.decode(seen[0])
    assert len(seen[0]) <= len(bare) + 16


@pytest.mark.parametrize("on_long", ["truncate", "error"])
def test_examples_are_left_out_before_a_row_is_cut_or_refused(llm, monkeypatch, on_long):
    spec = TaskSpec("summarize", fewshot=FewShotSpec(POOL, k=3, select="similar"))
    row = "A long row about Debian packages " * 4
    alone = chat_ids(llm.tokenizer, spec, row, None)
    one_more = chat_ids(llm.tokenizer, spec, row, None, (POOL[1],))
    seen = spy_prompts(llm, monkeypatch, "generate")
    [result] = llm.run_task(spec, [row], SamplingParams(max_new_tokens=1), max_input_tokens=len(one_more),
                            on_long_input=on_long)
    assert result.error is None or result.error == "model produced an empty output"
    assert seen == [one_more]  # the nearest example kept, the others left out, the row whole
    [result] = llm.run_task(spec, [row], SamplingParams(max_new_tokens=1), max_input_tokens=len(alone),
                            on_long_input=on_long)
    assert seen[-1] == alone


def write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_the_preflight_counts_the_examples_tokens(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "in" / "a.parquet", id=["a", "b"], text=["Debian packages.", "A fox."])

    def plan_for(examples, **params):
        task = {"kind": "summarize", **({"examples": examples} if examples else {})}
        m = parse_manifest({"name": "t", "task": task, "model": str(tiny_dir), "input": {"uri": str(tmp_path / "in")},
                            "output": {"uri": str(tmp_path / "out")}, "params": {"max_new_tokens": 8, **params}})
        return preflight(m, probe_output=False)

    items = [{"text": e.text, "output": e.output} for e in POOL]
    zero, few = plan_for(None), plan_for({"items": items, "k": 2})
    assert zero.ok and few.ok, few.problems
    assert few.est_prompt_tokens > zero.est_prompt_tokens + 2 * 20
    assert any("with up to 2 example(s)" in c for c in few.checked)
    tight = plan_for({"items": items, "k": 3}, max_input_tokens=zero.est_prompt_tokens // 2 + 20)
    assert tight.ok and any(w.startswith("task.examples: 2 of 2 sampled rows fit fewer") for w in tight.warnings)
