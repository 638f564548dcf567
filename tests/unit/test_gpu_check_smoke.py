"""benchmarks/gpu_check.py --smoke runs every stage's code on CPU, so the GPU check cannot rot
before a GPU is lent: the same checks, tiny shapes, CUDA-only checks skipped (never passed)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import REPO

CUDA_ONLY = ("CUDA graphs vs eager", "CUDA syncs per step", "peak GPU memory", "ZeRO-2 MFU")


def test_smoke_run_passes_and_writes_the_summary(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["smoke"] is True and summary["device"] == "cpu" and summary["ok"] is True
    assert summary["seconds"] < 150  # about 5 s on an idle 2-core machine; the margin is for load
    checks = {c["name"]: c for c in summary["checks"]}
    assert summary["counts"]["failed"] == 0 and summary["counts"]["passed"] >= 10
    for arch in ("llama", "qwen2"):
        for name in ("logits vs transformers fp32", "logits vs transformers bf16", "seeded sampling",
                     "greedy token-exact vs transformers generate (fp32)", "score vs transformers",
                     "host syncs: device reads per step"):
            assert checks[f"{arch} {name}"]["status"] == "passed", checks[f"{arch} {name}"]
        kernels = checks[f"{arch} SDPA kernels (CPU kernels; the verdict is for CUDA)"]
        assert kernels["status"] == "measured" and kernels["figures"]["prefill"]
    for check in summary["checks"]:
        if any(marker in check["name"] for marker in CUDA_ONLY):
            assert check["status"] == "skipped" and check["reason"], check
    speed = [c for c in summary["checks"] if c["stage"] == "speed" and c["status"] == "measured"]
    assert len(speed) == 2  # tiny shape at two batch sizes
    for entry in speed:
        assert entry["figures"]["native_tok_s"] > 0 and entry["figures"]["hf_tok_s"] > 0
        assert entry["figures"]["kv_gb"] > 0 and entry["figures"]["decode_ms"] > 0
    # Each figure was printed as it was found, not only at the end.
    assert "[correctness] PASSED   llama logits vs transformers fp32" in done.stdout
    assert "[speed] MEASURED tiny x4" in done.stdout


def test_engine_benchmark_warms_up_at_the_timed_lengths():
    """benchmarks/engine.py's untimed first run sizes the KV cache (and, on a GPU, captures the
    CUDA graphs) the timed runs need: the longest prompt on CPU, every prompt on a GPU."""
    from benchmarks.engine_workload import warmup_prompts

    prompts = [[1] * 5, [2] * 50, [3] * 20]
    assert warmup_prompts("native", prompts, on_gpu=False, batch_size=2) == [[2] * 50]
    assert warmup_prompts("native", prompts, on_gpu=True, batch_size=2) == prompts
    assert warmup_prompts("transformers", prompts, on_gpu=True, batch_size=2) == [[2] * 50, [3] * 20]
