"""gpu_check's record: every check printed as it happens and kept in a JSON summary.

Statuses: passed / failed (a check with a verdict), measured (a figure, no verdict), skipped
(with the reason: a CUDA-only check on CPU is skipped, never passed). The JSON file is rewritten
after every record, so a run cut short by a time limit still leaves what it found.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from pathlib import Path

import torch


class Report:
    def __init__(self, out: Path | None, device: str, smoke: bool):
        self.out, self.device, self.smoke = out, device, smoke
        self.started = time.time()
        self.checks: list[dict] = []
        self.stage = "setup"

    def _add(self, name: str, status: str, figures: dict, reason: str = "") -> None:
        entry = {"stage": self.stage, "name": name, "status": status, "figures": figures}
        if reason:
            entry["reason"] = reason
        self.checks.append(entry)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
        print(f"[{self.stage}] {status.upper():8s} {name} {shown}{' -- ' + reason if reason else ''}", flush=True)
        self.write()

    def check(self, name: str, passed: bool, **figures) -> bool:
        self._add(name, "passed" if passed else "failed", figures)
        return passed

    def measure(self, name: str, **figures) -> None:
        self._add(name, "measured", figures)

    def skip(self, name: str, reason: str) -> None:
        self._add(name, "skipped", {}, reason)

    def guarded(self, name: str, fn) -> None:
        """Run one check; an exception fails it (with its text) instead of ending the run."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 -- any crash is that check's failure, reported
            self._add(name, "failed", {"error": f"{type(exc).__name__}: {exc}"[:500]})
            traceback.print_exc()

    def summary(self) -> dict:
        counts = {s: sum(c["status"] == s for c in self.checks) for s in ("passed", "failed", "skipped", "measured")}
        return {
            "device": self.device, "smoke": self.smoke, "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(torch.device(self.device)) if self.device.startswith("cuda") else None,
            "seconds": round(time.time() - self.started, 1), "counts": counts, "ok": counts["failed"] == 0,
            "checks": self.checks,
        }

    def write(self) -> None:
        if self.out is not None:
            self.out.write_text(json.dumps(self.summary(), indent=1))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
