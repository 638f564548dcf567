"""Job manifest schema v1 for training jobs (`kind: training`): pretrain or fine-tune on Ray Train.

Same family as the inference manifest: unknown fields are refused, every problem is reported at
once with its field path. Checks that span fields (task vs model, objective vs columns) and the
DeepSpeed `override` block (parsed by DeepSpeed's own config classes) run after field validation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator

from jobs.manifest.schema import CrossChecked, OutputSpec, Strict

BPE = "bpe"  # model.vocab value: train a byte-level BPE on the training data


class ModelSpec(Strict):
    """finetune: `uri` of a model folder. pretrain: a tokenizer and the Llama shape to build."""

    uri: str | None = Field(None, description="finetune: a model folder, s3:// prefix or builtin:<name>")
    # Named `vocab`, not `tokenizer`: the manifest's credential check refuses keys containing "token".
    vocab: str | None = Field(None, description="pretrain: a model ref whose tokenizer to use, or 'bpe'")
    vocab_size: int | None = Field(None, ge=256, le=262144, description="bpe only: vocabulary to train")
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8, description="default: about 8/3 of hidden_size")
    max_position_embeddings: int | None = Field(None, ge=16, description="default: data.seq_len")
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = True


class DataSpec(Strict):
    train: str | list[str] = Field(..., description="Parquet file(s), folder/prefix or glob; local or s3://")
    eval: str | list[str] | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out rows (by hash of id) when no eval uri")
    text_column: str = "text"
    prompt_column: str = "prompt"
    response_column: str = "response"
    label_column: str = "label"
    id_column: str = "id"
    labels: list[str] | None = Field(None, min_length=2, description="classification: default = sorted labels seen")
    seq_len: int = Field(512, ge=8, le=131072)
    packing: bool | None = Field(None, description="causal_lm: concatenate documents into full sequences (default)")

    @field_validator("train")
    @classmethod
    def _non_empty(cls, uri):
        uris = [uri] if isinstance(uri, str) else uri
        if not uris or any(not u.strip() for u in uris):
            raise ValueError("must be a non-empty string or list of strings")
        return uri


class OptimizerSpec(Strict):
    lr: float = Field(3e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)


class TrainingSpec(Strict):
    micro_batch: int = Field(8, ge=1, le=65536)
    grad_accum: int = Field(1, ge=1, le=65536)
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    eval_every: int | None = Field(None, ge=1, description="steps; default: only at the end")
    eval_max_batches: int = Field(50, ge=1, description="per worker")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    compile: bool = Field(False, description="torch.compile each decoder layer: pays on long GPU runs, "
                                             "costs minutes of compiling first")


class DeepSpeedSpec(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_params: Literal["none", "cpu"] = "none"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    gradient_clipping: float = Field(1.0, ge=0)
    override: dict[str, Any] = Field(default_factory=dict, description="raw DeepSpeed config, merged last")


class TrainingResources(Strict):
    workers: int = Field(1, ge=1, le=4096)
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)


class CheckpointSpec(Strict):
    uri: str = Field(..., min_length=1)
    every_steps: int = Field(100, ge=1)
    keep: int = Field(2, ge=1)


class TrainingManifest(CrossChecked):
    version: Literal[1] = 1
    kind: Literal["training"] = "training"
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    task: Literal["pretrain", "finetune"]
    objective: Literal["causal_lm", "sft", "classification"] = "causal_lm"
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec = OptimizerSpec()
    training: TrainingSpec = TrainingSpec()
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    resources: TrainingResources = TrainingResources()
    checkpoint: CheckpointSpec
    output: OutputSpec
    max_failures: int = Field(3, ge=0, le=100, description="worker-group restarts (Ray Train FailureConfig)")

    def _cross_field_problems(self) -> list[tuple[tuple, str]]:
        p: list[tuple[tuple, str]] = []
        m, t = self.model, self.training
        if self.task == "finetune":
            if not m.uri:
                p.append((("model", "uri"), "finetune needs the model to start from"))
            for name in ("vocab", "vocab_size"):
                if getattr(m, name) is not None:
                    p.append((("model", name), "only for task: pretrain (a fine-tune keeps its model's)"))
        else:
            if m.uri:
                p.append((("model", "uri"), "pretrain builds a new model; use task: finetune to start from one"))
            if not m.vocab:
                p.append((("model", "vocab"), "pretrain needs a tokenizer: a model ref or 'bpe'"))
            if m.vocab == BPE and m.vocab_size is None:
                p.append((("model", "vocab_size"), "vocab: bpe needs vocab_size"))
            if m.vocab not in (None, BPE) and m.vocab_size is not None:
                p.append((("model", "vocab_size"), "only with vocab: bpe"))
            if m.hidden_size % m.num_heads:
                p.append((("model", "num_heads"), "must divide hidden_size"))
            if m.num_heads % (m.num_kv_heads or m.num_heads):
                p.append((("model", "num_kv_heads"), "must divide num_heads"))
            if (m.hidden_size // m.num_heads) % 2:
                p.append((("model", "hidden_size"), "head size (hidden_size / num_heads) must be even for RoPE"))
        if (t.max_steps is None) == (t.epochs is None):
            p.append((("training", "max_steps"), "give exactly one of max_steps or epochs"))
        if self.data.eval is not None and self.data.eval_fraction:
            p.append((("data", "eval_fraction"), "give an eval uri or an eval_fraction, not both"))
        if self.objective != "causal_lm" and self.data.packing:
            p.append((("data", "packing"), "packing is only for objective: causal_lm"))
        if self.data.labels and self.objective != "classification":
            p.append((("data", "labels"), "only for objective: classification"))
        if self.data.labels and len(set(self.data.labels)) != len(self.data.labels):
            p.append((("data", "labels"), "labels must be distinct"))
        ds = self.deepspeed
        if ds.offload_params != "none" and ds.zero_stage != 3:
            p.append((("deepspeed", "offload_params"), "parameter offload needs zero_stage 3"))
        if ds.offload_optimizer != "none" and ds.zero_stage == 0:
            p.append((("deepspeed", "offload_optimizer"), "optimizer offload needs zero_stage 1-3"))
        if ds.override:
            p += [(("deepspeed", "override", *loc), msg) for loc, msg in self._check_override()]
        return p

    def _check_override(self) -> list[tuple[tuple, str]]:
        # Lazy: importing deepspeed takes seconds, and only an override needs its parser.
        from workers.training.deepspeed import check_deepspeed_config, deepspeed_config

        full = deepspeed_config(self, precision="fp32" if self.deepspeed.precision == "auto" else None)
        return check_deepspeed_config(full, world_size=self.resources.workers)

    def manifest_hash(self) -> str:
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()
