"""Training on Ray Train with DeepSpeed: what each worker runs, and the parts it is built from.

`config` (the typed training configuration a manifest composes), `loop` (the per-worker loop),
`model` (build and export), `data`, `optim`, `eval`, `metrics`, `deepspeed`, `checkpoint` and
`rescale` (resume on another worker count), `bpe` (a tokenizer trained for pretraining), and
`progress` (the actor that carries rank 0's events to the runner).
"""
