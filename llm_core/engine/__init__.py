"""llm_core.engine."""
