"""Evaluation across ranks: loss and perplexity; accuracy and macro-F1 for classification; and
the forward pass of a micro-batch that training and evaluation share.

Under ZeRO-3 every forward pass gathers parameters with a collective, so all ranks must run the
same number of eval batches: a rank with fewer runs padding batches whose results are dropped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from workers.training.config import Objective
from workers.training.encode import IGNORE, collate
from workers.training.metrics import classification_scores, perplexity


def _dummy_batch(objective: Objective, pad_id: int) -> dict:
    if objective == Objective.CLASSIFICATION:
        return collate([{"input_ids": [pad_id], "label": 0}], pad_id)
    return collate([{"input_ids": [pad_id, pad_id], "labels": [IGNORE, IGNORE]}], pad_id)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# Batch keys the causal LM's forward takes besides input_ids/attention_mask/labels (encode.collate).
_PACKING_KEYS = ("doc_ids", "target_index")


def forward_loss(engine, batch: dict, objective: Objective, autocast: torch.dtype | None = None):
    """(mean loss, logits or None) of one micro-batch. `autocast`: the dtype the forward's
    matmuls run in over fp32 weights (llm_core.device.training_precision), None for none; the
    loss's softmax and RMSNorm upcast to fp32 themselves."""
    with torch.autocast(batch["input_ids"].device.type, dtype=autocast, enabled=autocast is not None):
        if objective == Objective.CLASSIFICATION:
            logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            return F.cross_entropy(logits.float(), batch["label"]), logits
        # TrainableCausalLM returns the mean loss over the shifted targets, as transformers' `.loss`.
        extra = {k: batch[k] for k in _PACKING_KEYS if k in batch}
        loss = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"], **extra)
        return loss, None


@torch.no_grad()
def evaluate(engine, batches: list[dict], objective: Objective, labels: list[str] | None, pad_id: int,
             autocast: torch.dtype | None = None) -> dict:
    device = engine.device
    count = torch.tensor([len(batches)], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if int(count.item()) == 0:
        return {}
    engine.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, weight)
    refs: list[str] = []
    preds: list[str] = []
    for i in range(int(count.item())):
        real = i < len(batches)
        batch = to_device(batches[i] if real else _dummy_batch(objective, pad_id), device)
        loss, logits = forward_loss(engine, batch, objective, autocast)
        if not real:
            continue
        if objective == Objective.CLASSIFICATION:
            n = batch["label"].numel()
            refs += [labels[j] for j in batch["label"].tolist()]
            preds += [labels[j] for j in logits.argmax(-1).tolist()]
        else:
            n = int((batch["labels"][:, 1:] != IGNORE).sum())  # targets after the causal shift
        loss_sum += torch.tensor([float(loss) * n, n], dtype=torch.float64, device=device)
    dist.all_reduce(loss_sum)
    engine.train()
    mean = float(loss_sum[0] / loss_sum[1].clamp(min=1))
    result = {"eval_loss": mean, "eval_perplexity": perplexity(mean)}
    if objective == Objective.CLASSIFICATION:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (refs, preds))
        all_refs = [r for part in gathered for r in part[0]]
        all_preds = [p for part in gathered for p in part[1]]
        result.update({f"eval_{k}": v for k, v in classification_scores(all_refs, all_preds).items()})
        result["eval_examples"] = len(all_refs)
    return result
