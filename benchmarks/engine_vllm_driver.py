"""benchmarks/engine.py's side of the vLLM contender: vLLM in its own interpreter and venv
(benchmarks/engine_vllm.py, the other side), driven a run at a time over stdin/stdout."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from llm_core.threads import WAIT_VARIABLES

class VllmProcess:
    """vLLM in its own interpreter (benchmarks/engine_vllm.py), driven a run at a time."""

    def __init__(self, python: str, model_dir: Path, prompts: list[list[int]], new_tokens: int, dtype: str,
                 max_num_seqs: int):
        self.prompt_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(prompts, self.prompt_file)
        self.prompt_file.close()
        script = Path(__file__).with_name("engine_vllm.py")
        self.proc = subprocess.Popen(
            [python, str(script), "--model", str(model_dir), "--prompts", self.prompt_file.name,
             "--max-new-tokens", str(new_tokens), "--dtype", dtype, "--max-num-seqs", str(max_num_seqs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=vllm_env())
        self.dtype = dtype
        if not self._reply().get("ready"):
            raise RuntimeError("vLLM did not start (its output is above)")

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"vLLM exited ({self.proc.wait()})")

    def run(self) -> tuple[float, list[list[int]]]:
        self.proc.stdin.write(json.dumps({"cmd": "run"}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        return reply["seconds"], reply["outputs"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        os.unlink(self.prompt_file.name)


def vllm_env() -> dict[str, str]:
    """vLLM as a user runs it: without our OpenMP wait settings (--omp-wait is for our engines),
    its engine core in this process (its separate worker process fails to start on some CPU
    hosts, "WorkerProc initialization failed"; llm_core's vllm engine does the same)."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    return {**env, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
