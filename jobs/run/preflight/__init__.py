"""Pre-flight: a job checked whole before any worker is placed or anything deleted.

`preflight(manifest, scope=None, *, probe_output=True, sample_rows=64) -> Plan` (check); the
Plan and PreflightError (plan); the parts: the input and its ids (inputs), the model (model),
a LoRA adapter trained on it (adapter), the output location (output), prompt lengths and token
estimates (prompts), and the plan as a user reads it (report).
"""

from jobs.run.preflight.check import preflight
from jobs.run.preflight.plan import Plan, PreflightError

__all__ = ["Plan", "PreflightError", "preflight"]
