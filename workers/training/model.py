"""What is trained: the model a training config names, and the export to a model folder.

Plain torch modules only; DeepSpeed is applied by workers.training.loop. The model is llm_core's own
decoder (fused q/k/v and gate/up, SDPA attention, chunked cross-entropy) wrapped by
`TrainableCausalLM`; every place that builds a model for training (the loop, benchmarks/train.py)
calls `build_model`, so both sides of the benchmark train the same module.

Canonical folder written by `export_model`, in transformers' layout (unfused weight names, an HF
config.json) so it loads in transformers and in llm_core's loader alike: config.json,
model.safetensors, tokenizer.json (+ chat template); for classification also
classifier.safetensors (weight, bias), labels.json and `"llmbatch_task": "classification"` in
config.json.

With `adapter` (LoRA, llm_core.models.lora) the decoder's weights are frozen and wrapped; the
classification head still trains fully. `adapter.export: merged` writes the canonical folder
above with the adapters folded in; `adapter` writes only the adapter folder
(llm_core.models.lora_files: PEFT's layout, naming the base), plus a classifier's head and labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import structlog
import torch
from safetensors.torch import save_file
from torch import nn

from llm_core.models import LlamaForCausalLM, ModelConfig, TrainableCausalLM, is_supported, load_model
from llm_core.models import hf_config_dict, read_config_dict, to_hf_names
from llm_core.models.classifier import CLASSIFICATION_TASK, CLASSIFIER_FILE, LABELS_FILE, SequenceClassifier
from llm_core.models.lora import add_lora, adapter_weights, lora_settings, merged_state
from llm_core.models.lora_files import write_adapter_folder
from llm_core.models.training import init_weights
from workers.training.config import AdapterSpec, ModelSpec, Objective, TrainingConfig, TrainingTask

log = structlog.get_logger()

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
INIT_STD = 0.02  # of a pretrained model's fresh weights, as transformers' initializer_range


def new_llama_config(spec: ModelSpec, vocab_size: int, seq_len: int, tokenizer) -> dict:
    """The HF config.json (as a dict) of a new Llama of the shape `spec` gives."""
    inter = spec.intermediate_size or int(8 * spec.hidden_size / 3 + 63) // 64 * 64
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": inter,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads or spec.num_heads,
        "max_position_embeddings": spec.max_position_embeddings or seq_len,
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_embeddings,
        "initializer_range": INIT_STD,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_model(config: TrainingConfig, tokenizer, model_dir: Path | None, labels: list[str] | None,
                seed: int) -> nn.Module:
    """The module to train, in fp32 (DeepSpeed casts to bf16/fp16 when the config says so)."""
    torch.manual_seed(seed)  # same initial weights on every rank
    if config.task == TrainingTask.FINETUNE:
        source = read_config_dict(model_dir)
        if not is_supported(source):
            raise ValueError(f"{model_dir}: the native decoder cannot train this model (model_type "
                             f"{source.get('model_type')!r}); it takes Llama, Qwen2 and Mistral with SiLU")
        decoder, _ = load_model(model_dir, device="cpu", dtype=torch.float32)
    else:
        source = new_llama_config(config.model, len(tokenizer), config.data.seq_len, tokenizer)
        decoder = LlamaForCausalLM(ModelConfig.from_dict(source))
        init_weights(decoder, std=INIT_STD)
    if config.adapter is not None:  # before compiling: the wrappers are part of each layer's graph
        spec = config.adapter
        add_lora(decoder, spec.rank, spec.alpha, spec.dropout, spec.target_modules)
    lm = TrainableCausalLM(decoder.train(), source_config=source,
                           compile_layers=config.training.compile)
    module = SequenceClassifier(lm, len(labels)) if config.objective == Objective.CLASSIFICATION else lm
    if config.adapter is not None:
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info("train.lora", rank=config.adapter.rank, targets=config.adapter.target_modules,
                 trainable_params=trainable, all_params=sum(p.numel() for p in module.parameters()))
    return module


def causal_lm_of(module: nn.Module) -> TrainableCausalLM:
    return module.lm if isinstance(module, SequenceClassifier) else module


def count_params(module: nn.Module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters); ZeRO-3 partitions report ds_numel."""
    total = embed = 0
    for name, p in module.named_parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        if "embed_tokens" in name:
            embed += n
    return total, total - embed


def export_model(state_dict: dict[str, torch.Tensor], module: nn.Module, tokenizer_dir: Path,
                 labels: list[str] | None, dest: Path, seq_len: int, adapter: AdapterSpec | None = None,
                 base_ref: str | None = None, base_identity: dict | None = None) -> None:
    """Write the trained model to local `dest` from a full (gathered) state dict of `module`:
    the canonical folder, with any LoRA adapters merged, or with `adapter.export: adapter` the
    adapter folder naming the base (`base_ref`, and the identity the driver computed)."""
    dest.mkdir(parents=True, exist_ok=True)
    lm = causal_lm_of(module)
    # "lm." (classifier) and "model." (TrainableCausalLM) prefixes off: native decoder names.
    native = {k.removeprefix("lm.").removeprefix("model."): v for k, v in state_dict.items()
              if not k.startswith("head.")}
    if adapter is not None and adapter.export == "adapter":
        # A classifier's adapter says in adapter_config.json what its model folder says in config.json.
        extra = {"task": CLASSIFICATION_TASK, "max_tokens": seq_len} if labels is not None else None
        _export_adapter(native, lm, base_ref, base_identity, dest, extra)
        _export_head(state_dict, labels, dest)
        return
    native = merged_state(lm.model, native, lm.config)  # the plain decoder's names; as is without LoRA
    # A copy per tensor: split q/k/v views share storage, which safetensors refuses.
    lm_state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                for k, v in to_hf_names(native, lm.config).items()}
    save_file(lm_state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config_dict(lm.config, extra=lm.source_config)
    config["torch_dtype"] = str(next(iter(lm_state.values())).dtype).removeprefix("torch.")
    _export_head(state_dict, labels, dest)
    if labels is not None:
        config["llmbatch_task"] = CLASSIFICATION_TASK
        config["llmbatch_num_labels"] = len(labels)
        config["llmbatch_max_tokens"] = seq_len  # texts were cut to this many tokens in training
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, dest / name)


def _export_adapter(native: dict[str, torch.Tensor], lm: TrainableCausalLM, base_ref: str | None,
                    base_identity: dict | None, dest: Path, extra: dict | None) -> None:
    settings = lora_settings(lm.model)
    if settings is None:
        raise ValueError("adapter.export: adapter, but the trained model has no LoRA adapters")
    write_adapter_folder(dest, adapter_weights(lm.model, native), settings["rank"], settings["alpha"],
                         settings["dropout"], settings["targets"], base_ref=base_ref or "",
                         base_identity=base_identity, base_config=lm.config, extra=extra)


def _export_head(state_dict: dict[str, torch.Tensor], labels: list[str] | None, dest: Path) -> None:
    """A classifier's head (weight, bias) and labels, beside the model or the adapter."""
    if labels is None:
        return
    head = {"weight": state_dict["head.weight"].detach().float().cpu().contiguous(),
            "bias": state_dict["head.bias"].detach().float().cpu().contiguous()}
    save_file(head, str(dest / CLASSIFIER_FILE))
    (dest / LABELS_FILE).write_text(json.dumps(labels, indent=1))
