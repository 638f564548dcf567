"""Unit tests: fast, no Ray cluster (some use real SQLite/PostgreSQL and tiny models)."""
