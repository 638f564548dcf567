"""The native decoder as a training module: padded [B, S] batches in, mean next-token loss out.

- Attention: one `scaled_dot_product_attention(is_causal=True)` call over the whole batch, which
  picks flash kernels on GPU. Batches are right-padded: under the causal mask a real token only
  sees tokens before it, never the padding after it, so no padding mask is needed.
- Packed rows (`doc_ids` [B, S]: which sample of the row each token belongs to): positions
  restart at 0 for each sample and a token attends only to earlier tokens of its own sample (a
  block-diagonal causal mask, one boolean [B, 1, S, S] tensor shared by every layer), so a
  packed row trains exactly as its samples would one per row.
- Loss: only the positions that have a target go through the lm_head (an SFT batch's response
  is a tenth of its tokens; a 49k-vocabulary lm_head is a fifth of a small model's forward).
  Cross-entropy over the vocabulary a chunk of those rows at a time, every chunk but the last
  under activation checkpointing, so fp32 logits [N, vocab] never exist at once (with a 49k
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
    """AttentionBackend for B rows of S tokens laid flat as [B*S, heads, head_dim]; with
    `doc_ids` [B, S], attention stays within each packed sample."""

    def __init__(self, batch: int, seq: int, doc_ids: torch.Tensor | None = None):
        self.batch, self.seq = batch, seq
        self.mask = None if doc_ids is None else block_causal_mask(doc_ids)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def rows(x):  # [B*S, h, D] -> [B, h, S, D]
            return x.view(self.batch, self.seq, x.shape[1], x.shape[2]).transpose(1, 2)

        if self.mask is None:
            out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), is_causal=True, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), attn_mask=self.mask, enable_gqa=True)
        return out.transpose(1, 2).reshape(self.batch * self.seq, q.shape[1], q.shape[2])


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, S] sample ids -> boolean [B, 1, S, S]: query i may see key j <= i of the same sample.
    Every token sees at least itself (padding has its own id), so no softmax row is empty."""
    seq = doc_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


def positions_in_documents(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, S] sample ids (each sample one contiguous run) -> each token's position in its sample,
    computed on the device (no host sync): index minus the index where its run starts."""
    index = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (into [B*S]) of the positions that predict a label: token t predicts label
    t+1. Computed by the collate on the host, so the device never syncs to learn the count."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return (shifted.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)


def _chunk_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # fp32 softmax, as transformers upcasts before its loss
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module,
                          chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy of lm_head(hidden [N, H]) against targets [N] over the targets that
    are not IGNORE_INDEX (0 when there are none), computed `chunk_tokens` rows at a time."""
    total = hidden.new_zeros((), dtype=torch.float32)
    n = hidden.shape[0]
    if n == 0:  # still a graph: a backward through a batch without targets is a no-op, not an error
        return total + hidden.sum() * 0.0
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

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, S] right-padded token ids -> final hidden states [B, S, hidden]. The mask only
        documents the padding: causal attention already keeps real tokens from seeing it.
        `doc_ids` [B, S]: packed rows (module docstring)."""
        batch, seq = input_ids.shape
        if doc_ids is None:
            positions = torch.arange(seq, device=input_ids.device).repeat(batch)
        else:
            positions = positions_in_documents(doc_ids).reshape(-1)
        hidden = self.model(input_ids.reshape(-1), positions, BatchCausalAttention(batch, seq, doc_ids))
        return hidden.view(batch, seq, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                doc_ids: torch.Tensor | None = None, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """`target_index`: `target_positions(labels)`, precomputed off the device; without it the
        positions are found here (on a GPU that costs a host sync)."""
        hidden = self.hidden_states(input_ids, attention_mask, doc_ids).flatten(0, 1)
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)  # the last position predicts nothing
        if target_index is None:
            target_index = target_positions(labels)
        if target_index.shape[0] < targets.shape[0]:  # known on the host: the index's shape
            hidden, targets = hidden.index_select(0, target_index), targets.index_select(0, target_index)
        return chunked_cross_entropy(hidden, targets, self.model.lm_head, self.chunk_tokens)
