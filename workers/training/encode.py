"""Training rows -> samples, per objective: {input_ids, labels} (causal_lm, sft) or
{input_ids, label} (classification), and the collation of samples into padded batches.

SFT samples longer than seq_len keep their whole response and the end of the chat prompt (the
assistant header the response follows); the prompt's content is what gets shortened, its head
kept, as inference cuts a long row's text (llm_core.prompting). SFT packing (`data.packing:
true`) happens in the collation: the samples of one micro-batch share rows of up to seq_len
tokens, each keeping its own positions and attention (llm_core.models.training, `doc_ids`), so
the loss is the one of the same samples unpacked, over less padding (Debian headline prompts,
seq_len 512: 34% of the tokens computed are padding unpacked, 17-20% packed at micro-batch 8,
47% vs 13% at 16). A micro-batch is still `micro_batch` samples, so the data order and resume
arithmetic do not change.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llm_core.models.batches import right_pad
from llm_core.models.training import IGNORE_INDEX, target_positions
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
        # Row width SFT micro-batches are packed into (None: one sample per row). Off unless
        # `packing: true`: the same loss over less padding, not measured faster at micro-batch 8.
        self.pack_to = self.seq_len if self.objective == Objective.SFT and self.data.packing is True else None

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return collate(samples, self.tok.pad_token_id, self.pack_to)

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
        r_ids = self._ids(response) + [self.eos]
        p_ids = self._prompt_ids(prompt)
        if len(p_ids) + len(r_ids) > self.seq_len:
            p_ids, r_ids = self._fit(prompt, p_ids, r_ids)
            if not r_ids:
                return None  # the chat template alone fills the window: nothing to learn from
        return {"input_ids": p_ids + r_ids, "labels": [IGNORE] * len(p_ids) + r_ids}

    def _prompt_ids(self, content: str) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            # The same template inference uses, so the tuned model sees its prompts as trained.
            ids = self.tok.apply_chat_template([{"role": "user", "content": content}],
                                               add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self._ids(content + "\n")

    def _fit(self, prompt: str, p_ids: list[int], r_ids: list[int]) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) within seq_len: the prompt's content cut from its end (by
        tokens, re-rendered through the template); only when an empty content is still too long
        is the response cut (its end: the eos goes first)."""
        content = self._ids(prompt)
        keep = len(content) - (len(p_ids) + len(r_ids) - self.seq_len)
        while keep > 0:
            p_ids = self._prompt_ids(self.tok.decode(content[:keep]))
            excess = len(p_ids) + len(r_ids) - self.seq_len
            if excess <= 0:
                return p_ids, r_ids
            keep -= excess  # re-tokenising at the cut may merge or split a token or two
        p_ids = self._prompt_ids("")
        return p_ids, r_ids[: max(0, self.seq_len - len(p_ids))]

    def _classify(self, row) -> dict | None:
        text, label = row.get(self.data.text_column), row.get(self.data.label_column)
        if not text or label not in self.label_index:
            return None
        ids = self._ids(text)[: self.seq_len]
        return {"input_ids": ids, "label": self.label_index[label]}


def collate(samples: list[dict], pad_id: int, pack_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; labels of padding are IGNORE. Samples with labels also get
    `target_index` (the flat positions with a target, for the loss, computed here on the host).
    `pack_to`: several samples share a row of at most that many tokens (module docstring); the
    batch then has `doc_ids`, each token's sample within its row, -1 for padding."""
    if "labels" not in samples[0]:
        ids, mask = right_pad([s["input_ids"] for s in samples], pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "label": torch.tensor([s["label"] for s in samples], dtype=torch.long)}
    if pack_to is None:
        ids, mask = right_pad([s["input_ids"] for s in samples], pad_id)
        labels, _ = right_pad([s["labels"] for s in samples], IGNORE)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "target_index": target_positions(labels)}
    rows = pack_rows([len(s["input_ids"]) for s in samples], pack_to)
    ids, mask = right_pad([[t for i in row for t in samples[i]["input_ids"]] for row in rows], pad_id)
    # A sample's first label is never a target (nothing before it in the sample predicts it); in
    # a packed row it would be, by the previous sample's last token: it becomes IGNORE.
    labels, _ = right_pad([[t for i in row for t in [IGNORE, *samples[i]["labels"][1:]]] for row in rows], IGNORE)
    doc_ids, _ = right_pad([[k for k, i in enumerate(row) for _ in samples[i]["input_ids"]] for row in rows], -1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "doc_ids": doc_ids,
            "target_index": target_positions(labels)}


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sample indices grouped into rows of at most `width` tokens: first-fit decreasing (a
    sample longer than `width` gets a row of its own)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            free.append(width - lengths[i])
        else:
            rows[slot].append(i)
            free[slot] -= lengths[i]
    return rows
