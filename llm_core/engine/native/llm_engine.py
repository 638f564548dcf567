"""NativeEngine: the Engine protocol (llm_core.engine.api) over our own Llama-family model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Callable
from typing import Sequence as Seq

import torch
from tokenizers import Tokenizer

from llm_core.device import pick_device
from llm_core.engine.native.batcher import ContinuousBatcher
from llm_core.engine.native.model_runner import ModelRunner
from llm_core.engine.native.packed_linear import pack_linears
from llm_core.engine.native.cpu_kernels import cpu_kernels_available
from llm_core.engine.native.fused_layers import fuse_layers
from llm_core.engine.native.quantize import quantize_model
from llm_core.engine.native.smoothing import CALIBRATION_TEXT
from llm_core.engine.native.prefix_cache import CachedPrefix, PrefixCache
from llm_core.engine.native.sampler import sample
from llm_core.engine.native.sequence import Sequence
from llm_core.engine.native.stopping import check_stop, completion_ids, completion_text
from llm_core.engine.native.token_history import TokenHistory
from llm_core.engine.native.transfer import to_device
from llm_core.engine.progress import FinishedPrompts
from llm_core.engine.sampling import Completion, SamplingParams
from llm_core.models import load_model
from llm_core.tokenizer import read_tokenizer_file

log = logging.getLogger(__name__)


def eos_token_ids(model_dir: Path, from_config: tuple[int, ...], tokenizer: Tokenizer) -> tuple[int, ...]:
    """config.json's EOS plus generation_config.json's and the tokenizer's eos_token (chat
    models often end turns with a token that only one of them names)."""
    ids = set(from_config)
    gen_file = model_dir / "generation_config.json"
    if gen_file.exists():
        eos = json.loads(gen_file.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    tok_file = model_dir / "tokenizer_config.json"
    if tok_file.exists():
        name = json.loads(tok_file.read_text()).get("eos_token")
        if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
            ids.add(tokenizer.token_to_id(name))
    return tuple(sorted(ids))


class NativeEngine:
    name = "native"

    def __init__(
        self, model_dir: str | Path, device: str = "auto", dtype: str = "auto",
        max_batch_tokens: int | None = None, max_num_seqs: int = 64, tokenizer: Tokenizer | None = None,
        prefix_caching: bool = True, quantization: str = "none", adapter_dir: str | Path | None = None,
        compile_decode: bool = False, cpu_kernels: bool = True,
    ):
        """compile_decode: CPU decode steps through torch.compile (compiled_decode.py), compiled
        here. Off by default: no faster than eager on the 2-core AVX2 machine it was measured on
        (benchmarks/RESULTS.md); benchmarks/engine.py's `+compile` measures it elsewhere.
        cpu_kernels: on CPU, the engine's kernels where they build (cpu_kernels.py): prefill and
        decode attention, and RMSNorm, SiLU-and-multiply and RoPE in one pass each (fused_layers.py);
        False runs torch's ops, SDPA and the model's own modules (for side-by-side measurements)."""
        model_dir = Path(model_dir)
        self.device = pick_device(device)
        # A LoRA adapter is merged as the weights load, before the dtype cast and quantization.
        self.model, self.config = load_model(model_dir, self.device, dtype, adapter_dir=adapter_dir)
        self.dtype = self.model.embed_tokens.weight.dtype
        self.quantization = quantization
        self.tokenizer = tokenizer or read_tokenizer_file(model_dir)
        # int8: weights only; w8a8: weights and activations, after SmoothQuant (smoothing.py)
        calibration = None
        if quantization == "w8a8":
            calibration = self.tokenizer.encode(CALIBRATION_TEXT).ids[: self.config.max_position_embeddings]
        quantize_model(self.model, quantization, calibration_ids=calibration)
        pack_linears(self.model)  # bf16 on CPU: weights in oneDNN's layout once, not per call
        cpu_kernels = cpu_kernels and torch.device(self.device).type == "cpu" and cpu_kernels_available()
        if cpu_kernels:
            fuse_layers(self.model, w8a8_layers=not compile_decode)  # compiled_decode.py reads the modules
        self.eos_token_ids = eos_token_ids(model_dir, self.config.eos_token_ids, self.tokenizer)
        self.max_context = self.config.max_position_embeddings
        if self.config.sliding_window:  # within the window, sliding attention is full attention
            self.max_context = min(self.max_context, self.config.sliding_window)
        on_gpu = self.model.embed_tokens.weight.is_cuda
        self.max_batch_tokens = max_batch_tokens or (16384 if on_gpu else 2048)
        self.max_num_seqs = max_num_seqs
        self.runner = ModelRunner(
            self.model, self.config, self.device, self.dtype, max_num_seqs, use_cuda_graphs=on_gpu,
            max_context=self.max_context, max_batch_tokens=self.max_batch_tokens, compile_decode=compile_decode,
            attention_kernel=cpu_kernels,
        )
        # A shared prompt prefix (system prompt, instruction) is computed once: prefix_cache.py.
        self.prefix_cache = PrefixCache() if prefix_caching else None
        log.info("engine: native (%s, %s, %s, quantization %s, adapter %s)", model_dir.name, self.device,
                 self.dtype, quantization, Path(adapter_dir).name if adapter_dir else "none")

    def _check_prompts(self, prompts: Seq[Seq[int]]) -> None:
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) >= self.max_context:
                raise ValueError(f"prompt {i} has {len(p)} tokens; the model takes {self.max_context}")

    @torch.inference_mode()
    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams,
                 on_finished: Callable[[list[tuple[int, int]]], None] | None = None,
                 seeds: Seq[int] | None = None) -> list[list[Completion]]:
        self._check_prompts(prompts)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if params.max_new_tokens <= 0:
            return [[Completion([], "", "length", len(p)) for _ in range(params.n)] for p in prompts]
        if not prompts:
            return []
        seqs = [
            Sequence(p, params, i, j, self.device, None if seeds is None else seeds[i])
            for i, p in enumerate(prompts) for j in range(params.n)
        ]
        for seq, prefix in zip(seqs, self._cached_prefixes([s.prompt for s in seqs])):
            seq.prefix = prefix
        longest = max(len(p) for p in prompts) + params.max_new_tokens
        cache = self.runner.ensure_cache(min(longest, self.max_context))
        # Admission: no more running sequences than the cache has slots (fewer on a full GPU).
        batcher = ContinuousBatcher(cache.num_slots, self.max_batch_tokens)
        # Shortest prompts first, so neighbouring slots hold similar lengths and each group of
        # slots reads the KV cache only up to its own longest sequence (DecodeAttention).
        for seq in sorted(seqs, key=lambda s: len(s.prompt)):
            batcher.add(seq)
        history = None
        if params.repetition_penalty != 1.0:
            history = TokenHistory(cache.num_slots, cache.max_len, self.device)
        followers = (history,) if history is not None else ()
        progress = FinishedPrompts(params.n, on_finished)
        while not batcher.done:
            kind, batch = batcher.next_step()
            if kind == "prefill":
                logits = torch.stack(self.runner.prefill([(s.slot, s.prompt, s.prefix) for s in batch]))
                for seq in batch if history is not None else ():
                    history.start(seq.slot, seq.prompt)
            else:
                logits = self.runner.decode([s.last_token for s in batch], [len(s) - 1 for s in batch],
                                            [s.prefix for s in batch])
            for seq, token in zip(batch, self._next_tokens(logits, batch, history)):
                seq.output.append(token)
                check_stop(seq, self.eos_token_ids, self.tokenizer, min(cache.max_len, self.max_context))
            finished = batcher.release_finished(cache, followers)
            progress.add((seq.prompt_index, len(completion_ids(seq))) for seq in finished)
        results: list[list[Completion]] = [[] for _ in prompts]
        for seq in seqs:
            results[seq.prompt_index].append(
                Completion(
                    token_ids=completion_ids(seq),
                    text=completion_text(seq, self.tokenizer),
                    finish_reason=seq.finish_reason,
                    prompt_tokens=len(seq.prompt),
                )
            )
        return results

    def _cached_prefixes(self, prompts: list[list[int]]) -> list[CachedPrefix | None]:
        """Per prompt, the cached prefix it starts with, after caching the one `prompts` share.
        Before the KV cache is sized, so on a GPU its plan sees the memory the prefix takes."""
        if self.prefix_cache is None:
            return [None] * len(prompts)
        self.prefix_cache.prepare(prompts, self.runner.prefix_kv)
        found = [self.prefix_cache.match(p) for p in prompts]
        reused = sum(len(f) for f in found if f is not None)
        if reused:
            log.debug("prefix cache: %d of %d prompt tokens reused", reused, sum(len(p) for p in prompts))
        return found

    def _next_tokens(self, logits: torch.Tensor, batch: list[Sequence], history: TokenHistory | None) -> list[int]:
        if history is None:
            return sample(logits, batch)
        slots = to_device([s.slot for s in batch], self.device, torch.long)
        lengths = [len(s) for s in batch]  # the new token's position in each row
        tokens = sample(logits, batch, history.rows(slots, max(lengths)))
        history.add(slots, to_device(lengths, self.device, torch.long), to_device(tokens, self.device, torch.long))
        return tokens

    @torch.inference_mode()
    def score(
        self, prompts: Seq[Seq[int]], continuations: Seq[Seq[int]]
    ) -> list[list[float]]:
        """Each prompt is prefilled once; every continuation then extends it in the cache
        (overwriting the previous continuation's positions), so prompts are never recomputed."""
        self._check_prompts(prompts)
        if not prompts or not continuations:
            return [[] for _ in prompts]
        longest = max(len(p) for p in prompts) + max((len(c) for c in continuations), default=0)
        if longest > self.max_context:
            raise ValueError(f"prompt + continuation reach {longest} tokens; the model takes {self.max_context}")
        prefixes = iter(self._cached_prefixes([list(p) for p in prompts]))
        self.runner.ensure_cache(longest)
        # Scores stay on the device until the end: one transfer for the whole call.
        per_group = [
            self._score_group(group, [next(prefixes) for _ in group], continuations)
            for group in self._score_groups(prompts)
        ]
        return torch.cat(per_group).tolist()

    def _score_groups(self, prompts: Seq[Seq[int]]):
        limit = min(self.max_num_seqs, self.runner.cache.num_slots)
        group, tokens = [], 0
        for p in prompts:
            if group and (len(group) == limit or tokens + len(p) > self.max_batch_tokens):
                yield group
                group, tokens = [], 0
            group.append(list(p))
            tokens += len(p)
        if group:
            yield group

    def _score_group(self, group: list[list[int]], prefixes: list, continuations) -> torch.Tensor:
        """[len(group), len(continuations)] summed log-probabilities, on the device."""
        items = [(slot, p, prefix) for slot, (p, prefix) in enumerate(zip(group, prefixes))]
        first = torch.stack(self.runner.prefill(items))
        first = first.log_softmax(dim=-1)
        columns = []
        for cont in continuations:
            if not cont:
                columns.append(first.new_zeros(len(group)))
                continue
            total = first[:, cont[0]]
            if len(cont) > 1:
                chunks = [(slot, len(p), list(cont[:-1])) for slot, p in enumerate(group)]
                rest = torch.stack(self.runner.extend(chunks, all_logits=True))  # [G, n-1, V]
                targets = to_device(cont[1:], first.device, torch.long)
                picked = rest.log_softmax(dim=-1).gather(2, targets.expand(len(group), -1)[:, :, None])
                total = total + picked[:, :, 0].sum(dim=1)
            columns.append(total)
        return torch.stack(columns, dim=1)
