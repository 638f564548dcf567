"""When a sequence stops, and the text it returns.

Like llm_core.engine.hf, a final EOS or stop token is left out of both token_ids and text;
a stop string cuts only the text (the tokens that spelled it stay in token_ids).
"""

from __future__ import annotations

from tokenizers import Tokenizer

from llm_core.engine.native.sequence import Sequence
from llm_core.engine.stops import truncate_at_stop


def check_stop(seq: Sequence, eos_token_ids, tokenizer: Tokenizer, max_len: int) -> None:
    params = seq.params
    token = seq.output[-1]
    if (not params.ignore_eos and token in eos_token_ids) or token in params.stop_token_ids:
        seq.finish_reason = "stop"
        seq.stopped_by_token = True
    elif params.stop and _cut_at_stop_string(seq, tokenizer):
        seq.finish_reason = "stop"
    elif len(seq.output) >= params.max_new_tokens or len(seq) >= max_len:
        seq.finish_reason = "length"


def _cut_at_stop_string(seq: Sequence, tokenizer: Tokenizer) -> bool:
    text = tokenizer.decode(seq.output, skip_special_tokens=True)
    # Earlier text was already searched; rescan only where a new match could start.
    start = max(0, seq.stop_scan_from - max(len(s) for s in seq.params.stop))
    seq.stop_scan_from = len(text)
    text, hit = truncate_at_stop(text, seq.params.stop, start)
    if hit:
        seq.text = text
    return hit


def completion_ids(seq: Sequence) -> list[int]:
    return seq.output[:-1] if seq.stopped_by_token else seq.output


def completion_text(seq: Sequence, tokenizer: Tokenizer) -> str:
    if seq.text is not None:
        return seq.text
    return tokenizer.decode(completion_ids(seq), skip_special_tokens=True)
