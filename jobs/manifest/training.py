"""Job manifest schema v1 for training jobs (`kind: training`): pretrain or fine-tune on Ray Train.

The sections the workers read are workers.training.config's dataclasses, composed here; this
module adds what only the control plane needs (name, resources, output mode, restarts) and the
checks that span fields (task vs model, objective vs columns). The DeepSpeed `override` block is
checked by DeepSpeed's own parser, on the config the workers will build from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from jobs.manifest.common import CrossChecked, JobName, OutputSpec, Problems, Strict
from workers.training.config import (
    BPE,
    LORA_TARGET_NAMES,
    AdapterSpec,
    CheckpointSpec,
    DataSpec,
    DeepSpeedSpec,
    ModelSpec,
    Objective,
    OptimizerSpec,
    TrainingConfig,
    TrainingSpec,
    TrainingTask,
)
from workers.training.deepspeed import check_deepspeed_config, deepspeed_config


class TrainingResources(Strict):
    workers: int = Field(1, ge=1, le=4096)
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)


class TrainingManifest(CrossChecked):
    version: Literal[1] = 1
    kind: Literal["training"] = "training"
    name: JobName
    task: TrainingTask
    objective: Objective = Objective.CAUSAL_LM
    model: ModelSpec
    adapter: AdapterSpec | None = None  # LoRA; none: a full fine-tune
    data: DataSpec
    optimizer: OptimizerSpec = OptimizerSpec()
    training: TrainingSpec = TrainingSpec()
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    resources: TrainingResources = TrainingResources()
    checkpoint: CheckpointSpec
    output: OutputSpec
    max_failures: int = Field(3, ge=0, le=100, description="worker-group restarts (Ray Train FailureConfig)")

    def training_config(self) -> TrainingConfig:
        """What the workers train (they never see the manifest itself)."""
        return TrainingConfig(task=self.task, objective=self.objective, model=self.model, data=self.data,
                              optimizer=self.optimizer, training=self.training, deepspeed=self.deepspeed,
                              checkpoint=self.checkpoint, output_uri=self.output.uri, adapter=self.adapter)

    def _cross_field_problems(self) -> Problems:
        p = self._model_problems()
        t, data = self.training, self.data
        if self.output.mode == "retry_errors":
            p.append((("output", "mode"), "retry_errors is for inference jobs (a training run has no error rows)"))
        if (t.max_steps is None) == (t.epochs is None):
            p.append((("training", "max_steps"), "give exactly one of max_steps or epochs"))
        if data.eval is not None and data.eval_fraction:
            p.append((("data", "eval_fraction"), "give an eval uri or an eval_fraction, not both"))
        if self.objective == Objective.CLASSIFICATION and data.packing:
            p.append((("data", "packing"), "packing is for objective: causal_lm or sft"))
        if data.labels and self.objective != Objective.CLASSIFICATION:
            p.append((("data", "labels"), "only for objective: classification"))
        if data.labels and len(set(data.labels)) != len(data.labels):
            p.append((("data", "labels"), "labels must be distinct"))
        ds = self.deepspeed
        if ds.offload_params != "none" and ds.zero_stage != 3:
            p.append((("deepspeed", "offload_params"), "parameter offload needs zero_stage 3"))
        if ds.offload_optimizer != "none" and ds.zero_stage == 0:
            p.append((("deepspeed", "offload_optimizer"), "optimizer offload needs zero_stage 1-3"))
        p += self._placement_problems()
        if self.adapter is not None:
            p += self._adapter_problems()
        if ds.override:
            p += [(("deepspeed", "override", *loc), msg) for loc, msg in self._override_problems()]
        return p

    def _placement_problems(self) -> Problems:
        """Placements and options that fail or waste the hardware: refused before any worker starts."""
        p: Problems = []
        gpus = self.resources.gpus_per_worker
        if gpus not in (0, 1):
            # A fraction puts two NCCL ranks on one GPU (NCCL refuses or deadlocks); more than one
            # leaves the others idle: each rank drives one device.
            p.append((("resources", "gpus_per_worker"),
                      f"must be 0 or 1 for training (one rank per GPU), not {gpus:g}; "
                      "use resources.workers for more GPUs"))
        if self.training.compile and self.deepspeed.zero_stage == 3:
            p.append((("training", "compile"), "not with deepspeed.zero_stage 3: its parameter hooks break "
                                               "the compiled graph at every layer; use zero_stage 0-2"))
        return p

    def _adapter_problems(self) -> Problems:
        p: Problems = []
        if self.task != TrainingTask.FINETUNE:
            p.append((("adapter",), "adapters train on top of a model: use task: finetune (a pretrain trains every weight)"))
        unknown = [t for t in self.adapter.target_modules if t not in LORA_TARGET_NAMES]
        if unknown:
            p.append((("adapter", "target_modules"),
                      f"unknown {unknown}; the decoder's linears are {', '.join(LORA_TARGET_NAMES)}"))
        if len(set(self.adapter.target_modules)) != len(self.adapter.target_modules):
            p.append((("adapter", "target_modules"), "names must be distinct"))
        return p

    def _model_problems(self) -> Problems:
        """A fine-tune keeps its model's shape and tokenizer; a pretrain must name both."""
        p: Problems = []
        m = self.model
        if self.task == TrainingTask.FINETUNE:
            if not m.uri:
                p.append((("model", "uri"), "finetune needs the model to start from"))
            for name in ("vocab", "vocab_size"):
                if getattr(m, name) is not None:
                    p.append((("model", name), "only for task: pretrain (a fine-tune keeps its model's)"))
            return p
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
        return p

    def _override_problems(self) -> Problems:
        # "auto" is decided on each worker; fp32 is what a CPU gets, and needs no device here.
        precision = "fp32" if self.deepspeed.precision == "auto" else self.deepspeed.precision
        full = deepspeed_config(self.deepspeed, self.training, precision)
        return check_deepspeed_config(full, world_size=self.resources.workers)
