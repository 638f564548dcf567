"""The training configuration: what the workers train, as typed, frozen dataclasses.

The training manifest (jobs.manifest.training) composes these sections and validates them with
pydantic, so each field, its default and its bounds are written once, here; the workers receive
a `TrainingConfig` and read typed attributes. The bounds are pydantic metadata on the field types
(`Annotated[..., Field(...)]`), which a plain construction ignores. Unknown fields are refused when
a manifest is validated (`__pydantic_config__`). Nothing here imports torch: manifests are parsed
on machines that never train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from cluster.storage.uri import check_uris
from workers.uri_field import MODEL, PATHS_IN_KEYS, READS, READS_WRITES, TOKENIZER_SOURCE

BPE = "bpe"  # model.vocab value: train a byte-level BPE on the training data

# Data named by a URI or a list of them, checked as every manifest checks data URIs.
Uris = Annotated[str | list[str], AfterValidator(check_uris)]
# Every field naming storage carries a workers.uri_field mark: the scope check at submit reads it.
ReadUris = Annotated[Uris, READS]
_STRICT = ConfigDict(extra="forbid")


class TrainingTask(StrEnum):
    PRETRAIN = "pretrain"  # a new model of the manifest's shape
    FINETUNE = "finetune"  # go on training model.uri


class Objective(StrEnum):
    CAUSAL_LM = "causal_lm"
    SFT = "sft"  # prompt -> response, loss on the response only
    CLASSIFICATION = "classification"  # a linear head on the last token's state


@dataclass(frozen=True)
class ModelSpec:
    """finetune: `uri` of a model folder. pretrain: a tokenizer and the Llama shape to build."""

    __pydantic_config__ = _STRICT
    uri: Annotated[str | None, MODEL,
                   Field(description="finetune: a model folder, s3:// prefix or builtin:<name>")] = None
    # Named `vocab`, not `tokenizer`: the manifest's credential check refuses keys containing "token".
    vocab: Annotated[str | None, TOKENIZER_SOURCE,
                     Field(description="pretrain: a model ref whose tokenizer to use, or 'bpe'")] = None
    vocab_size: Annotated[int | None, Field(ge=256, le=262144, description="bpe only: vocabulary to train")] = None
    hidden_size: Annotated[int, Field(ge=8)] = 256
    num_layers: Annotated[int, Field(ge=1)] = 4
    num_heads: Annotated[int, Field(ge=1)] = 4
    num_kv_heads: Annotated[int | None, Field(ge=1)] = None
    intermediate_size: Annotated[int | None, Field(ge=8, description="default: about 8/3 of hidden_size")] = None
    max_position_embeddings: Annotated[int | None, Field(ge=16, description="default: data.seq_len")] = None
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0
    tie_embeddings: bool = True


@dataclass(frozen=True)
class DataSpec:
    __pydantic_config__ = _STRICT
    train: Annotated[ReadUris, Field(description="Parquet file(s), folder/prefix or glob; local or s3://")]
    eval: ReadUris | None = None
    eval_fraction: Annotated[
        float, Field(ge=0.0, lt=1.0, description="hold out rows (by hash of id) when no eval uri")] = 0.0
    text_column: str = "text"
    prompt_column: str = "prompt"
    response_column: str = "response"
    label_column: str = "label"
    id_column: str = "id"
    labels: Annotated[
        list[str] | None, Field(min_length=2, description="classification: default = sorted labels seen")] = None
    seq_len: Annotated[int, Field(ge=8, le=131072)] = 512
    packing: Annotated[
        bool | None, Field(description="causal_lm: concatenate documents into full sequences (default on); "
                                   "sft: share rows among a micro-batch's samples, each attending only to "
                                   "itself (default off)")] = None


@dataclass(frozen=True)
class OptimizerSpec:
    __pydantic_config__ = _STRICT
    lr: Annotated[float, Field(gt=0, le=1.0)] = 3e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1


@dataclass(frozen=True)
class TrainingSpec:
    """The loop: batch sizes, length, and how often to evaluate and log."""

    __pydantic_config__ = _STRICT
    micro_batch: Annotated[int, Field(ge=1, le=65536)] = 8
    grad_accum: Annotated[int, Field(ge=1, le=65536)] = 1
    max_steps: Annotated[int | None, Field(ge=1)] = None
    epochs: Annotated[float | None, Field(gt=0)] = None
    eval_every: Annotated[int | None, Field(ge=1, description="steps; default: only at the end")] = None
    eval_max_batches: Annotated[int, Field(ge=1, description="per worker")] = 50
    log_every: Annotated[int, Field(ge=1)] = 10
    seed: int = 0
    compile: Annotated[bool, Field(description="torch.compile each decoder layer: pays on long GPU runs, "
                                               "costs minutes of compiling first")] = False


@dataclass(frozen=True)
class DeepSpeedSpec:
    __pydantic_config__ = _STRICT
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_params: Literal["none", "cpu"] = "none"
    precision: Annotated[Literal["auto", "bf16", "fp16", "fp32"],
                         Field(description="auto: bf16 on GPU; on CPU bf16 autocast over fp32 weights where the CPU "
                                           "has native bf16, else fp32")] = "auto"
    gradient_clipping: Annotated[float, Field(ge=0)] = 1.0
    # DeepSpeed's own config, merged last and passed on as is: a plain dict on purpose.
    override: Annotated[dict[str, Any], PATHS_IN_KEYS, Field(description="raw DeepSpeed config, merged last")] = field(
        default_factory=dict)


LORA_TARGET_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    """Train low-rank adapters (LoRA, Hu et al. 2021) on the named linears; the base stays frozen.

    `target_modules` uses HF module names (as PEFT does); the native decoder's fused q/k/v and
    gate/up get one adapter per named slice. `export`: `merged` writes a whole model folder with
    the adapters folded in; `adapter` writes only the adapters (PEFT's layout) and names the base.
    """

    __pydantic_config__ = _STRICT
    kind: Literal["lora"] = "lora"
    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[float, Field(gt=0, le=65536)] = 32.0
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # PEFT's default; dropout costs ~20% of a CPU step
    target_modules: Annotated[list[str], Field(min_length=1)] = field(
        default_factory=lambda: list(LORA_TARGET_NAMES))
    export: Literal["merged", "adapter"] = "merged"


@dataclass(frozen=True)
class CheckpointSpec:
    __pydantic_config__ = _STRICT
    uri: Annotated[str, READS_WRITES, Field(min_length=1)]  # restored on resume, then written
    every_steps: Annotated[int, Field(ge=1)] = 100
    keep: Annotated[int, Field(ge=1)] = 2


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a worker needs from a training manifest: the sections above, and where the
    trained model goes. What only the control plane needs (name, resources, output mode) stays
    in the manifest."""

    task: TrainingTask
    objective: Objective
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec
    training: TrainingSpec
    deepspeed: DeepSpeedSpec
    checkpoint: CheckpointSpec
    output_uri: str
    adapter: AdapterSpec | None = None  # None: full fine-tune (every weight trains)
