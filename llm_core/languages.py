"""Language codes and names as tasks and manifests spell them: "fr" and "French" are one language."""

from __future__ import annotations

LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "pl": "Polish", "ru": "Russian", "ja": "Japanese",
    "zh": "Chinese", "ko": "Korean", "sv": "Swedish", "da": "Danish", "fi": "Finnish",
    "cs": "Czech", "tr": "Turkish", "uk": "Ukrainian", "ca": "Catalan", "ro": "Romanian",
}


def language_name(code_or_name: str) -> str:
    return LANGUAGE_NAMES.get(code_or_name.strip().lower(), code_or_name.strip())
