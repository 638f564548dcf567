"""A byte-level BPE tokenizer trained on the training data, for pretraining from scratch.

Trained once per job by the runner and stored beside the checkpoints (`<checkpoint.uri>/
tokenizer/`), so every worker, every resumed attempt and the exported model share one vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workers.training.config import TrainingConfig
from workers.training.units import global_rows, list_units

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def _texts(config: TrainingConfig, limit_rows: int) -> Iterator[str]:
    column = config.data.text_column
    rows = global_rows(list_units(config.data.train), [column], config.training.seed, 0)
    for i, row in enumerate(rows):
        if i >= limit_rows:
            return
        if row.get(column):
            yield row[column]


def train_bpe(config: TrainingConfig, dest: Path, limit_rows: int = 200_000) -> Path:
    """Train on up to `limit_rows` rows of data.train; write an AutoTokenizer folder to `dest`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.model.vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknowns
        show_progress=False,
    )
    tok.train_from_iterator(_texts(config, limit_rows), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)
    dest.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(dest))
    return dest
