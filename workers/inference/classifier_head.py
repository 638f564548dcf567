"""Run a fine-tuned classification model folder, or a base model plus a classification adapter
(LoRA matrices merged into the base, the head and labels beside them): texts -> labels through
the trained head.

What makes a folder a classifier, and the module, are llm_core.models.classifier's (shared with
training). The text is tokenized exactly as in training (no chat template, no special tokens, cut
to `max_tokens`), run through the language model's decoder, and the final hidden state of the last
real token goes through the head; the label is the argmax.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from llm_core.device import pick_device, pick_dtype
from llm_core.llm import RowResult
from llm_core.models import TrainableCausalLM, load_model
from llm_core.models.batches import right_pad
from llm_core.models.classifier import CLASSIFIER_FILE, LABELS_FILE, SequenceClassifier, is_classifier
from llm_core.models.lora_files import read_adapter_config
from llm_core.tasks import TaskKind, screen_rows
from llm_core.tokenizer import load_hf_tokenizer

__all__ = ["CLASSIFIER_FILE", "LABELS_FILE", "Classifier", "HeadEngine", "is_classifier", "load_classifier"]


@dataclass(frozen=True)
class HeadEngine:
    """What the inference actor logs about its engine (name, device), as LLM.engine has."""

    name: str
    device: str


class Classifier:
    """Duck-types llm_core.llm.LLM for the classify task: `run_task(spec, texts, params, ...)`."""

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, max_tokens: int | None = None, adapter_dir: str | Path | None = None):
        """`adapter_dir`: a classification adapter (LoRA matrices, the head and its labels) trained on
        `model_dir`, the base: base + merged adapter + head. Without it, `model_dir` is a whole
        classifier folder (its own head and labels)."""
        model_dir = Path(model_dir)
        head_dir = Path(adapter_dir) if adapter_dir is not None else model_dir
        if adapter_dir is None and not is_classifier(model_dir):
            raise ValueError(f"{model_dir} is not a classification model (no llmbatch_task in config.json)")
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.labels: list[str] = json.loads((head_dir / LABELS_FILE).read_text())
        if not isinstance(self.labels, list) or not all(isinstance(x, str) for x in self.labels):
            raise ValueError(f"{head_dir / LABELS_FILE}: expected a JSON list of label strings")
        self.tokenizer = load_hf_tokenizer(model_dir)
        # The module that was trained (llm_core.models.classifier): llm_core's decoder (Llama, Qwen2
        # and Mistral alike) and the head on the last real token's state. lm_head is never called.
        model, _ = load_model(model_dir, self.device, self.dtype, adapter_dir=adapter_dir)
        head = load_file(str(head_dir / CLASSIFIER_FILE))
        if head["weight"].shape[0] != len(self.labels):
            raise ValueError(f"{head_dir}: head has {head['weight'].shape[0]} outputs, labels.json {len(self.labels)}")
        self.module = SequenceClassifier(TrainableCausalLM(model), len(self.labels)).to(self.device).eval()
        self.module.head.load_state_dict(head)
        config = json.loads((model_dir / "config.json").read_text())
        self.batch_size = batch_size
        self.engine = HeadEngine("classifier-head", self.device)
        trained_max = (_adapter_max_tokens(head_dir) if adapter_dir is not None
                       else config.get("llmbatch_max_tokens"))
        self.max_tokens = max_tokens or trained_max or config.get("max_position_embeddings", 512)

    @torch.no_grad()
    def predict_proba(self, texts: list[str]) -> list[list[float]]:
        """Per text, the probability of each label (in `self.labels` order)."""
        ids = [self.tokenizer(t or "", add_special_tokens=False)["input_ids"][: self.max_tokens] or
               [self.tokenizer.pad_token_id] for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths pad less
        out: list[list[float] | None] = [None] * len(ids)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            input_ids, mask = right_pad([ids[i] for i in chunk], self.tokenizer.pad_token_id)
            logits = self.module(input_ids.to(self.device), mask.to(self.device))
            probs = torch.softmax(logits.float(), dim=-1).cpu().tolist()
            for i, p in zip(chunk, probs):
                out[i] = p
        return out  # type: ignore[return-value]

    def predict(self, texts: list[str]) -> list[str]:
        return [self.labels[max(range(len(p)), key=p.__getitem__)] for p in self.predict_proba(texts)]

    def check_labels(self, labels) -> None:
        """A classify job's labels must be the head's (any order): the head can answer no other."""
        if labels and set(labels) != set(self.labels):
            raise ValueError(f"the model's classifier head knows labels {self.labels}; the job asks for "
                             f"{list(labels)}: list the same labels in the job's task")

    def run_task(self, spec, texts: list, params=None, **_ignored) -> list:
        """One llm_core RowResult per text, as LLM.run_task gives: the label, or an error for a bad row."""
        if spec.kind != TaskKind.CLASSIFY:
            raise ValueError(f"a classification model runs classify jobs only, not {spec.kind}")
        self.check_labels(spec.labels)
        errors, good = screen_rows(spec, texts)
        results: list = [RowResult(None, errors[i]) if i in errors else None for i in range(len(texts))]
        if good:
            labels = self.predict([texts[i] for i in good])
            for i, label in zip(good, labels):
                n = min(len(self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]), self.max_tokens)
                results[i] = RowResult(label, None, "stop", n, 0)
        return results


def _adapter_max_tokens(adapter_dir: Path) -> int | None:
    """The sequence length a classification adapter was trained with (its llmbatch block's max_tokens)."""
    block = read_adapter_config(adapter_dir).get("llmbatch") or {}
    value = block.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else None


def load_classifier(model_dir: str | Path, **kwargs) -> Classifier:
    """The object an inference actor keeps: `.predict(texts) -> labels`, `.labels`."""
    return Classifier(model_dir, **kwargs)
