"""Baselines that need no language model, to give every task a floor to beat.

Pure Python (scikit-learn for the classifier); no Ray, no GPU.
"""

from llm_core.baselines.identity_translation import identity_translation, identity_translations
from llm_core.baselines.lead_sentence import lead_sentence, lead_sentence_summaries
from llm_core.baselines.tfidf_classifier import TfidfClassifier, TfidfClassifierConfig

__all__ = [
    "TfidfClassifier",
    "TfidfClassifierConfig",
    "identity_translation",
    "identity_translations",
    "lead_sentence",
    "lead_sentence_summaries",
]
