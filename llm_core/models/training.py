"""The native decoder as a training module: padded [B, S] batches in, mean next-token loss out.

- Attention: one `scaled_dot_product_attention(is_causal=True)` call over the whole batch, which
  picks flash kernels on GPU. Batches are right-padded: under the causal mask a real token only
  sees tokens before it, never the padding after it, so no padding mask is needed.
- Loss: cross-entropy over the vocabulary a chunk of tokens at a time, every chunk but the last
  under activation checkpointing, so fp32 logits [B*S, vocab] never exist at once (with a 49k
  vocab they would outweigh the rest of a small model's activations); the backward recomputes
  them, at the cost of one more lm_head matmul per checkpointed chunk.
  The lm_head module itself is called (not F.linear on its weight) so that DeepSpeed ZeRO-3's
  module hooks gather its partitioned weight, in the forward and in the recomputation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llm_core.models.llama import LlamaForCausalLM, RMSNorm

IGNORE_INDEX = -100  # label value the loss skips (prompt tokens, padding), as in transformers
DEFAULT_CHUNK_TOKENS = 2048


class BatchCausalAttention:
    """AttentionBackend for B rows of S tokens laid flat as [B*S, heads, head_dim]."""

    def __init__(self, batch: int, seq: int):
        self.batch, self.seq = batch, seq

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def rows(x):  # [B*S, h, D] -> [B, h, S, D]
            return x.view(self.batch, self.seq, x.shape[1], x.shape[2]).transpose(1, 2)

        out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).reshape(self.batch * self.seq, q.shape[1], q.shape[2])


def _chunk_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # fp32 softmax, as transformers upcasts before its loss
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module,
                          chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy of lm_head(hidden [N, H]) against targets [N] over the targets that
    are not IGNORE_INDEX (0 when there are none), computed `chunk_tokens` rows at a time."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    n = hidden.shape[0]
    for start in range(0, n, chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        # The last chunk's backward runs first, right after the forward: checkpointing it would
        # recompute its logits without lowering the peak, so only the earlier chunks are.
        if torch.is_grad_enabled() and start + chunk_tokens < n:
            total = total + checkpoint(_chunk_loss, lm_head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_loss(lm_head, h, t)
    # Counted on the device: no host sync per micro-batch.
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def init_weights(model: LlamaForCausalLM, std: float = 0.02) -> None:
    """Fresh weights for pretraining: N(0, std) linears and embeddings, zero biases, unit norms.
    Seed the global RNG first for the same weights on every rank."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class TrainableCausalLM(nn.Module):
    """forward(input_ids, attention_mask, labels) -> mean loss, like transformers' `.loss`:
    token t predicts token t+1, labels of IGNORE_INDEX do not count.

    source_config: the config.json dict the model was built from; export writes back its keys
    that ModelConfig does not hold (bos/pad token ids, ...). compile_layers: torch.compile each
    decoder layer; off by default, as compiling takes a while and new batch shapes recompile,
    which only long runs pay back.
    """

    def __init__(self, model: LlamaForCausalLM, source_config: dict | None = None,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, compile_layers: bool = False):
        super().__init__()
        self.model = model
        self.config = model.config
        self.source_config = dict(source_config or {})
        self.chunk_tokens = chunk_tokens
        if compile_layers:
            for layer in model.layers:
                layer.compile()  # in place: parameter names (and checkpoints) stay the same

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, S] right-padded token ids -> final hidden states [B, S, hidden]. The mask only
        documents the padding: causal attention already keeps real tokens from seeing it."""
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).repeat(batch)
        hidden = self.model(input_ids.reshape(-1), positions, BatchCausalAttention(batch, seq))
        return hidden.view(batch, seq, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, attention_mask)
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # the last position predicts nothing
        return chunked_cross_entropy(hidden.flatten(0, 1), targets.reshape(-1), self.model.lm_head, self.chunk_tokens)
