"""Paths the tests share: the repository root and the small sample datasets."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
EXAMPLE_DATA = REPO / "examples" / "data" / "debian-summarize.parquet"
