"""The CPU decode step through torch.compile (llm_core/engine/native/compiled_decode.py): fp32
logits as eager decode's, over a batch that shrinks as sequences finish, with no recompiles
after the warm-up; a compiler that fails leaves decode eager and the results unchanged."""

from __future__ import annotations

import pytest
import torch
from structlog.testing import capture_logs

from llm_core.engine.native.compiled_decode import CompiledDecode, recompile_count
from llm_core.engine.native.model_runner import ModelRunner
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM

VOCAB = 128


@pytest.fixture(scope="module")
def model() -> tuple[LlamaForCausalLM, ModelConfig]:
    cfg = ModelConfig.from_dict(dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
    ))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a skipped or misplaced one would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1, 0.5)
    return model, cfg


def prompts(count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (5 + 3 * i,), generator=gen).tolist() for i in range(count)]


def decode_steps(runner: ModelRunner, batches: list[int]) -> list[torch.Tensor]:
    """Prefill 4 prompts into slots 0..3, then one decode step per entry of `batches` over the
    first that many slots (sequences finishing from the top slot down); each step's logits."""
    with torch.inference_mode():
        runner.ensure_cache(64)
        runs = prompts(4)
        first = runner.prefill([(slot, p, None) for slot, p in enumerate(runs)])
        last = [int(logits.argmax()) for logits in first]
        lengths = [len(p) for p in runs]
        steps = []
        for batch in batches:
            logits = runner.decode(last[:batch], [n for n in lengths[:batch]])
            steps.append(logits)
            last = [int(x) for x in logits.argmax(-1)] + last[batch:]
            lengths = [n + 1 for n in lengths[:batch]] + lengths[batch:]
        return steps


def test_compiled_decode_logits_match_eager_without_recompiling(model):
    net, cfg = model
    eager = ModelRunner(net, cfg, "cpu", torch.float32, max_num_seqs=4, use_cuda_graphs=False)
    compiled = ModelRunner(net, cfg, "cpu", torch.float32, max_num_seqs=4, use_cuda_graphs=False,
                           compile_decode=True)
    assert compiled.compiled_decode is not None and not compiled.compiled_decode.failed
    batches = [4, 4, 3, 2, 1, 1]
    before = recompile_count()
    got = decode_steps(compiled, batches)
    assert recompile_count() == before  # the warm-up compiled a graph for every batch size
    for step, (a, b) in enumerate(zip(got, decode_steps(eager, batches))):
        assert a.shape == b.shape == (batches[step], VOCAB)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(model):
    net, cfg = model

    def broken_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    runner = ModelRunner(net, cfg, "cpu", torch.float32, max_num_seqs=4, use_cuda_graphs=False)
    runner.compiled_decode = CompiledDecode(net, backend=broken_compiler)
    with capture_logs() as logs:
        got = decode_steps(runner, [4, 2])
    assert runner.compiled_decode.failed
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["compiled_decode.fallback_to_eager"]
    eager = ModelRunner(net, cfg, "cpu", torch.float32, max_num_seqs=4, use_cuda_graphs=False)
    for a, b in zip(got, decode_steps(eager, [4, 2])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_engine_option_generates_what_eager_does(tmp_path):
    from llm_core.engine.native import NativeEngine
    from llm_core.engine.sampling import SamplingParams
    from tests.support.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path, tokenizer="bpe")
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    runs = [[5, 9, 11], [7, 3, 2, 8, 4], [12]]
    eager = NativeEngine(folder, device="cpu", dtype="float32", max_num_seqs=4)
    compiled = NativeEngine(folder, device="cpu", dtype="float32", max_num_seqs=4, compile_decode=True)
    assert compiled.runner.compiled_decode is not None and not compiled.runner.compiled_decode.failed
    assert eager.runner.compiled_decode is None  # off unless asked for
    assert ([c[0].token_ids for c in compiled.generate(runs, params)]
            == [c[0].token_ids for c in eager.generate(runs, params)])


@pytest.mark.skipif(not __import__("llm_core.engine.native.packed_linear", fromlist=["x"]).onednn_bf16(),
                    reason="oneDNN has no bf16 on this CPU: no packed weights to compile around")
def test_bf16_packed_weights_compile_instead_of_falling_back(model, tmp_path):
    """The oneDNN-packed bf16 linears (packed_linear.py) enter the graph as one opaque op; inductor's
    own lowering of the packed matmul refused them, and bf16 decode fell back to eager."""
    import copy

    from llm_core.engine.native.packed_linear import PackedLinear, pack_linears

    net, cfg = model
    bf16 = copy.deepcopy(net).to(torch.bfloat16)
    assert pack_linears(bf16) > 0 and isinstance(bf16.layers[0].mlp.gate_up_proj, PackedLinear)
    eager = ModelRunner(bf16, cfg, "cpu", torch.bfloat16, max_num_seqs=4, use_cuda_graphs=False)
    compiled = ModelRunner(bf16, cfg, "cpu", torch.bfloat16, max_num_seqs=4, use_cuda_graphs=False,
                           compile_decode=True)
    assert not compiled.compiled_decode.failed
    for a, b in zip(decode_steps(compiled, [4, 3, 1]), decode_steps(eager, [4, 3, 1])):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)
