"""llm_core.weights."""
