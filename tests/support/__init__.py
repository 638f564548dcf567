"""Shared fixtures and builders, loaded by tests/conftest.py (pytest_plugins)."""
