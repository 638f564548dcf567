"""The transformers engine: `generate` in length-sorted, token-budgeted, left-padded batches.

It runs any architecture transformers knows, so it is the fallback for models the native
engine does not support (`engine: hf`), and the baseline the native engine is measured against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from llm_core.device import pick_device, pick_dtype
from llm_core.engine.batching import token_budget_batches
from llm_core.engine.sampling import Completion, SamplingParams
from llm_core.engine.progress import FinishedPrompts, OnFinished
from llm_core.engine.stops import truncate_at_stop
from llm_core.models.loader import safetensors_files
from llm_core.tokenizer import ModelTokenizer


class HFEngine:
    name = "hf"

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, max_batch_tokens: int | None = None,
                 tokenizer: ModelTokenizer | None = None):
        # transformers takes seconds to import; only this fallback engine needs it.
        from transformers import AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.tokenizer = tokenizer or ModelTokenizer(self.model_dir)
        safetensors_files(self.model_dir)  # refuses pickle-only folders with a clear message
        # Weights from safetensors only, and never the Python a folder's config may name (auto_map).
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=self.dtype,
                                                          use_safetensors=True, trust_remote_code=False)
        self.model.to(self.device).eval()
        config = json.loads((self.model_dir / "config.json").read_text())
        self.max_context = int(config.get("max_position_embeddings") or 2048)
        self.eos_token_ids = self.tokenizer.eos_token_ids
        self.pad_id = config.get("pad_token_id")
        if self.pad_id is None:
            self.pad_id = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    def _left_pad(self, prompts: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_finished: OnFinished | None = None, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        # `seeds` (per prompt) cannot apply here: transformers draws a whole batch from one
        # generator, so the call is seeded by params.seed and sampled rows depend on the batching.
        results: list[list[Completion]] = [[] for _ in prompts]
        progress = FinishedPrompts(params.n, on_finished)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        for batch in token_budget_batches([len(p) for p in prompts], self.batch_size,
                                          self.max_batch_tokens, params.max_new_tokens):
            ids, mask = self._left_pad([prompts[i] for i in batch])
            kwargs = dict(
                max_new_tokens=params.max_new_tokens, do_sample=not params.greedy,
                repetition_penalty=params.repetition_penalty,
                no_repeat_ngram_size=params.no_repeat_ngram_size or None,
                num_return_sequences=params.n, pad_token_id=self.pad_id,
                eos_token_id=None if params.ignore_eos else sorted(stops),
            )
            if not params.greedy:
                kwargs.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
            else:
                kwargs.update(temperature=None, top_k=None, top_p=None)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            new = out[:, ids.shape[1]:].tolist()
            for j, row in enumerate(new):
                index = batch[j // params.n]
                results[index].append(self._completion(row, stops, params, len(prompts[index])))
                progress.add([(index, results[index][-1].completion_tokens)])
        return results

    def _completion(self, row: list[int], stops: set[int], params: SamplingParams, n_prompt: int) -> Completion:
        finish = "length"
        for k, tok in enumerate(row):
            if tok in stops:
                row, finish = row[:k], "stop"
                break
        text = self.tokenizer.decode(row)
        text, hit = truncate_at_stop(text, params.stop)
        return Completion(token_ids=row, text=text, finish_reason="stop" if hit else finish,
                          prompt_tokens=n_prompt)

    @torch.inference_mode()
    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """Left-padded prompt+continuation batches; only the last positions' logits are computed,
        so memory stays small even with a large vocabulary."""
        pairs = [(i, j) for i in range(len(prompts)) for j in range(len(continuations))]
        if not pairs:
            return [[] for _ in prompts]
        seqs = [list(prompts[i]) + list(continuations[j]) for i, j in pairs]
        keep = max(len(c) for c in continuations) + 1
        totals = torch.zeros(len(pairs), device=self.device)  # on the device: one transfer at the end
        for batch in token_budget_batches([len(s) for s in seqs], self.batch_size, self.max_batch_tokens, 0):
            ids, mask = self._left_pad([seqs[k] for k in batch])
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # [batch, keep, vocab]
            for r, k in enumerate(batch):
                cont = continuations[pairs[k][1]]
                # logits at position p predict token p+1; the continuation fills the last len(cont) slots
                positions = torch.arange(keep - 1 - len(cont), keep - 1, device=logprobs.device)
                targets = torch.tensor(list(cont), dtype=torch.long, device=logprobs.device)
                totals[k] = logprobs[r, positions, targets].sum()
        flat = totals.tolist()
        return [flat[i * len(continuations):(i + 1) * len(continuations)] for i in range(len(prompts))]
