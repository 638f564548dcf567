"""Task prompts and output cleaning (no model needed)."""

from __future__ import annotations

import pytest

from llm_core.tasks import TaskSpec, build_messages, clean_output, default_sampling, match_label, user_message


def test_prompts_name_the_task_and_keep_the_text():
    text = "Vim is a text editor {with braces}."
    assert "one-sentence summary" in user_message(TaskSpec("summarize"), text)
    msg = user_message(TaskSpec("translate", target_language="fr"), text)
    assert "to French" in msg and text in msg
    msg = user_message(TaskSpec("classify", labels=("net", "utils")), text)
    assert "net, utils" in msg and text in msg
    assert user_message(TaskSpec("generate", prompt_template="Q: {text} A:"), text) == f"Q: {text} A:"


def test_system_prompt_and_per_row_language():
    msgs = build_messages(TaskSpec("translate", system_prompt="Be exact."), "hi", target_language="de")
    assert msgs[0] == {"role": "system", "content": "Be exact."}
    assert "to German" in msgs[1]["content"]


@pytest.mark.parametrize("raw,expected", [
    ("The one-sentence summary: The one-sentence summary is: \"A Python module.\"", "A Python module."),
    ("Here's a one-line summary of the text:\n\nVim is an editor. It is old.", "Vim is an editor."),
    ("Summary: Foo is e.g. bar. Next Sentence here.", "Foo is e.g. bar."),
    ("* This package provides a library.", "This package provides a library."),
    ("\"Quoted whole\"", "Quoted whole"),
    ("Vim: the editor. More.", "Vim: the editor."),
    ("Here's a one-line summary:", ""),
])
def test_summary_cleaning(raw, expected):
    assert clean_output(TaskSpec("summarize"), raw) == expected


def test_generate_output_is_left_alone():
    assert clean_output(TaskSpec("generate"), "  Summary: keep\n\nall of it ") == "Summary: keep\n\nall of it"


def test_match_label():
    labels = ("net", "utils", "python")
    assert match_label(labels, "utils.") == "utils"
    assert match_label(labels, "Python") == "python"
    assert match_label(labels, "The category is net") == "net"
    assert match_label(labels, "net or utils") is None


def test_task_defaults_fight_loops():
    assert default_sampling("summarize")["repetition_penalty"] > 1.0
    assert default_sampling("classify")["repetition_penalty"] == 1.0


def test_headline_style():
    spec = TaskSpec("summarize", style="headline")
    assert "headline (at most 10 words)" in user_message(spec, "Vim is an editor.")
    assert clean_output(spec, "Headline: Vim, a text editor\n\nMore text.") == "Vim, a text editor"
    assert clean_output(spec, "```python\nA fast JSON parser. It is good.") == "A fast JSON parser."
