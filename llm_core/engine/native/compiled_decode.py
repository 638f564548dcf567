"""The model's forward with torch.compile (inductor) fusing the elementwise work around the matmuls (CPU).

Each decoder layer runs as two compiled regions with attention between them, eager:
  before attention: input RMSNorm + q/k/v projection + rotary                  -> q, k, v
  after attention:  o_proj + residual + post-attention RMSNorm + MLP + residual -> x
Attention backends' shapes (cache length, length groups, packed prompts) change every step;
kept out of the graphs, they cost no recompiles. The regions call the layers' own modules
(llama.py), so the math is the model's; dynamo inlines the modules and takes their weights as
graph inputs, so every layer shares one graph, and the token dimension is symbolic: one graph
serves every decode batch of 2 or more (shrinking as sequences finish); batch 1 is specialised,
one more graph. The engine uses it for decode only (model_runner.py).

fp32 is close to eager, not bit-identical: inductor sums RMSNorm's squares in another order and
folds the residual add into the matmul (addmm), about 1e-7 relative per region.

warm_up() compiles before the first job (once per actor, seconds to tens of seconds). If
compilation fails (no C++ compiler, an unsupported op) the forward falls back to eager for
good, with a warning: a job never fails for want of a faster path.
"""

from __future__ import annotations

import time

import structlog
import torch

from llm_core.models.attention import AttentionBackend
from llm_core.models.llama import DecoderLayer, LlamaForCausalLM
from llm_core.models.rope import apply_rotary

log = structlog.get_logger()


def _before_attention(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    attn = layer.self_attn
    qk, v = attn.qkv_proj(layer.input_layernorm(x)).split([attn.q_size + attn.kv_size, attn.kv_size], dim=-1)
    qk = apply_rotary(qk.reshape(-1, attn.heads + attn.kv_heads, attn.head_dim), cos, sin)
    q, k = qk.split([attn.heads, attn.kv_heads], dim=1)
    # k and v contiguous, written so by the fused kernel: the cache write copies them otherwise.
    return q, k.contiguous(), v.reshape(-1, attn.kv_heads, attn.head_dim).contiguous()


def _after_attention(layer: DecoderLayer, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out: attention's output as [tokens, heads * head_dim]."""
    x = x + layer.self_attn.o_proj(out)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _final_norm(model: LlamaForCausalLM, x: torch.Tensor) -> torch.Tensor:
    return model.norm(x)


class CompiledDecode:
    """`model(input_ids, positions, backend)`, compiled around attention."""

    def __init__(self, model: LlamaForCausalLM, backend: str | object = "inductor"):
        self.model = model
        compile_region = lambda fn: torch.compile(fn, backend=backend)  # noqa: E731
        self.before = compile_region(_before_attention)
        self.after = compile_region(_after_attention)
        self.norm = compile_region(_final_norm)
        self.failed = False
        self.compile_seconds = 0.0  # wall time of the calls that compiled (new batch shapes)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
        if self.failed:
            return self.model(input_ids, positions, backend)
        graphs = _graph_count()
        start = time.perf_counter()
        try:
            hidden = self._compiled(input_ids, positions, backend)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager is always correct
            self.failed = True
            log.warning("compiled_decode.fallback_to_eager", error=f"{type(exc).__name__}: {exc}"[:500])
            # The failed attempt may have written some layers' K/V: the same rows, rewritten here.
            return self.model(input_ids, positions, backend)
        if _graph_count() != graphs:
            seconds = time.perf_counter() - start
            self.compile_seconds += seconds
            log.info("compiled_decode.compiled", batch=int(input_ids.shape[0]), seconds=round(seconds, 2),
                     graphs=_graph_count(), recompiles=recompile_count())
        return hidden

    def warm_up(self) -> None:
        """Compile now (not in the first job's steps): the batch-1 graph and the graph for every
        batch of 2 or more. Logs the seconds it took."""
        device = self.model.embed_tokens.weight.device
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in (2, 3, 1):  # 3: checks that 2 compiled a graph for any batch
                ids = torch.zeros(batch, dtype=torch.long, device=device)
                self(ids, torch.zeros(batch, dtype=torch.long, device=device), _NoAttention())
        log.info("compiled_decode.ready", failed=self.failed, seconds=round(time.perf_counter() - start, 2),
                 graphs=_graph_count(), recompiles=recompile_count())

    def _compiled(self, input_ids, positions, backend: AttentionBackend) -> torch.Tensor:
        model = self.model
        x = model.embed_tokens(input_ids)
        cos, sin = model.rotary(positions, x.dtype)
        cos, sin = _batch_dynamic(cos), _batch_dynamic(sin)
        for layer in model.layers:
            x = _batch_dynamic(x)
            q, k, v = self.before(layer, x, cos, sin)
            out = backend.attend(layer.self_attn.layer, q, k, v)
            # Contiguous, [tokens, heads * head_dim]: the layout (strides) the graph was compiled for.
            x = self.after(layer, x, _batch_dynamic(out.reshape(-1, layer.self_attn.q_size).contiguous()))
        return self.norm(model, _batch_dynamic(x))


def _batch_dynamic(t: torch.Tensor) -> torch.Tensor:
    """The batch (dim 0) is a symbol in the graph, the other dims static: one graph for every batch
    of 2 or more. (`dynamic=True` would make head_dim symbolic too and, when the batch equals it,
    "duck sizing" ties the two together: a recompile at the next batch.)"""
    torch._dynamo.maybe_mark_dynamic(t, 0)
    return t


class _NoAttention:
    """A backend that returns its queries: warm-up steps compile the regions, touching no KV cache."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q


def _graph_count() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def recompile_count() -> int:
    """Compiles of a region that had compiled before: dynamo records why its guards failed
    (a new batch shape, a new module...), one reason per recompile."""
    failures = torch._dynamo.utils.guard_failures
    return sum(len(failures.get(fn.__code__, ())) for fn in (_before_attention, _after_attention, _final_norm))
