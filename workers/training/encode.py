"""Training rows -> samples, per objective: {input_ids, labels} (causal_lm, sft) or
{input_ids, label} (classification), and the collation of samples into padded batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llm_core.models.batches import right_pad
from llm_core.models.training import IGNORE_INDEX
from workers.training.config import Objective, TrainingConfig

IGNORE = IGNORE_INDEX  # label value the loss skips: the one llm_core's training module uses


class Encoder:
    """Rows -> samples {input_ids, labels} (causal_lm, sft) or {input_ids, label} (classification)."""

    def __init__(self, config: TrainingConfig, tokenizer, labels: list[str] | None):
        self.objective, self.tok, self.data = config.objective, tokenizer, config.data
        self.label_index = {l: i for i, l in enumerate(labels or [])}
        self.eos = tokenizer.eos_token_id
        self.seq_len = config.data.seq_len
        self.columns = [self.data.id_column, self.data.text_column, self.data.prompt_column,
                        self.data.response_column, self.data.label_column]

    def samples(self, rows: Iterator[dict]) -> Iterator[dict]:
        if self.objective == Objective.CAUSAL_LM:
            yield from (self._documents(rows) if self.data.packing is False else self._packed(rows))
        elif self.objective == Objective.SFT:
            yield from filter(None, (self._sft(r) for r in rows))
        else:
            yield from filter(None, (self._classify(r) for r in rows))

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _packed(self, rows) -> Iterator[dict]:
        buf: list[int] = []
        for row in rows:
            text = row.get(self.data.text_column)
            if not text:
                continue
            buf += self._ids(text) + [self.eos]
            while len(buf) >= self.seq_len:
                chunk, buf = buf[: self.seq_len], buf[self.seq_len :]
                yield {"input_ids": chunk, "labels": chunk}

    def _documents(self, rows) -> Iterator[dict]:
        for row in rows:
            text = row.get(self.data.text_column)
            if text:
                ids = (self._ids(text) + [self.eos])[: self.seq_len]
                yield {"input_ids": ids, "labels": ids}

    def _sft(self, row) -> dict | None:
        prompt, response = row.get(self.data.prompt_column), row.get(self.data.response_column)
        if not prompt or response is None:
            return None
        if getattr(self.tok, "chat_template", None):
            # The same template inference uses, so the tuned model sees its prompts as trained.
            p_ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=True)
            if hasattr(p_ids, "keys"):
                p_ids = p_ids["input_ids"]
        else:
            p_ids = self._ids(prompt + "\n")
        r_ids = self._ids(response) + [self.eos]
        ids = (list(p_ids) + r_ids)[: self.seq_len]
        labels = ([IGNORE] * len(p_ids) + r_ids)[: self.seq_len]
        if all(l == IGNORE for l in labels):
            return None  # prompt alone fills the window: nothing to learn from
        return {"input_ids": ids, "labels": labels}

    def _classify(self, row) -> dict | None:
        text, label = row.get(self.data.text_column), row.get(self.data.label_column)
        if not text or label not in self.label_index:
            return None
        ids = self._ids(text)[: self.seq_len]
        return {"input_ids": ids, "label": self.label_index[label]}


def collate(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; labels of padding are IGNORE."""
    ids, mask = right_pad([s["input_ids"] for s in samples], pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if "labels" in samples[0]:
        out["labels"], _ = right_pad([s["labels"] for s in samples], IGNORE)
    else:
        out["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return out
