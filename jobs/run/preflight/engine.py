"""The engine a job names, checked on the driver: `engine: vllm` needs vLLM (an optional extra)."""

from __future__ import annotations

from jobs.run.preflight.plan import Plan
from llm_core.engine.vllm_engine import INSTALL_HINT, vllm_installed


def check_engine(engine: str, plan: Plan) -> None:
    """vLLM is looked for here, without importing it (seconds); the workers load it, so a cluster
    whose driver differs from its workers needs it on both."""
    if engine != "vllm":
        return
    if not vllm_installed():
        plan.problems.append("engine: vllm needs the vLLM package, which is not installed in the Python that "
                             f"runs this job (the workers need it too); {INSTALL_HINT}")
    else:
        plan.checked.append("engine: vllm installed on the driver (the workers need it too)")
