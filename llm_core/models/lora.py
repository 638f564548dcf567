"""LoRA (Hu et al. 2021) on the native decoder's linears, one low-rank pair per HF target.

Why not peft: the decoder fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; peft
would give each fused matrix one shared pair and save it under module names no HF model has.
`LoRALinear` wraps a fused linear and keeps one (A, B) pair per HF target slice of its output
(llm_core.models.lora_names), so the adapter is PEFT's own layout and names.

Per fused linear the A's are one parameter [targets * rank, in] and the B's one [rows of the
targeted slices, rank]: the forward is two matmuls whatever the number of targets, the second
against B's block-diagonal spread over the output columns (zero rows where a slice is not a
target). The base linear is called as a module, never as F.linear on its weight, so DeepSpeed
ZeRO-3's module hooks gather its partitioned weight. Parameter names are fixed
(`<linear>.base.weight`, `<linear>.lora_A`, `<linear>.lora_B`): checkpoints depend on them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM
from llm_core.models.lora_names import LORA_TARGETS, merge_adapter_weights, peft_key, target_slice


class LoRALinear(nn.Module):
    """`base(x) + scale * B_t A_t dropout(x)` added to the output rows of each target t."""

    def __init__(self, base: nn.Linear, layer: int, native_name: str, slices: list[tuple[str, slice]],
                 rank: int, alpha: float, dropout: float):
        super().__init__()
        if isinstance(base, LoRALinear):
            raise ValueError(f"layers.{layer}.{native_name} already has LoRA adapters")
        slices = sorted(slices, key=lambda ts: ts[1].start)
        self.base = base
        self.layer, self.native_name = layer, native_name
        self.targets = tuple(t for t, _ in slices)
        self.out_sizes = tuple(s.stop - s.start for _, s in slices)
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # (rows before the slice not adapted, slice index) in output order, for the block-diagonal.
        self._layout, cursor = [], 0
        for index, (_, rows) in enumerate(slices):
            self._layout.append((rows.start - cursor, index))
            cursor = rows.stop
        self._tail = base.out_features - cursor
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(len(slices) * rank, base.in_features,
                                               dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(sum(self.out_sizes), rank, dtype=weight.dtype, device=weight.device))
        # PEFT's initialisation: fan_in is `in` for every target's A, as for one [rank, in] matrix.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def spread_b(self) -> torch.Tensor:
        """scale * the B's as one [out, targets * rank] block-diagonal matrix."""
        blocks, bs = [], self.lora_B.split(self.out_sizes)
        for gap, index in self._layout:
            if gap:  # output rows no target adapts: a block of zero width
                blocks.append(self.lora_B.new_zeros(gap, 0))
            blocks.append(bs[index])
        if self._tail:
            blocks.append(self.lora_B.new_zeros(self._tail, 0))
        spread = blocks[0] if len(blocks) == 1 else torch.block_diag(*blocks)
        return spread * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = nn.functional.linear(self.dropout(x), self.lora_A)
        return self.base(x) + nn.functional.linear(low, self.spread_b())

    def pairs(self, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """This linear's matrices under PEFT keys (A [rank, in], B [out, rank]), from its own
        parameters or from `a`/`b` (the same tensors taken from a gathered state dict)."""
        a = self.lora_A if a is None else a
        b = self.lora_B if b is None else b
        out = {}
        for target, a_t, b_t in zip(self.targets, a.split(self.rank), b.split(self.out_sizes)):
            out[peft_key(self.layer, target, "A")] = a_t.detach().clone(memory_format=torch.contiguous_format)
            out[peft_key(self.layer, target, "B")] = b_t.detach().clone(memory_format=torch.contiguous_format)
        return out

    def extra_repr(self) -> str:
        return f"targets={self.targets}, rank={self.rank}, alpha={self.alpha}, dropout={self.dropout_p}"


def add_lora(decoder: nn.Module, rank: int, alpha: float, dropout: float, targets) -> list[LoRALinear]:
    """Freeze every parameter of `decoder` (a LlamaForCausalLM) and wrap, in place, each linear
    holding a target of `targets` (HF names) in every layer. Returns the wrappers."""
    cfg: ModelConfig = decoder.config
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets {list(targets)}: each must be one of {', '.join(LORA_TARGETS)}")
    by_module: dict[str, list[tuple[str, slice]]] = {}
    for target in dict.fromkeys(targets):
        module_name, rows = target_slice(cfg, target)
        by_module.setdefault(module_name, []).append((target, rows))
    decoder.requires_grad_(False)
    wrapped = []
    for index, layer in enumerate(decoder.layers):
        for module_name, slices in by_module.items():
            parent_name, _, attr = module_name.rpartition(".")
            parent = layer.get_submodule(parent_name)
            wrapper = LoRALinear(getattr(parent, attr), index, module_name, slices, rank, alpha, dropout)
            setattr(parent, attr, wrapper)
            wrapped.append(wrapper)
    return wrapped


def lora_modules(module: nn.Module) -> list[LoRALinear]:
    return [m for m in module.modules() if isinstance(m, LoRALinear)]


def lora_settings(module: nn.Module) -> dict | None:
    """{rank, alpha, dropout, targets} of the adapters in `module`; None when it has none."""
    wrappers = lora_modules(module)
    if not wrappers:
        return None
    first = wrappers[0]
    targets = {t for w in wrappers for t in w.targets}
    return {"rank": first.rank, "alpha": first.alpha, "dropout": first.dropout_p,
            "targets": [t for t in LORA_TARGETS if t in targets]}


def _native_prefix(wrapper: LoRALinear) -> str:
    return f"layers.{wrapper.layer}.{wrapper.native_name}."


def adapter_weights(module: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every adapter matrix of `module` under PEFT keys. From the live parameters (under ZeRO-3
    gather them first), or from `state`: a full state dict in native decoder names
    (`layers.N....lora_A`, as `native_state_names` gives)."""
    out: dict[str, torch.Tensor] = {}
    for wrapper in lora_modules(module):
        if state is None:
            out.update(wrapper.pairs())
        else:
            prefix = _native_prefix(wrapper)
            out.update(wrapper.pairs(state[prefix + "lora_A"], state[prefix + "lora_B"]))
    return out


def base_state(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A native-name state dict of a LoRA-wrapped decoder as the plain decoder's: the adapter
    matrices dropped and `<linear>.base.weight` renamed `<linear>.weight`."""
    wrapped = {_native_prefix(w) for w in lora_modules(module)}
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        owner = prefix.rpartition(".")[0] + "." if prefix.endswith(".base") else None
        if owner in wrapped:
            out[owner + leaf] = value
        elif prefix + "." not in wrapped or leaf not in ("lora_A", "lora_B"):
            out[key] = value
    return out


@torch.no_grad()
def merged_state(module: nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The plain decoder's native state dict with every adapter of `module` folded in.
    `state` (native names, a gathered copy) is updated in place and its tensors reused."""
    settings = lora_settings(module)
    plain = base_state(module, state)
    if settings is None:
        return plain
    weights = adapter_weights(module, state)
    # Only the merge's weights are read: a decoder on the meta device pointing at `plain`'s tensors.
    with torch.device("meta"):
        shell = LlamaForCausalLM(cfg)
    shell.load_state_dict(plain, strict=False, assign=True)
    merge_adapter_weights(shell, weights, settings["alpha"] / settings["rank"])
    return plain


@torch.no_grad()
def merge_and_unwrap(decoder: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain nn.Linear back (in place)."""
    settings = lora_settings(decoder)
    if settings is None:
        return decoder
    weights = adapter_weights(decoder)
    for name, module in list(decoder.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            setattr(decoder.get_submodule(parent_name), attr, module.base)
    merge_adapter_weights(decoder, weights, settings["alpha"] / settings["rank"])
    return decoder
