"""Lead-sentence summary: the first sentence of the text, the classic extractive baseline.

Debian descriptions usually open with a defining sentence ("Vim is an almost compatible
version of the UNIX editor Vi."), so this is a fair floor for a model to beat. The splitter
is a small rule set rather than a trained model: a sentence ends at ".", "!" or "?" followed
by whitespace, unless the word before the period is a known abbreviation ("e.g.", "Dr.").
Single capitals are not taken for initials: in Debian text "written in C. It ..." ends a
sentence far more often than "J. Smith" continues one. A lowercase word may open the next sentence, since
Debian sentences often start with a package name ("... the wodim program. genisoimage ...").
Paragraph breaks and list items also end it, and text without any terminator is returned
whole (capped at `max_words`) rather than lost.
"""

from __future__ import annotations

import re

# Lowercased, without the final period. Those that commonly end a sentence ("etc.") are left
# out: after them a capital letter more often starts a new sentence than not.
_ABBREVIATIONS = frozenset(
    {
        "e.g", "i.e", "eg", "ie", "cf", "vs", "viz", "approx", "incl", "esp", "resp",
        "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc", "ltd", "co", "corp",
        "no", "nos", "vol", "ver", "rev", "fig", "sec", "ch", "pp", "ed", "eds",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)

# Abbreviations that also end sentences: only before a lowercase word are they taken as
# mid-sentence ("flash drives, etc. It is" ends; "files, etc. and" does not).
_ABBREVIATIONS_BEFORE_LOWERCASE = frozenset({"etc", "al"})

# A candidate end: terminator(s), optional closing quote/bracket, then whitespace.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|\n\s*[*\-•]\s")
_WORD_BEFORE_PERIOD = re.compile(r"(\S+)\.$")


def _is_abbreviation(text_before_end: str, next_text: str) -> bool:
    match = _WORD_BEFORE_PERIOD.search(text_before_end)
    if not match:
        return False
    word = match.group(1).lstrip("(\"'[").lower()
    if next_text[:1].islower() and word in _ABBREVIATIONS_BEFORE_LOWERCASE:
        return True
    return word in _ABBREVIATIONS


def lead_sentence(text: str, max_words: int = 60) -> str:
    """The first sentence of `text`, whitespace collapsed; "" for blank text."""
    text = text.strip()
    paragraph_break = _PARAGRAPH_BREAK.search(text)
    if paragraph_break:
        text = text[: paragraph_break.start()]
    for end in _SENTENCE_END.finditer(text):
        rest = text[end.end() :]
        if not rest:
            break
        terminator = end.group(0).rstrip()
        if terminator.endswith(".") and _is_abbreviation(text[: end.start() + 1], rest):
            continue
        text = text[: end.start() + len(terminator)]
        break
    words = text.split()
    return " ".join(words[:max_words])


def lead_sentence_summaries(texts: list[str], max_words: int = 60) -> list[str]:
    return [lead_sentence(text, max_words) for text in texts]
