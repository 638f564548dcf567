"""Metrics: ROUGE wiring to the `rouge-score` package (stemming included, which must work in a
plain install), BLEU/chrF wiring to sacrebleu, classification metrics against scikit-learn's
definitions, and `compute_metrics`' row accounting."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llm_core.baselines import lead_sentence
from llm_core.metrics import DEFAULT_METRICS
from llm_core.metrics.classification import accuracy, confusion_matrix, macro_f1, per_label_scores
from llm_core.metrics.compute import compute_metrics
from llm_core.metrics.rouge import corpus_rouge, rouge_pair
from tests.support.paths import REPO, TEST_DATA as DATA

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL"]


def summarize_pairs() -> list[tuple[str, str]]:
    """(reference, prediction) pairs: short lead sentences and whole long texts, so both
    short and long LCS tables are exercised, plus edge cases."""
    table = pq.read_table(DATA / "summarize_sample.parquet").to_pylist()
    pairs = [(row["reference"], lead_sentence(row["text"])) for row in table]
    pairs += [(row["reference"], row["text"]) for row in table[:30]]
    pairs += [
        ("", "something"),
        ("something", ""),
        ("!!! ...", "???"),
        ("Ünïcödé café naïve", "unicode cafe naive"),
        ("the the the cat", "the cat the the"),
        ("Running runners ran quickly", "the runner runs quick"),
    ]
    return pairs


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score_package_per_pair(use_stemmer: bool) -> None:
    reference_scorer = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=use_stemmer)
    for reference, prediction in summarize_pairs():
        expected = reference_scorer.score(reference, prediction)
        ours = rouge_pair(reference, prediction, ROUGE_TYPES, use_stemmer=use_stemmer)
        for rouge_type in ROUGE_TYPES:
            for field in ("precision", "recall", "fmeasure"):
                assert getattr(ours[rouge_type], field) == pytest.approx(
                    getattr(expected[rouge_type], field), abs=1e-6
                ), (rouge_type, field, reference, prediction)


def test_rouge_tokenization_rules() -> None:
    # Every run outside [a-z0-9] separates words, after lowercasing.
    assert rouge_pair("Hello, World! x86_64 C++", "hello world x86 64 c", ["rouge1"])["rouge1"].fmeasure == 1.0
    # Accented letters are outside [a-z0-9] after lowercasing, so they split words.
    assert rouge_pair("Café", "caf", ["rouge1"])["rouge1"].fmeasure == 1.0


def test_rouge_stemming_works_in_a_plain_install() -> None:
    """`evaluate.use_stemmer: true`: Porter stems (running -> run, runners -> runner,
    quickly -> quickli; 'ran' is too short to stem) turn 1 shared word of 4 into 3 of 4."""
    reference, prediction = "Running runners ran quickly", "the runner runs quickly"
    plain = compute_metrics("summarize", [prediction], [reference], ["rouge1"])
    stemmed = compute_metrics("summarize", [prediction], [reference], ["rouge1"], use_stemmer=True)
    assert plain["rouge1"] == pytest.approx(0.25)
    assert stemmed["rouge1"] == pytest.approx(0.75)


def test_rouge_l_is_the_longest_common_subsequence() -> None:
    # LCS of ABCBDAB and BDCABA is 4 (e.g. BCBA): precision 4/6, recall 4/7.
    score = rouge_pair(" ".join("ABCBDAB"), " ".join("BDCABA"), ["rougeL"])["rougeL"]
    assert (score.precision, score.recall) == pytest.approx((4 / 6, 4 / 7))
    assert rouge_pair("", "a", ["rougeL"])["rougeL"].fmeasure == 0.0


def test_corpus_rouge_is_mean_of_pair_fmeasures() -> None:
    pairs = summarize_pairs()[:40]
    references = [reference for reference, _ in pairs]
    predictions = [prediction for _, prediction in pairs]
    scorer = rouge_scorer.RougeScorer(ROUGE_TYPES)
    expected = {
        rouge_type: sum(scorer.score(r, p)[rouge_type].fmeasure for r, p in pairs) / len(pairs)
        for rouge_type in ROUGE_TYPES
    }
    ours = corpus_rouge(references, predictions, ROUGE_TYPES)
    assert ours == pytest.approx(expected, abs=1e-9)
    assert corpus_rouge([], [], ROUGE_TYPES) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_unknown_rouge_type_is_refused() -> None:
    with pytest.raises(ValueError, match="rougeX"):
        rouge_pair("a", "a", ["rougeX"])


def test_translation_metrics_are_sacrebleu_corpus_scores_in_the_right_order() -> None:
    table = pq.read_table(DATA / "translate_sample.parquet")
    sources = table.column("text").to_pylist()
    references = table.column("reference").to_pylist()
    result = compute_metrics("translate", sources, references)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(sources, [references]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(sources, [references]).score)
    # chrF weighs recall twice as much as precision, so swapping hypotheses and references
    # changes it: this pins the argument order.
    assert result["chrf"] != pytest.approx(sacrebleu.corpus_chrf(references, [sources]).score)
    assert 0 < result["chrf"] < 100

    perfect = compute_metrics("translate", references, references)
    assert perfect["bleu"] == pytest.approx(100.0)
    assert perfect["chrf"] == pytest.approx(100.0)


def classify_pairs() -> tuple[list[str], list[str]]:
    """Real labels and a prediction list that is wrong in a patterned way, with a label that
    is not in the reference set (as an LLM might answer)."""
    references = pq.read_table(DATA / "classify_sample.parquet").column("label").to_pylist()
    labels = sorted(set(references))
    predictions = []
    for i, reference in enumerate(references):
        if i % 7 == 0:
            predictions.append(labels[(labels.index(reference) + 1) % len(labels)])
        elif i % 31 == 0:
            predictions.append("not-a-section")
        else:
            predictions.append(reference)
    return references, predictions


def test_classification_metrics_match_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    references, predictions = classify_pairs()
    labels = sorted(set(references) | set(predictions))

    assert accuracy(references, predictions) == pytest.approx(
        sklearn_metrics.accuracy_score(references, predictions)
    )
    assert macro_f1(references, predictions) == pytest.approx(
        sklearn_metrics.f1_score(references, predictions, average="macro", zero_division=0)
    )
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        references, predictions, labels=labels, zero_division=0
    )
    ours = per_label_scores(references, predictions)
    assert list(ours) == labels
    for i, label in enumerate(labels):
        assert ours[label].precision == pytest.approx(precision[i])
        assert ours[label].recall == pytest.approx(recall[i])
        assert ours[label].f1 == pytest.approx(f1[i])
        assert ours[label].support == support[i]
    matrix = confusion_matrix(references, predictions)
    assert matrix["labels"] == labels
    assert matrix["matrix"] == sklearn_metrics.confusion_matrix(references, predictions, labels=labels).tolist()


def test_compute_metrics_skips_and_counts_error_rows() -> None:
    references, predictions = classify_pairs()
    with_errors = [None if i % 10 == 3 else p for i, p in enumerate(predictions)]
    with_missing_references: list[str | None] = list(references)
    with_missing_references[0] = None

    result = compute_metrics("classify", with_errors, with_missing_references)
    kept = [
        (r, p) for r, p in zip(with_missing_references, with_errors) if p is not None and r is not None
    ]
    assert result["rows"] == len(references)
    assert result["errors"] == sum(p is None for p in with_errors) == 30
    assert result["missing_reference"] == 1
    assert result["scored"] == len(kept) == len(references) - 31
    kept_references = [r for r, _ in kept]
    kept_predictions = [p for _, p in kept]
    assert result["accuracy"] == pytest.approx(accuracy(kept_references, kept_predictions))
    assert result["macro_f1"] == pytest.approx(macro_f1(kept_references, kept_predictions))
    assert set(result) >= set(DEFAULT_METRICS["classify"])
    assert sum(map(sum, result["confusion_matrix"]["matrix"])) == len(kept)


def test_compute_metrics_defaults_and_choices() -> None:
    summary = compute_metrics("summarize", ["the cat sat", None], ["the cat sat on the mat", "x"])
    assert summary["rouge1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert summary["errors"] == 1 and summary["scored"] == 1
    assert "bleu" not in summary

    chosen = compute_metrics("summarize", ["a b"], ["a b"], metrics=["rougeL", "chrf"])
    assert set(chosen) - {"task", "rows", "scored", "errors", "missing_reference"} == {"rougeL", "chrf"}

    assert compute_metrics("generate", ["text"], [None])["missing_reference"] == 1
    every_row_failed = compute_metrics("classify", [None, None], ["a", "b"])
    assert every_row_failed["accuracy"] == 0.0 and every_row_failed["scored"] == 0


def test_compute_metrics_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("paraphrase", ["a"], ["a"])
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics("summarize", ["a"], ["a"], metrics=["meteor"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics("summarize", ["a", "b"], ["a"])


def test_metric_names_load_without_the_scoring_libraries() -> None:
    """Manifest checks import llm_core.metrics for the names; scikit-learn and rouge-score
    take seconds to import, so they must load only with llm_core.metrics.compute."""
    code = "import sys, llm_core.metrics; print(sorted({'sklearn', 'rouge_score', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]"
