"""Baselines: lead sentence, identity translation, TF-IDF + logistic regression."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from llm_core.baselines import (
    TfidfClassifier,
    TfidfClassifierConfig,
    identity_translation,
    identity_translations,
    lead_sentence,
    lead_sentence_summaries,
)
from llm_core.metrics.classification import accuracy
from llm_core.metrics.rouge import corpus_rouge
from tests.support.paths import TEST_DATA as DATA


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Vim is an almost compatible version of the UNIX editor Vi. Many new features have been added.",
            "Vim is an almost compatible version of the UNIX editor Vi.",
        ),
        (
            "It works with many languages, e.g. Pascal or C. Projects can share one mechanism.",
            "It works with many languages, e.g. Pascal or C.",
        ),
        ("Formats (i.e. Foo and Bar) are read. More text.", "Formats (i.e. Foo and Bar) are read."),
        ("Rescues data from disks, flash drives, etc. It is fast.", "Rescues data from disks, flash drives, etc."),
        ("Handles files, dirs, etc. and more. Next one.", "Handles files, dirs, etc. and more."),
        ("Writes images for the wodim program. genisoimage also does X.", "Writes images for the wodim program."),
        ("Library version 2.0 from www.example.org/x.html is here. Next.", "Library version 2.0 from www.example.org/x.html is here."),
        ("A metric system for counters\n\nIt does not sample.", "A metric system for counters"),
        ("Tools for the TPM\n - swtpm_bios: init\n - swtpm_ioctl: control", "Tools for the TPM"),
        ("A synopsis-like text without any period", "A synopsis-like text without any period"),
        ("Is it fast? Yes, very.", "Is it fast?"),
        ("  spaced   out\ttext.  ", "spaced out text."),
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_lead_sentence_cases(text: str, expected: str) -> None:
    assert lead_sentence(text) == expected


def test_lead_sentence_caps_run_on_text() -> None:
    run_on = " ".join(f"word{i}" for i in range(500))
    assert lead_sentence(run_on, max_words=20).split() == [f"word{i}" for i in range(20)]


def test_lead_sentence_on_debian_descriptions_is_a_short_prefix_close_to_the_synopsis() -> None:
    table = pq.read_table(DATA / "summarize_sample.parquet")
    texts = table.column("text").to_pylist()
    summaries = lead_sentence_summaries(texts)
    for text, summary in zip(texts, summaries):
        assert summary, text
        assert " ".join(text.split()).startswith(summary)
        assert len(summary.split()) <= 60
    # Most descriptions are several sentences long; the lead sentence must be much shorter.
    assert sum(len(s) for s in summaries) < 0.5 * sum(len(t) for t in texts)
    # The lead sentence shares words with the human synopsis; an unrelated text would not.
    references = table.column("reference").to_pylist()
    matched = corpus_rouge(references, summaries, ["rougeL"])["rougeL"]
    shuffled = corpus_rouge(references, summaries[1:] + summaries[:1], ["rougeL"])["rougeL"]
    assert matched > 0.2
    assert matched > 2 * shuffled


def test_identity_translation_returns_the_input() -> None:
    texts = pq.read_table(DATA / "translate_sample.parquet").column("text").to_pylist()
    assert identity_translations(texts) == texts
    assert identity_translation("Bonjour <b>") == "Bonjour <b>"


def classify_split() -> tuple[list[str], list[str], list[str], list[str]]:
    """Every fifth row held out: 240 rows to fit, 60 to evaluate, 6 per label."""
    rows = pq.read_table(DATA / "classify_sample.parquet").to_pylist()
    train = [row for i, row in enumerate(rows) if i % 5]
    held_out = [row for i, row in enumerate(rows) if i % 5 == 0]
    return (
        [row["text"] for row in train],
        [row["label"] for row in train],
        [row["text"] for row in held_out],
        [row["label"] for row in held_out],
    )


@pytest.fixture(scope="module")
def fitted_classifier() -> TfidfClassifier:
    train_texts, train_labels, _, _ = classify_split()
    return TfidfClassifier().fit(train_texts, train_labels)


def test_tfidf_classifier_learns_debian_sections(fitted_classifier: TfidfClassifier) -> None:
    _, train_labels, held_out_texts, held_out_labels = classify_split()
    predictions = fitted_classifier.predict(held_out_texts)
    assert set(predictions) <= set(train_labels)
    assert fitted_classifier.classes == sorted(set(train_labels))
    # Ten balanced labels: chance is 0.1. 240 training rows are enough for well above it.
    assert accuracy(held_out_labels, predictions) > 0.45


def test_tfidf_classifier_save_load_round_trip(fitted_classifier: TfidfClassifier, tmp_path: Path) -> None:
    _, _, held_out_texts, _ = classify_split()
    fitted_classifier.save(tmp_path / "model")
    saved = sorted(path.name for path in (tmp_path / "model").iterdir())
    assert saved == ["config.json", "vocabulary.json", "weights.npz"]
    # The weights archive holds plain arrays only: no pickled objects.
    with zipfile.ZipFile(tmp_path / "model" / "weights.npz") as archive:
        assert sorted(archive.namelist()) == ["coef.npy", "idf.npy", "intercept.npy"]
    assert json.loads((tmp_path / "model" / "config.json").read_text())["classes"] == fitted_classifier.classes

    loaded = TfidfClassifier.load(tmp_path / "model")
    assert loaded.classes == fitted_classifier.classes
    assert loaded.config == fitted_classifier.config
    assert loaded.predict(held_out_texts) == fitted_classifier.predict(held_out_texts)
    np.testing.assert_allclose(
        loaded.decision_scores(held_out_texts), fitted_classifier.decision_scores(held_out_texts), rtol=1e-6
    )


def test_tfidf_classifier_two_labels() -> None:
    texts = ["perl module for parsing", "perl module for json", "python module for http", "python module for xml"]
    labels = ["perl", "perl", "python", "python"]
    classifier = TfidfClassifier(TfidfClassifierConfig(min_df=1)).fit(texts, labels)
    assert classifier.predict(["a perl module", "a python module"]) == ["perl", "python"]
    assert classifier.predict([]) == []


def test_tfidf_classifier_refuses_misuse(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfClassifier().predict(["text"])
    with pytest.raises(ValueError, match="two distinct labels"):
        TfidfClassifier().fit(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        TfidfClassifier().fit(["a", "b"], ["x"])
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        TfidfClassifier.load(tmp_path)
