"""benchmarks/engine.py's --native specs, `:nolayers` among them."""

from __future__ import annotations

import pytest

from benchmarks.engine import parse_native, w8a8_layers
from llm_core.engine.native import fused_layers


def test_nolayers_turns_the_w8a8_layer_chain_off_and_nothing_else():
    on, off = parse_native("bf16+w8a8"), parse_native("bf16+w8a8:nolayers")
    assert on["w8a8_layers"] and not off["w8a8_layers"]
    assert {k: v for k, v in on.items() if k not in ("label", "w8a8_layers")} == \
        {k: v for k, v in off.items() if k not in ("label", "w8a8_layers")}
    with pytest.raises(SystemExit, match="cannot read"):
        parse_native("bf16:nolayer")


def test_engines_built_under_nolayers_find_no_layer_fusable():
    original = fused_layers.fusable
    with w8a8_layers(False):
        assert fused_layers.fusable(object()) is False
    assert fused_layers.fusable is original
    with w8a8_layers(True):
        assert fused_layers.fusable is original


def test_noshared_turns_shared_prefix_reads_off_and_nothing_else():
    on, off = parse_native("fp32"), parse_native("fp32:noshared")
    assert on["shared_prefix_reads"] and not off["shared_prefix_reads"]
    assert {k: v for k, v in on.items() if k not in ("label", "shared_prefix_reads")} == \
        {k: v for k, v in off.items() if k not in ("label", "shared_prefix_reads")}
