"""Training runs on llm_core's own decoder: its loss and gradients equal transformers' on the same
weights, the chunked cross-entropy equals the plain one, and the exported folder loads in
transformers, in llm_core's loader and in the classifier head with the trained module's outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_core.models import LlamaForCausalLM, ModelConfig, TrainableCausalLM, load_model
from llm_core.models.attention import PackedCausalAttention
from llm_core.models.hf_export import hf_config_dict, to_hf_names
from llm_core.models.loader import to_native_names
from llm_core.models.rope import inverse_frequencies
from llm_core.models.training import IGNORE_INDEX, chunked_cross_entropy
from llm_core.models.batches import right_pad
from llm_core.models.classifier import SequenceClassifier
from workers.training.config import CheckpointSpec, DataSpec, DeepSpeedSpec, ModelSpec, Objective
from workers.training.config import OptimizerSpec, TrainingConfig, TrainingSpec, TrainingTask
from workers.training.model import build_model, count_params, export_model

TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
    pad_token_id=None,  # else transformers' embedding freezes the pad row (ours trains it)
)
ARCHS = {
    "llama-untied": ("llama", dict(tie_word_embeddings=False)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "qwen2-qkv-bias": ("qwen2", dict(tie_word_embeddings=False, rope_theta=1e6)),
    "llama3-rope-bias": ("llama", dict(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16),
    )),
}
PARITY = ["llama-untied", "llama-tied", "qwen2-qkv-bias"]


def training_config(task: TrainingTask, objective: Objective, model: ModelSpec = ModelSpec(),
                    seq_len: int = 64) -> TrainingConfig:
    """What build_model reads; the data and checkpoint locations are never opened here."""
    return TrainingConfig(task=task, objective=objective, model=model, data=DataSpec(train="unused", seq_len=seq_len),
                          optimizer=OptimizerSpec(), training=TrainingSpec(), deepspeed=DeepSpeedSpec(),
                          checkpoint=CheckpointSpec(uri="unused"), output_uri="unused")


def hf_and_native(arch: str, chunk_tokens: int = 2048):
    """A random transformers model and our trainable model holding the same weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = ARCHS[arch]
    config = AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random biases and norms, so a skipped one would show
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0, 0.5)
    source = config.to_dict()
    cfg = ModelConfig.from_dict(source)
    decoder = LlamaForCausalLM(cfg)
    decoder.load_state_dict(to_native_names(hf.state_dict(), cfg))
    return hf, TrainableCausalLM(decoder, source_config=source, chunk_tokens=chunk_tokens)


def padded_batch(vocab: int = 256) -> dict[str, torch.Tensor]:
    """Three right-padded rows (12, 7 and 3 tokens); row 0 has a 4-token prompt not trained on."""
    gen = torch.Generator().manual_seed(1)
    lengths, width = (12, 7, 3), 12
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[0, :4] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def native_grads(model: TrainableCausalLM, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Gradients of our parameters under HF names (fused ones split), for comparison."""
    return to_hf_names({k: p.grad for k, p in model.model.named_parameters()}, cfg)


@pytest.mark.parametrize("arch", PARITY)
def test_loss_and_gradients_match_transformers(arch):
    hf, ours = hf_and_native(arch)
    batch = padded_batch()
    want = hf(**batch).loss
    got = ours(**batch)
    assert abs(got.item() - want.item()) < 1e-5
    want.backward()
    got.backward()
    grads = native_grads(ours, ours.config)
    hf_params = dict(hf.named_parameters())
    names = ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
             "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
             "model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight"]
    if ours.config.qkv_bias:
        names.append("model.layers.0.self_attn.k_proj.bias")
    if not ours.config.tie_word_embeddings:
        names.append("lm_head.weight")
    for name in names:
        assert (grads[name] - hf_params[name].grad).abs().max().item() < 1e-4, name


def test_chunked_loss_equals_unchunked_loss_and_gradient():
    batch = padded_batch()  # 36 positions: chunks of 5 leave a ragged last one
    _, whole = hf_and_native("llama-tied", chunk_tokens=10_000)
    _, chunked = hf_and_native("llama-tied", chunk_tokens=5)
    a, b = whole(**batch), chunked(**batch)
    assert abs(a.item() - b.item()) < 1e-6
    a.backward()
    b.backward()
    for (name, p), q in zip(whole.named_parameters(), chunked.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_chunked_cross_entropy_is_the_mean_over_counted_targets():
    gen = torch.Generator().manual_seed(0)
    hidden, head = torch.randn(37, 16, generator=gen), torch.nn.Linear(16, 50, bias=False)
    targets = torch.randint(0, 50, (37,), generator=gen)
    targets[::3] = IGNORE_INDEX
    want = F.cross_entropy(head(hidden), targets, ignore_index=IGNORE_INDEX)
    assert torch.allclose(chunked_cross_entropy(hidden, targets, head, chunk_tokens=8), want, atol=1e-6)
    with torch.no_grad():  # eval: no checkpointing, same value
        assert torch.allclose(chunked_cross_entropy(hidden, targets, head, chunk_tokens=8), want, atol=1e-6)
    nothing = torch.full_like(targets, IGNORE_INDEX)  # eval's padding batches: 0, not nan
    assert chunked_cross_entropy(hidden, nothing, head, chunk_tokens=8).item() == 0.0


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_hf_names_and_config_round_trip(arch):
    _, ours = hf_and_native(arch)
    cfg = ours.config
    native = dict(ours.model.state_dict())
    back = to_native_names(to_hf_names(native, cfg), cfg)
    assert back.keys() == native.keys()
    assert all(torch.equal(back[k], native[k]) for k in native)
    assert ModelConfig.from_dict(hf_config_dict(cfg)) == cfg


def trained_copy(arch: str) -> TrainableCausalLM:
    """Our model after two SGD steps, so its weights are no longer the transformers model's."""
    _, ours = hf_and_native(arch)
    opt = torch.optim.SGD(ours.parameters(), lr=0.5)
    for _ in range(2):
        ours(**padded_batch()).backward()
        opt.step()
        opt.zero_grad()
    return ours.eval()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_export_loads_in_transformers_and_in_our_loader(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    ours = trained_copy(arch)
    export_model(ours.state_dict(), ours, tmp_path / "tok-none", None, tmp_path / "out", seq_len=64)
    ids = torch.randint(1, 256, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ours.model.compute_logits(ours.hidden_states(ids, torch.ones_like(ids)))
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
        assert (hf(input_ids=ids).logits - want).abs().max().item() < 1e-4
    native, cfg = load_model(tmp_path / "out", "cpu", "float32")
    assert cfg == ours.config
    with torch.inference_mode():
        hidden = native(ids.reshape(-1), torch.arange(40).repeat(2), PackedCausalAttention([40, 40]))
        got = native.compute_logits(hidden).view(2, 40, -1)
    assert (got - want).abs().max().item() < 1e-4


def test_classifier_hidden_state_at_last_real_token_matches_transformers():
    hf, ours = hf_and_native("qwen2-qkv-bias")
    batch = padded_batch()
    last = batch["attention_mask"].sum(1) - 1
    rows = torch.arange(3)
    with torch.no_grad():
        want = hf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = ours.hidden_states(batch["input_ids"], batch["attention_mask"])
    assert (got[rows, last] - want[rows, last]).abs().max().item() < 1e-4


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_finetuned_classifier_exports_to_the_head_runner(tmp_path, model_type):
    """build_model (finetune) -> export -> workers.inference.classifier_head gives the module's probabilities."""
    from tests.support.tiny_model import build_tiny_model
    from workers.inference.classifier_head import load_classifier

    base = build_tiny_model(tmp_path / "base", tokenizer="bpe", model_type=model_type)
    config = training_config(TrainingTask.FINETUNE, Objective.CLASSIFICATION, ModelSpec(uri=str(base)))
    module = build_model(config, None, base, ["a", "b", "c"], seed=3)
    assert isinstance(module, SequenceClassifier)
    cfg = module.lm.config  # the loader builds on the meta device: the rotary buffer must be real
    assert torch.equal(module.lm.model.rotary.inv_freq, inverse_frequencies(cfg.rope, cfg.head_dim))
    total, dense = count_params(module)
    assert total - dense == cfg.vocab_size * cfg.hidden_size
    export_model(module.state_dict(), module, base, ["a", "b", "c"], tmp_path / "out", seq_len=32)
    clf = load_classifier(tmp_path / "out", device="cpu")
    texts = ["Debian packages", "a batch job reads Parquet shards and writes results", "fox"]
    ids = [clf.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    input_ids, mask = right_pad(ids, clf.tokenizer.pad_token_id)
    with torch.no_grad():
        want = torch.softmax(module.eval()(input_ids, mask), -1)
    assert torch.allclose(torch.tensor(clf.predict_proba(texts)), want, atol=1e-5)


def test_pretrain_weights_are_seeded_and_initialised():
    spec = ModelSpec(vocab="bpe", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                     tie_embeddings=True)
    config = training_config(TrainingTask.PRETRAIN, Objective.CAUSAL_LM, spec, seq_len=64)
    tok = type("Tok", (), {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "__len__": lambda self: 300})()
    a, b = (build_model(config, tok, None, None, seed=7) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    m = a.model
    assert m.lm_head.weight is m.embed_tokens.weight
    assert abs(m.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert abs(m.layers[0].mlp.gate_up_proj.weight.std().item() - 0.02) < 0.002
    assert torch.equal(m.norm.weight, torch.ones(64))
    assert a.config.eos_token_ids == (2,) and a.source_config["pad_token_id"] == 2


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss_and_gradients():
    """training.compile: each layer compiled in place (names unchanged), same maths."""
    _, eager = hf_and_native("llama-tied")
    _, compiled = hf_and_native("llama-tied")
    compiled = TrainableCausalLM(compiled.model, source_config=compiled.source_config, compile_layers=True)
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)
    batch = padded_batch()
    for model in (eager, compiled):
        model(**batch).backward()
    assert torch.allclose(compiled(**batch), eager(**batch), atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
