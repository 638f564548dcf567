"""Generation engines: they continue token-id prompts and score continuations, one protocol for all.

- `api`: the `Engine` protocol every engine meets (generate, score, max_context, eos ids).
- `native/`: our own engine over llm_core.models (KV cache, continuous batching, CUDA graphs).
- `hf`: the transformers engine, the fallback for architectures the native engine lacks.
- `select`: `load_engine`, which picks native where supported, else hf.
- `sampling`: `SamplingParams` and `Completion`, what goes in and comes out of every engine.
- `batching`: length-sorted, token-budgeted batches (the hf engine's batching).
- `stops`: stop strings, cut the same way by both engines.

Device and dtype choice is llm_core.device's, shared with the classifier and training.
"""
