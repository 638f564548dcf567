"""llmbatch test suite: unit/, integration/, shared support/ (see conftest.py)."""
