"""llm_core: the model library, usable on its own with no Ray.

Model definitions and weight loading, tokenizer, generation engines, task prompts and output
parsing, and evaluation metrics. Nothing here imports Ray or another llmbatch package.
"""
