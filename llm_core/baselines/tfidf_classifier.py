"""TF-IDF + logistic regression text classifier, the supervised baseline for `classify` jobs.

scikit-learn fits it; a fitted model is kept as plain arrays (vocabulary, idf, coefficients,
intercepts, classes) so that it is saved as JSON + NPZ rather than a pickle, which would run
arbitrary code when loaded and breaks across scikit-learn versions. Prediction is the linear
scores X @ coef.T + intercept, the same after `fit` as after `load`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

_FORMAT = "llmbatch-tfidf-logreg/1"
_CONFIG_FILE = "config.json"
_VOCABULARY_FILE = "vocabulary.json"
_WEIGHTS_FILE = "weights.npz"


@dataclass(frozen=True)
class TfidfClassifierConfig:
    ngram_max: int = 2  # word n-grams 1..ngram_max; bigrams catch "perl module", "header files"
    min_df: int = 2  # terms seen in one document only are mostly names: noise
    max_features: int | None = 200_000
    sublinear_tf: bool = True  # 1 + log(tf): a word repeated ten times is not ten times the evidence
    c: float = 10.0  # inverse L2 strength; text features are many and sparse, so weak regularization
    max_iter: int = 2000


class TfidfClassifier:
    def __init__(self, config: TfidfClassifierConfig | None = None) -> None:
        self.config = config or TfidfClassifierConfig()
        self._vectorizer: TfidfVectorizer | None = None
        self._coef: np.ndarray | None = None  # (classes, features)
        self._intercept: np.ndarray | None = None  # (classes,)
        self.classes: list[str] = []

    def _new_vectorizer(self, vocabulary: list[str] | None = None) -> TfidfVectorizer:
        return TfidfVectorizer(
            lowercase=True,
            ngram_range=(1, self.config.ngram_max),
            min_df=self.config.min_df,
            max_features=self.config.max_features,
            sublinear_tf=self.config.sublinear_tf,
            vocabulary=vocabulary,
            dtype=np.float32,
        )

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> "TfidfClassifier":
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if len(set(labels)) < 2:
            raise ValueError("need at least two distinct labels to fit a classifier")
        vectorizer = self._new_vectorizer()
        features = vectorizer.fit_transform(texts)
        model = LogisticRegression(C=self.config.c, max_iter=self.config.max_iter)
        model.fit(features, list(labels))
        self.classes = [str(label) for label in model.classes_]
        coef, intercept = model.coef_, model.intercept_
        if len(self.classes) == 2:
            # Binary logistic regression keeps one row (for classes[1]); give classes[0] the
            # negated row so argmax over rows works the same for every number of classes.
            coef = np.vstack([-coef[0], coef[0]])
            intercept = np.array([-intercept[0], intercept[0]])
        self._vectorizer = vectorizer
        self._coef = np.asarray(coef, dtype=np.float32)
        self._intercept = np.asarray(intercept, dtype=np.float32)
        return self

    def decision_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Linear score of each text for each class, shape (texts, classes)."""
        if self._vectorizer is None or self._coef is None or self._intercept is None:
            raise RuntimeError("classifier is not fitted; call fit() or load() first")
        features = self._vectorizer.transform(texts)
        return np.asarray(features @ self._coef.T) + self._intercept

    def predict(self, texts: Sequence[str]) -> list[str]:
        if not texts:
            return []
        best = self.decision_scores(texts).argmax(axis=1)
        return [self.classes[i] for i in best]

    def save(self, directory: str | Path) -> None:
        if self._vectorizer is None or self._coef is None or self._intercept is None:
            raise RuntimeError("classifier is not fitted; nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Terms in column order, so that position i is feature i.
        vocabulary = sorted(self._vectorizer.vocabulary_, key=self._vectorizer.vocabulary_.get)
        config = {"format": _FORMAT, "classes": self.classes, "config": asdict(self.config)}
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (directory / _VOCABULARY_FILE).write_text(json.dumps(vocabulary, ensure_ascii=False))
        np.savez_compressed(
            directory / _WEIGHTS_FILE,
            idf=self._vectorizer.idf_.astype(np.float32),
            coef=self._coef,
            intercept=self._intercept,
        )

    @classmethod
    def load(cls, directory: str | Path) -> "TfidfClassifier":
        directory = Path(directory)
        saved = json.loads((directory / _CONFIG_FILE).read_text())
        if saved.get("format") != _FORMAT:
            raise ValueError(f"{directory} holds format {saved.get('format')!r}, expected {_FORMAT!r}")
        classifier = cls(TfidfClassifierConfig(**saved["config"]))
        vocabulary = json.loads((directory / _VOCABULARY_FILE).read_text())
        with np.load(directory / _WEIGHTS_FILE, allow_pickle=False) as weights:
            idf, coef, intercept = weights["idf"], weights["coef"], weights["intercept"]
        if not (len(vocabulary) == idf.shape[0] == coef.shape[1]):
            raise ValueError(f"{directory}: vocabulary, idf and coefficients disagree in size")
        if coef.shape[0] != len(saved["classes"]):
            raise ValueError(
                f"{directory}: {coef.shape[0]} coefficient rows for {len(saved['classes'])} classes"
            )
        vectorizer = classifier._new_vectorizer(vocabulary)
        vectorizer.idf_ = idf  # the setter builds the inner TfidfTransformer from these weights
        classifier._vectorizer = vectorizer
        classifier._coef = coef
        classifier._intercept = intercept
        classifier.classes = list(saved["classes"])
        return classifier
