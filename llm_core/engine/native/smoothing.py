"""SmoothQuant (Xiao et al. 2023) before `quantization: w8a8`: move activation outliers into weights.

Per-row int8 activations lose most where a few input channels are much larger than the rest: the
row's scale follows the outliers and the other channels get a few levels each. For each linear
layer, input channel k is divided by s_k = max|x_k|^a / max|W[:, k]|^(1 - a) (a = 0.5) and the
weight's column k multiplied by it, which leaves the product unchanged and evens out both sides.
The division is folded into what produces the input, so it costs nothing at run time:
- q/k/v and gate/up projections: into the RMSNorm weight before them;
- o_proj: into v's rows of the q/k/v projection (attention output is a weighted sum of v rows),
  one factor per KV head and dimension, shared by the query heads of a GQA group;
- down_proj: into up's rows of the gate/up projection (silu(gate) * up is linear in up).
The output head keeps its input (a tied head shares the embeddings, which must not change).

max|x_k| comes from one forward over a fixed calibration text (CALIBRATION_TEXT, run at load):
the same factors on every load of a model, so outputs do not depend on what a job ran first.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_core.models.attention import PackedCausalAttention

ALPHA = 0.5
# Varied English and code, about 400 tokens: outlier channels show on any text (they are a
# property of the model), so a short fixed sample finds them.
CALIBRATION_TEXT = (
    "Summarize the following package description in one sentence. This package provides a library "
    "for reading and writing compressed archives in several formats, with bindings for Python and Perl. "
    "Classify the text into one of: libs, python, net, doc, utils. Translate into French: the server "
    "restarts every night at 02:00 UTC and keeps 14 days of logs.\n"
    "def parse(path):\n    with open(path) as f:\n        return [line.split(',') for line in f if line.strip()]\n"
    "The committee met on Tuesday to discuss the budget for 2025; revenue rose 3.4% while costs fell. "
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen. "
    "User: How do I configure the proxy? Assistant: Set HTTP_PROXY and HTTPS_PROXY in the environment, "
    "then restart the daemon. GNU Emacs is an extensible, customizable text editor; its core is an "
    "interpreter for Emacs Lisp. SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1; "
    "Die Bibliothek stellt Funktionen zur Verfügung. La bibliothèque fournit des fonctions utiles. "
    "The quick brown fox jumps over the lazy dog 1234567890 times, said the documentation, ironically."
)


def activation_maxima(model: nn.Module, token_ids: list[int]) -> dict[nn.Linear, torch.Tensor]:
    """Per linear layer, each input channel's largest |value| over the tokens (fp32 [in_features])."""
    maxima: dict[nn.Linear, torch.Tensor] = {}

    def record(module, inputs, _output):
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
        maxima[module] = torch.maximum(maxima[module], x) if module in maxima else x

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    device = model.embed_tokens.weight.device
    try:
        with torch.no_grad():
            ids = torch.tensor(token_ids, device=device)
            model(ids, torch.arange(len(token_ids), device=device), PackedCausalAttention([len(token_ids)]))
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def factors(x_max: torch.Tensor, w_max: torch.Tensor) -> torch.Tensor:
    return (x_max.clamp(min=1e-5) ** ALPHA / w_max.clamp(min=1e-5) ** (1 - ALPHA)).clamp(min=1e-2, max=1e2)


def _scale_(tensor: torch.Tensor, by: torch.Tensor) -> None:
    """tensor *= by in fp32, stored back in tensor's dtype."""
    tensor.copy_((tensor.float() * by).to(tensor.dtype))


def smooth_model(model: nn.Module, token_ids: list[int]) -> int:
    """Apply SmoothQuant's factors to every decoder layer in place; returns the layers smoothed."""
    maxima = activation_maxima(model, token_ids)
    with torch.no_grad():
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, o_proj, gate_up, down = attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj
            for norm, linear in ((layer.input_layernorm, qkv), (layer.post_attention_layernorm, gate_up)):
                s = factors(maxima[linear], linear.weight.abs().amax(dim=0).float())
                _scale_(norm.weight, 1 / s)
                _scale_(linear.weight, s[None, :])
            # o_proj's input channel (head h, dim d) is v's (h // group, d): one factor per KV head.
            group = attn.heads // attn.kv_heads
            x_max = maxima[o_proj].view(attn.kv_heads, group, attn.head_dim).amax(dim=1)
            w_max = o_proj.weight.abs().amax(dim=0).float().view(attn.kv_heads, group, attn.head_dim).amax(dim=1)
            s = factors(x_max, w_max).flatten()
            v_rows = slice(attn.q_size + attn.kv_size, attn.q_size + 2 * attn.kv_size)
            _scale_(qkv.weight[v_rows], 1 / s[:, None])
            if qkv.bias is not None:
                _scale_(qkv.bias[v_rows], 1 / s)
            _scale_(o_proj.weight, s.view(attn.kv_heads, 1, attn.head_dim).expand(-1, group, -1).reshape(1, -1))
            # down_proj's input is silu(gate) * up: up's rows take the division.
            inner = down.weight.shape[1]
            s = factors(maxima[down], down.weight.abs().amax(dim=0).float())
            _scale_(gate_up.weight[inner:], 1 / s[:, None])
            if gate_up.bias is not None:
                _scale_(gate_up.bias[inner:], 1 / s)
            _scale_(down.weight, s[None, :])
    return len(model.layers)
