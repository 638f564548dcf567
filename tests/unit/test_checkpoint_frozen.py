"""A LoRA checkpoint leaves out every frozen weight, the tied lm_head alias of the embedding too
(DeepSpeed's exclude_frozen_parameters drops a shared parameter under its first name only)."""

from __future__ import annotations

from tests.unit.test_lora import tiny_decoder
from llm_core.models.lora import add_lora
from workers.training.checkpoint import _frozen_aliases_left_out, frozen_state_keys


class _Engine:
    """What checkpoint.save uses of a DeepSpeed engine: `module` and `module_state_dict`, whose
    exclusion by first parameter name is DeepSpeed 0.19's (engine.module_state_dict)."""

    def __init__(self, module):
        self.module = module

    def module_state_dict(self, exclude_frozen_parameters=False):
        state = self.module.state_dict()
        if exclude_frozen_parameters:
            for name, p in self.module.named_parameters():  # deduplicated: one name per tensor
                if not p.requires_grad:
                    state.pop(name, None)
        return state


def test_tied_lm_head_is_left_out_with_the_other_frozen_weights():
    model = tiny_decoder("llama-tied")
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "down_proj"])
    engine = _Engine(model)
    assert "lm_head.weight" in engine.module_state_dict(exclude_frozen_parameters=True)  # DeepSpeed's slip
    assert {"lm_head.weight", "embed_tokens.weight"} <= frozen_state_keys(model)
    with _frozen_aliases_left_out(engine):
        saved = engine.module_state_dict(exclude_frozen_parameters=True)
        everything = engine.module_state_dict()
    assert sorted(saved) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "lm_head.weight" in everything  # a full save is untouched
    assert "module_state_dict" not in vars(engine)  # the engine's own method again
