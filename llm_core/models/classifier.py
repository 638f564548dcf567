"""A causal LM with a classification head, and the files that make a model folder a classifier.

Training builds it (workers.training.model) and exports the folder; inference loads the folder
(workers.inference.classifier_head). Both take it from here, so neither imports the other. A
folder is a classifier when its config.json says `"llmbatch_task": "classification"`; it then
holds CLASSIFIER_FILE (head weight [labels, hidden] and bias) and LABELS_FILE (the label of each
output row, in order).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llm_core.models.training import TrainableCausalLM

CLASSIFIER_FILE = "classifier.safetensors"
LABELS_FILE = "labels.json"
CLASSIFICATION_TASK = "classification"  # config.json's llmbatch_task of a classifier folder


def is_classifier(model_dir: str | Path) -> bool:
    config = Path(model_dir) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("llmbatch_task") == CLASSIFICATION_TASK


class SequenceClassifier(nn.Module):
    """A causal LM's final hidden state at the last real token -> label logits.

    The causal LM is kept whole (its lm_head unused) so the exported folder still loads as a
    language model; the head is a separate file.
    """

    def __init__(self, lm: TrainableCausalLM, num_labels: int):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if not lm.config.tie_word_embeddings:
            lm.model.lm_head.requires_grad_(False)  # never called: no gradient would reach it

    def forward(self, input_ids, attention_mask):
        hidden = self.lm.hidden_states(input_ids, attention_mask)
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return self.head(pooled.to(self.head.weight.dtype))
