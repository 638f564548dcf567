"""Training speed without changing what is learned: the loss over target rows only, packed SFT
rows, bf16 autocast on CPU, SFT truncation, and the FLOP count behind MFU."""

from __future__ import annotations

import pytest
import torch

from llm_core import device as device_mod
from llm_core.models import LlamaForCausalLM, ModelConfig, TrainableCausalLM
from llm_core.models.training import (
    IGNORE_INDEX, block_causal_mask, chunked_cross_entropy, init_weights, positions_in_documents,
)
from workers.training.config import Objective
from workers.training.encode import collate, pack_rows
from workers.training.eval import forward_loss
from workers.training.metrics import flops_per_token, model_flops_per_token

SHAPE = dict(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
             tie_word_embeddings=True)


def tiny_lm(chunk_tokens: int = 2048, **over) -> TrainableCausalLM:
    torch.manual_seed(0)
    decoder = LlamaForCausalLM(ModelConfig.from_dict({**SHAPE, **over}))
    init_weights(decoder)
    return TrainableCausalLM(decoder, chunk_tokens=chunk_tokens)


def sft_samples() -> list[dict]:
    """Three prompt/response samples of different lengths (prompt labels IGNORE)."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for prompt, response in [(7, 3), (12, 5), (4, 2)]:
        ids = torch.randint(3, SHAPE["vocab_size"], (prompt + response,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def loss_and_grads(model: TrainableCausalLM, batch: dict, autocast=None):
    model.zero_grad(set_to_none=True)
    loss, _ = forward_loss(model, batch, Objective.SFT, autocast)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_loss(model: TrainableCausalLM, batch: dict) -> torch.Tensor:
    """The loss as computed before target selection: every position through the lm_head."""
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"]).flatten(0, 1)
    targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    return chunked_cross_entropy(hidden, targets, model.model.lm_head, model.chunk_tokens)


@pytest.mark.parametrize("chunk_tokens", [2048, 4])  # one chunk; several, checkpointed
def test_loss_over_target_rows_only_equals_the_loss_over_every_row(chunk_tokens):
    model = tiny_lm(chunk_tokens)
    batch = collate(sft_samples(), pad_id=0)
    assert batch["target_index"].numel() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    loss, grads = loss_and_grads(model, batch)
    model.zero_grad(set_to_none=True)
    ref = reference_loss(model, batch)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6)
    # Without the host-made index the forward finds the same positions itself.
    plain = {k: v for k, v in batch.items() if k != "target_index"}
    assert model(**plain).item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_batch_without_targets_gives_zero_and_a_backward_that_works():
    model = tiny_lm()
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX] * 3}], pad_id=0)
    loss = model(**batch)
    loss.backward()
    assert loss.item() == 0.0


def test_packed_rows_train_exactly_as_the_samples_one_per_row():
    model = tiny_lm()
    samples = sft_samples()
    unpacked = collate(samples, pad_id=0)
    packed = collate(samples, pad_id=0, pack_to=20)
    assert packed["input_ids"].shape[0] == 2 < unpacked["input_ids"].shape[0]  # 17 | 10 + 6 tokens
    assert packed["attention_mask"].sum() == unpacked["attention_mask"].sum()
    loss_u, grads_u = loss_and_grads(model, unpacked)
    loss_p, grads_p = loss_and_grads(model, packed)
    assert loss_p.item() == pytest.approx(loss_u.item(), rel=1e-5)
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-6)


def test_packing_without_doc_boundaries_would_change_the_loss():
    """The test above can fail: the same packed row read as one document trains differently."""
    model = tiny_lm()
    packed = collate(sft_samples(), pad_id=0, pack_to=20)
    with torch.no_grad():
        bounded = model(**packed)
        unbounded = model(**{k: v for k, v in packed.items() if k != "doc_ids"})
    assert abs(bounded.item() - unbounded.item()) > 1e-3


def test_positions_restart_and_attention_stays_in_each_sample():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    assert positions_in_documents(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    mask = block_causal_mask(doc_ids)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False]  # sample 1 sees only itself
    assert mask[2].tolist() == [True, True, True, False, False, False]
    assert mask[5].tolist() == [False] * 5 + [True]  # padding sees itself: no empty softmax row
    assert bool(block_causal_mask(doc_ids)[1, 0].equal(torch.ones(6, 6, dtype=torch.bool).tril()))


def test_pack_rows_is_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2], width=8) == [[0, 1], [2, 3]]
    assert pack_rows([9, 2], width=8) == [[0], [1]]  # a sample longer than the row stays whole


def test_packed_collate_marks_samples_and_padding():
    b = collate([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]},
                 {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, 6, 7, 8]}], pad_id=0, pack_to=5)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 4], [1, 2, 3, 0, 0]]
    assert b["doc_ids"].tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, -1, -1]]
    # Token 8 ends its sample: the next sample's first token (4) is not its target.
    assert b["labels"].tolist() == [[IGNORE_INDEX, 6, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, 2, 3] + [IGNORE_INDEX] * 2]
    assert b["target_index"].tolist() == [0, 1, 2, 5, 6]


def test_bf16_autocast_runs_the_matmuls_in_bf16_with_gradients_close_to_fp32():
    model = tiny_lm()
    batch = collate(sft_samples(), pad_id=0)
    seen = []
    hook = model.model.layers[0].mlp.gate_up_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss32, grads32 = loss_and_grads(model, batch)
    loss16, grads16 = loss_and_grads(model, batch, autocast=torch.bfloat16)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 weights
    assert all(g.dtype == torch.float32 for g in grads16.values())  # and fp32 gradients
    assert loss16.dtype == torch.float32 and loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([grads16[n].flatten() for n in grads32])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.99
    assert (flat16.norm() / flat32.norm()).item() == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(flat32, flat16)  # autocast did change the arithmetic


def test_cpu_auto_precision_is_bf16_autocast_only_where_bf16_is_native(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_bf16_fast", lambda: True)
    native = device_mod.training_precision("cpu", "auto")
    assert (native.deepspeed, native.autocast, native.name) == ("fp32", torch.bfloat16, "bf16-autocast")
    monkeypatch.setattr(device_mod, "cpu_bf16_fast", lambda: False)
    assert device_mod.training_precision("cpu", "auto") == device_mod.TrainingPrecision("fp32", None)
    explicit = device_mod.training_precision("cpu", "bf16")  # an explicit choice is DeepSpeed's
    assert (explicit.deepspeed, explicit.autocast) == ("bf16", None)


def test_cuda_auto_precision_stays_deepspeed_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_mod.training_precision("cuda", "auto") == device_mod.TrainingPrecision("bf16", None)


def test_flops_count_the_tied_lm_head_and_frozen_weights_at_4():
    tied, untied = tiny_lm(), tiny_lm(tie_word_embeddings=False)
    cfg = tied.config
    # Same matmuls: a tied lm_head costs what an untied one does.
    assert model_flops_per_token(tied, cfg, 64) == model_flops_per_token(untied, untied.config, 64)
    non_embed = sum(p.numel() for n, p in tied.named_parameters() if "embed_tokens" not in n)
    head = cfg.vocab_size * cfg.hidden_size
    expected = 6.0 * (non_embed + head) + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * 64
    assert model_flops_per_token(tied, cfg, 64) == expected
    tied.requires_grad_(False)  # as LoRA's base: input gradients only
    assert model_flops_per_token(tied, cfg, 64) == expected - 2.0 * (non_embed + head)
    assert flops_per_token(1000, 2, 64, 128, tied_lm_head_params=500, frozen_params=300) == \
        6.0 * 1500 - 2.0 * 300 + 12.0 * 2 * 64 * 128


class ChatCharTokenizer:
    """One token per character and a chat template "<u>content</u><a>": lengths are countable."""

    eos_token_id, pad_token_id, chat_template = 1, 0, "<u>{content}</u><a>"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return self(self.chat_template.format(content=messages[0]["content"]))["input_ids"]


def sft_config(seq_len: int = 64):
    from jobs.manifest import parse_manifest
    from tests.support.paths import REPO

    return parse_manifest({
        "version": 1, "kind": "training", "name": "t", "task": "pretrain", "objective": "sft",
        "model": {"vocab": "builtin:smollm2-135m-instruct", "hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "data": {"train": str(REPO / "examples" / "data" / "debian-pretrain-sample.parquet"), "seq_len": seq_len},
        "training": {"max_steps": 1}, "checkpoint": {"uri": "/tmp/x"}, "output": {"uri": "/tmp/y"},
    }).training_config()


def sft_encoder(seq_len: int, config=None):
    from workers.training.encode import Encoder

    return Encoder(config or sft_config(seq_len), ChatCharTokenizer(), None)


def text_of(ids):
    return "".join(chr(i) if i > 1 else "|" for i in ids)


def test_sft_that_fits_is_the_template_then_the_response():
    s = sft_encoder(64)._sft({"prompt": "summarize this", "response": "ok"})
    assert text_of(s["input_ids"]) == "<u>summarize this</u><a>ok|"
    assert s["labels"] == [IGNORE_INDEX] * 24 + s["input_ids"][24:]


def test_long_sft_prompt_loses_the_end_of_its_content_not_the_response_or_the_header():
    s = sft_encoder(40)._sft({"prompt": "Instruction. " + "x" * 100, "response": "the answer"})
    assert len(s["input_ids"]) == 40
    assert text_of(s["input_ids"]) == "<u>Instruction. xxxxxx</u><a>the answer|"
    assert [l for l in s["labels"] if l != IGNORE_INDEX] == s["input_ids"][-11:]


def test_a_response_longer_than_the_window_keeps_the_template_and_the_response_head():
    s = sft_encoder(20)._sft({"prompt": "p" * 50, "response": "r" * 50})
    assert text_of(s["input_ids"]) == "<u></u><a>" + "r" * 10
    assert sft_encoder(8)._sft({"prompt": "p", "response": "r"}) is None  # the template alone is 10


def test_sft_packs_only_when_asked_and_only_sft():
    from dataclasses import replace

    config = sft_config()
    assert sft_encoder(64, config).pack_to is None  # default: one sample per row
    on = sft_encoder(64, replace(config, data=replace(config.data, packing=True)))
    assert on.pack_to == 64
    batch = on.collate([{"input_ids": [5, 6], "labels": [IGNORE_INDEX, 6]}] * 3)
    assert batch["input_ids"].shape == (1, 6) and batch["doc_ids"].tolist() == [[0, 0, 1, 1, 2, 2]]
    assert "doc_ids" not in sft_encoder(64, config).collate([{"input_ids": [5, 6], "labels": [IGNORE_INDEX, 6]}] * 3)
    causal = replace(config, objective=Objective.CAUSAL_LM, data=replace(config.data, packing=True))
    assert sft_encoder(64, causal).pack_to is None  # causal_lm packs its own way (Encoder._packed)
