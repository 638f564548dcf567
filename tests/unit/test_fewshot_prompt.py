"""The few-shot prompt as the model reads it (tiny model's ChatML template, real tokenizer): each
example's answer is a whole, closed assistant turn, so the model sees where an answer stops; the
prompt without examples is the zero-shot prompt, token for token."""

from __future__ import annotations

import pytest

from llm_core.fewshot import Example
from llm_core.prompting import chat_ids, fit_prompt, shorten_example
from llm_core.tasks import TaskSpec, build_messages, user_message
from llm_core.tokenizer import ModelTokenizer

EXAMPLES = (Example("Vim is a highly configurable text editor built to make editing efficient.", "Vi IMproved"),
            Example("This package contains the development headers of libjson-c.",
                    "JSON manipulation library - development files"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return ModelTokenizer(tiny_dir)


@pytest.mark.parametrize("spec", [TaskSpec("summarize", style="headline"), TaskSpec("translate", target_language="de"),
                                  TaskSpec("classify", labels=("Vi IMproved", "JSON manipulation library - "
                                                                              "development files")),
                                  TaskSpec("generate", prompt_template="Q: {text}\nA:")])
def test_each_example_answer_is_a_whole_closed_assistant_turn(tokenizer, spec):
    ids = chat_ids(tokenizer, spec, "a row", None, EXAMPLES)
    rendered = tokenizer.apply_chat_template(build_messages(spec, "a row", None, EXAMPLES))
    assert ids == tokenizer.encode(rendered)
    end_of_turn = tokenizer.eos_token_ids[0]
    assert ids.count(end_of_turn) == 2 * len(EXAMPLES) + 1  # every turn closed but the one to answer
    for example in EXAMPLES:
        turn = f"<|im_start|>assistant\n{example.output}<|im_end|>\n<|im_start|>user\n"
        assert turn in rendered  # the output whole, then end-of-turn, then the next question
    assert rendered.endswith(f"{user_message(spec, 'a row')}<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.index(EXAMPLES[0].output) < rendered.index(EXAMPLES[1].output) < rendered.index("a row")


def test_without_examples_the_prompt_is_the_zero_shot_prompt(tokenizer):
    spec = TaskSpec("summarize", style="headline")
    zero_shot = tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message(spec, "a row")}]))
    assert chat_ids(tokenizer, spec, "a row", None) == zero_shot
    prompt = fit_prompt(tokenizer, spec, "a row", None, EXAMPLES, max_input=len(zero_shot), on_long="error")
    assert prompt.ids == zero_shot and prompt.examples == ()  # examples left out whole, never cut


def test_the_token_cap_cuts_long_example_texts_not_short_outputs(tokenizer):
    long = Example("word " * 200 + "ENDMARK", "a short synopsis")
    short = shorten_example(tokenizer, long, 32)
    assert short.output == long.output
    assert "ENDMARK" not in short.text and len(tokenizer.encode(short.text)) <= 32
    assert shorten_example(tokenizer, EXAMPLES[1], 64) is EXAMPLES[1]
