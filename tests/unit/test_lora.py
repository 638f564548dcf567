"""LoRA on the native decoder (llm_core.models.lora): the wrapped forward is the base plus exactly
the merged low-rank update, per HF target slice of the fused q/k/v and gate/up linears; only the
adapters train; and training's build/optimizer/export use them (workers.training)."""

from __future__ import annotations

import json

import pytest
import torch

from llm_core.models import LlamaForCausalLM, ModelConfig, TrainableCausalLM
from llm_core.models.attention import PackedCausalAttention
from llm_core.models.lora import LoRALinear, add_lora, adapter_weights, merge_and_unwrap, merged_state
from llm_core.models.lora_names import LORA_TARGETS, peft_key
from llm_core.models.training import init_weights

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)
SHAPES = {"llama": dict(TINY, model_type="llama"),
          "llama-tied": dict(TINY, model_type="llama", tie_word_embeddings=True),
          "qwen2": dict(TINY, model_type="qwen2")}  # q/k/v biases
TARGET_SETS = [list(LORA_TARGETS), ["q_proj", "v_proj", "down_proj"], ["k_proj", "up_proj"]]


def tiny_decoder(shape: str = "llama", seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(ModelConfig.from_dict(SHAPES[shape]))
    init_weights(model, std=0.2)
    with torch.no_grad():  # non-zero biases, so a bias lost by the wrapper would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return model.eval()


def logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    n = ids.shape[0]
    hidden = model(ids, torch.arange(n), PackedCausalAttention([n]))
    return model.compute_logits(hidden)


def randomize_b(model, std: float = 0.3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.modules():
            if isinstance(w, LoRALinear):
                w.lora_B.copy_(torch.randn(w.lora_B.shape, generator=g) * std)


IDS = torch.randint(0, 96, (11,), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("targets", TARGET_SETS, ids=["all", "q-v-down", "k-up"])
def test_zero_b_is_the_base_and_random_b_is_the_merged_model(shape, targets):
    base = tiny_decoder(shape)
    expected = logits(base, IDS)
    model = tiny_decoder(shape)
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=targets)
    torch.testing.assert_close(logits(model, IDS), expected, rtol=0, atol=0)  # B = 0: exactly the base
    randomize_b(model)
    wrapped = logits(model, IDS)
    assert (wrapped - expected).abs().max() > 1e-2  # the update is not negligible
    merge_and_unwrap(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.layers[0].self_attn.qkv_proj) is torch.nn.Linear
    torch.testing.assert_close(logits(model, IDS), wrapped, rtol=0, atol=1e-5)


def test_each_target_moves_only_its_own_output_rows():
    cfg = ModelConfig.from_dict(SHAPES["llama"])
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    model = tiny_decoder()
    [wrapper] = [w for w in add_lora(model, 2, 2.0, 0.0, ["k_proj"]) if w.layer == 0]
    randomize_b(model)
    x = torch.randn(5, cfg.hidden_size)
    delta = wrapper(x) - wrapper.base(x)
    assert delta[:, :q].abs().max() == 0 and delta[:, q + kv:].abs().max() == 0
    assert delta[:, q:q + kv].abs().max() > 0


def test_only_the_adapters_train_under_stable_names():
    model = tiny_decoder("llama-tied")
    add_lora(model, rank=4, alpha=8.0, dropout=0.1, targets=["q_proj", "v_proj", "o_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"layers.{i}.self_attn.{m}.lora_{x}" for i in (0, 1) for m in ("qkv_proj", "o_proj")
                         for x in "AB"]
    assert not model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad
    assert "layers.0.self_attn.qkv_proj.base.weight" in model.state_dict()
    model.train()
    logits(model, IDS).square().mean().backward()
    wrapper = model.layers[0].self_attn.qkv_proj
    # B starts at 0: the first step moves B only (A's gradient goes through B), as in the paper.
    assert wrapper.lora_A.grad.abs().max() == 0 and wrapper.lora_B.grad.abs().max() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_init_is_peft_kaiming_uniform_and_b_zero():
    model = tiny_decoder()
    add_lora(model, rank=8, alpha=16.0, dropout=0.0, targets=["gate_proj", "up_proj"])
    w = model.layers[0].mlp.gate_up_proj
    assert w.lora_A.shape == (2 * 8, 32) and w.lora_B.shape == (2 * 48, 8)
    bound = 1 / 32 ** 0.5  # kaiming_uniform(a=sqrt(5)) over fan_in 32, as nn.Linear and PEFT
    assert w.lora_A.abs().max() <= bound and w.lora_A.abs().max() > bound * 0.8
    assert w.lora_B.abs().max() == 0


def test_adapter_weights_in_peft_keys_and_shapes():
    model = tiny_decoder("qwen2")
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=list(LORA_TARGETS))
    weights = adapter_weights(model)
    cfg = model.config
    assert len(weights) == 2 * 7 * 2
    assert weights[peft_key(1, "k_proj", "A")].shape == (4, 32)
    assert weights[peft_key(1, "k_proj", "B")].shape == (cfg.num_key_value_heads * cfg.head_dim, 4)
    assert weights[peft_key(0, "o_proj", "A")].shape == (4, cfg.num_attention_heads * cfg.head_dim)
    assert weights[peft_key(0, "down_proj", "A")].shape == (4, 48)
    assert weights[peft_key(0, "up_proj", "B")].shape == (48, 4)
    assert all(t.is_contiguous() for t in weights.values())


def test_merged_state_from_a_state_dict_equals_merge_and_unwrap():
    """Export works from a gathered state dict (wrapped names), not from live modules."""
    model = tiny_decoder()
    add_lora(model, rank=4, alpha=4.0, dropout=0.0, targets=["q_proj", "v_proj", "gate_proj", "down_proj"])
    randomize_b(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_state(model, state, model.config)
    assert not any("lora_" in k or ".base." in k for k in merged)
    reference = merge_and_unwrap(model).state_dict()
    assert merged.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(merged[name], value, rtol=0, atol=1e-6, msg=name)


def test_bf16_autocast_runs_the_adapters_in_bf16():
    model = tiny_decoder()
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=list(LORA_TARGETS))
    randomize_b(model)
    reference = logits(model, IDS)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logits(model, IDS)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()
    out.float().square().mean().backward()
    wrapper = model.layers[1].mlp.gate_up_proj
    assert wrapper.lora_B.grad.dtype == torch.float32 and wrapper.lora_B.grad.abs().max() > 0


def test_refuses_unknown_targets_and_double_wrapping():
    model = tiny_decoder()
    with pytest.raises(ValueError, match="lm_head"):
        add_lora(model, 4, 8.0, 0.0, ["lm_head"])
    add_lora(model, 4, 8.0, 0.0, ["q_proj"])
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, 4, 8.0, 0.0, ["q_proj"])


# --- training integration (workers.training) ---------------------------------------------------


def training_config(objective: str, adapter: dict | None, model_uri: str = "unused"):
    from workers.training.config import AdapterSpec, CheckpointSpec, DataSpec, DeepSpeedSpec, ModelSpec
    from workers.training.config import Objective, OptimizerSpec, TrainingConfig, TrainingSpec, TrainingTask

    return TrainingConfig(task=TrainingTask.FINETUNE, objective=Objective(objective), model=ModelSpec(uri=model_uri),
                          data=DataSpec(train="unused", seq_len=32), optimizer=OptimizerSpec(weight_decay=0.1),
                          training=TrainingSpec(), deepspeed=DeepSpeedSpec(), checkpoint=CheckpointSpec(uri="unused"),
                          output_uri="unused", adapter=AdapterSpec(**adapter) if adapter is not None else None)


def test_build_model_classifier_trains_head_and_adapters_only(tiny_dir):
    from workers.training.checkpoint import has_frozen
    from workers.training.model import build_model
    from workers.training.optim import param_groups

    cfg = training_config("classification", {"rank": 4, "target_modules": ["q_proj", "v_proj"]})
    module = build_model(cfg, tokenizer=None, model_dir=tiny_dir, labels=["a", "b", "c"], seed=0)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all(n.startswith("head.") or n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert has_frozen(module)  # so checkpoints leave the base out (exclude_frozen_parameters)
    groups = param_groups(module, weight_decay=0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    lm_only = build_model(training_config("sft", {"rank": 4}), tokenizer=None, model_dir=tiny_dir,
                          labels=None, seed=0)
    assert [g["weight_decay"] for g in param_groups(lm_only, 0.1)] == [0.1]  # no empty group for ZeRO


def test_build_model_seeds_the_same_adapters_on_every_rank(tiny_dir):
    from workers.training.model import build_model

    cfg = training_config("sft", {"rank": 4})
    a = build_model(cfg, None, tiny_dir, None, seed=3).state_dict()
    b = build_model(cfg, None, tiny_dir, None, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", ["sft", "classification"])
def test_export_merged_and_adapter_folders_give_the_same_model(tiny_dir, tmp_path, objective):
    from llm_core.models import load_model
    from llm_core.models.lora_files import apply_adapter_folder, read_adapter_config
    from workers.training.model import build_model, export_model

    labels = ["x", "y"] if objective == "classification" else None
    spec = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "k_proj", "o_proj", "up_proj"]}
    module = build_model(training_config(objective, {**spec, "export": "adapter"}), None, tiny_dir, labels, 0)
    randomize_b(module)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    export_model(state, module, tiny_dir, labels, tmp_path / "merged", seq_len=32)
    identity = {"kind": "local", "path": str(tiny_dir), "files": {"model.safetensors": "ab" * 32}}
    adapter = training_config(objective, {**spec, "export": "adapter"}).adapter
    export_model(state, module, tiny_dir, labels, tmp_path / "adapter", seq_len=32, adapter=adapter,
                 base_ref=str(tiny_dir), base_identity=identity)

    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    head = {"classifier.safetensors", "labels.json"} if labels else set()
    assert files == {"adapter_config.json", "adapter_model.safetensors"} | head  # no tokenizer, no base
    config = read_adapter_config(tmp_path / "adapter")
    assert config["base_model_name_or_path"] == str(tiny_dir) and config["llmbatch"]["base_model"] == identity
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["target_modules"] == spec["target_modules"]
    if labels:
        assert config["llmbatch"]["task"] == "classification" and config["llmbatch"]["max_tokens"] == 32
        merged_cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
        assert merged_cfg["llmbatch_task"] == "classification"

    merged, _ = load_model(tmp_path / "merged", device="cpu", dtype=torch.float32)
    based, _ = load_model(tiny_dir, device="cpu", dtype=torch.float32)
    apply_adapter_folder(based, tmp_path / "adapter")
    ids = torch.randint(0, merged.config.vocab_size, (9,), generator=torch.Generator().manual_seed(0))
    expected = logits(merge_and_unwrap(module.lm.model if labels else module.model).eval(), ids)
    torch.testing.assert_close(logits(merged, ids), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(based, ids), expected, rtol=0, atol=1e-5)
    assert (logits(based, ids) - logits(load_model(tiny_dir, "cpu", torch.float32)[0], ids)).abs().max() > 1e-3


def test_trainable_wrapper_keeps_the_loss_path():
    """TrainableCausalLM over a LoRA decoder: a few optimizer steps lower the loss."""
    model = tiny_decoder()
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=list(LORA_TARGETS))
    lm = TrainableCausalLM(model.train())
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(5):
        loss = lm(**batch)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(lm(**batch)) < first - 0.05
