"""Static checks of the container image, the Ray cluster launcher, and the `llmbatch` command
lines that infra/ runs (each must be accepted by the real CLI)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml


from tests.support.infra_support import (
    REPO,
    DOCKERFILE,
    LAUNCHER,
    IMAGES,
    yaml_files,
    load_all,
    pod_specs,
    docker_stages,
    lineage,
    effective,
    exec_form,
    env_values,
    last,
    dockerignore_rules,
    in_context,
)

# ---- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_targets_share_python_and_run_llmbatch_as_non_root():
    global_args, stages = docker_stages(DOCKERFILE.read_text())
    assert {"cpu", "cuda"} <= stages.keys()
    assert stages["python"]["base"].startswith("python:3.11")
    assert "cuda" in stages["cuda"]["base"]
    for target in ("cpu", "cuda"):
        instrs = effective(stages, target)
        user = last(instrs, "USER")
        assert user and re.fullmatch(r"\d+(:\d+)?", user), "numeric, so runAsNonRoot can check it"
        assert int(user.split(":")[0]) != 0
        assert exec_form(last(instrs, "ENTRYPOINT")) == ["llmbatch"]
        env = env_values(instrs)
        cache = env["LLMBATCH_CACHE"]
        volume_at = next(i for i, (ins, _) in enumerate(instrs) if ins == "VOLUME")
        assert cache in exec_form(instrs[volume_at][1])
        # Changes to a path after VOLUME are discarded: the chown must come first.
        assert any(
            ins == "RUN" and "chown" in rest and cache in rest for ins, rest in instrs[:volume_at]
        ), target
        # Ray joins nodes only with the same Python patch release: both targets must run the
        # interpreter of the `python` stage, directly or copied from a stage built on it.
        copies = [
            rest.split()[0].split("=", 1)[1]
            for ins, rest in stages[target]["body"]
            if ins == "COPY" and rest.startswith("--from=") and "/usr/local /usr/local" in rest
        ]
        assert all("python" in lineage(stages, c) for c in copies), target
        assert "python" in lineage(stages, target) or copies, target
    builder = dict(
        rest.partition("=")[::2] for ins, rest in stages["builder"]["body"] if ins == "ARG"
    )
    assert builder["TORCH_SPEC"] == "torch==2.13.0"
    import ray

    assert builder["RAY_SPEC"].endswith(f"=={ray.__version__}")


def test_dockerignore_sends_only_the_package_sources():
    rules = dockerignore_rules()
    for rel in ["pyproject.toml", "README.md", "jobs/cli/main.py", "llm_core/engine/api.py",
                "cluster/storage/s3.py", "workers/inference/actor.py"]:
        assert in_context(rel, rules), rel
    for rel in [".venv/bin/python", ".git/HEAD", "tests/test_infra.py", "jobs/cli/__pycache__/main.pyc",
                "infra/docker/Dockerfile", ".env", "examples/data/x.parquet",
                "out/data/20261130T000000Z-0a1b2c3d/part-0.parquet"]:
        assert not in_context(rel, rules), rel


def test_package_builds_from_the_docker_context(tmp_path):
    """`pip install /src` in the image sees only what the ignore file lets through."""
    rules, src = dockerignore_rules(), tmp_path / "src"
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "node_modules")]
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), REPO)
            if in_context(rel, rules):
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("llmbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("jobs", "llm_core", "cluster", "workers"):
        if (REPO / package / "__init__.py").exists():
            assert f"{package}/__init__.py" in names, package


# ---- Ray cluster launcher -------------------------------------------------------------------


def test_launcher_config_passes_ray_validation():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    # What `ray up` does before any cloud call: merge the AWS defaults, then check the schema.
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["max_workers"] == 0
    assert types[head]["resources"].get("CPU") == 0, "the head must not run model work"
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(types[n]["max_workers"] >= 1 for n in gpu_types)
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]

    # The defaults must not leak in: they install a different Ray and Python.
    commands = " ; ".join(config["setup_commands"] + config["head_setup_commands"]
                          + config["worker_setup_commands"])
    assert "ray-wheels" not in commands and "anaconda" not in commands
    assert f"ray[default]=={ray.__version__}" in commands
    dist_remote = next(r for r, local in raw["file_mounts"].items() if local.rstrip("/") == "./dist")
    assert f"{dist_remote}/*.whl" in commands, "the setup must install the mounted wheel"
    python = re.search(r"--python (3\.11\.\d+)", commands)
    assert python, "pin the patch release: Ray rejects nodes whose Python differs"
    assert "~/.ray/auth_token" in raw["file_mounts"] and "RAY_AUTH_MODE=token" in commands
    # cluster.storage.s3 falls back to us-east-1 without a region; EC2 does not set one for boto3.
    assert f"AWS_REGION={config['provider']['region']}" in commands


def test_launcher_node_configs_are_valid_run_instances_requests():
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    instance_types = set(model.shape_for("InstanceType").enum)
    raw = yaml.safe_load(LAUNCHER.read_text())
    for name, node_type in raw["available_node_types"].items():
        params = {k: v for k, v in node_type["node_config"].items() if k != "SubnetIds"}  # Ray's own
        assert params["InstanceType"] in instance_types, name
        # Ray passes node_config to EC2 RunInstances as is; botocore knows its shape offline.
        report = ParamValidator().validate({**params, "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


# ---- `llmbatch` command lines in infra/ are real CLI commands ---------------------------------


_COMMAND_PREFIXES = {"then", "do", "else", "exec", "env", "sudo", "nohup", "time", "!"}


def _invocations_in_text(text: str) -> list[list[str]]:
    """`llmbatch ...` command lines inside a shell string, up to the next shell operator."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    found = []
    for i, tok in enumerate(tokens):
        # Only in command position: `useradd ... llmbatch` names a user, not a command.
        prev = tokens[i - 1] if i else ";"
        command_position = (
            set(prev) <= set(";&|()") or prev in _COMMAND_PREFIXES or re.fullmatch(r"\w+=\S*", prev)
        )
        if tok == "llmbatch" and command_position:
            argv = []
            for t in tokens[i + 1 :]:
                if t and set(t) <= set(";&|()<>"):
                    break
                argv.append(t)
            found.append(argv)
    return found


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def collect_cli_invocations() -> dict[tuple[str, ...], str]:
    """{argv after `llmbatch`: where it was found} from the YAML files and the Dockerfile."""
    found: dict[tuple[str, ...], str] = {}
    for path in yaml_files():
        rel = str(path.relative_to(REPO))
        for doc in load_all(path):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                continue  # data, not commands
            for s in _strings(doc):
                if len(s.split()) < 2:
                    continue  # a single word ("llmbatch" as a label or namespace) is a name
                for argv in _invocations_in_text(s):
                    found.setdefault(tuple(argv), rel)
            if isinstance(doc, dict) and "spec" in doc:
                for _, pod in pod_specs(doc):
                    for c in pod["containers"]:
                        if c["image"] not in IMAGES:
                            continue
                        if "command" in c:  # exec form, e.g. [llmbatch, serve] or [/bin/sh, -c, ...]
                            argv = c["command"] + c.get("args", [])
                            if Path(argv[0]).name == "llmbatch":
                                found.setdefault(tuple(argv[1:]), rel)
                        elif "args" in c:  # the image ENTRYPOINT (`llmbatch`) gets these args
                            found.setdefault(tuple(c["args"]), rel)
    _, stages = docker_stages(DOCKERFILE.read_text())
    for target in ("cpu", "cuda"):
        instrs = effective(stages, target)
        argv = exec_form(last(instrs, "ENTRYPOINT")) + exec_form(last(instrs, "CMD"))
        assert argv[0] == "llmbatch"
        found.setdefault(tuple(argv[1:]), f"Dockerfile {target}")
        for ins, rest in instrs:
            if ins == "RUN":
                for argv in _invocations_in_text(rest):
                    found.setdefault(tuple(argv), f"Dockerfile {target}")
    return found


_CHECK_ARGV = r"""
import argparse, json, sys
from jobs.cli.main import build_parser

argv = json.loads(sys.argv[1])
parser, path = build_parser(), []
while True:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or len(path) == len(argv) or argv[len(path)] not in subs[0].choices:
        break
    parser = subs[0].choices[argv[len(path)]]
    path.append(argv[len(path)])
print(json.dumps(path), flush=True)
build_parser().parse_args(argv)  # exits 2 with argparse's complaint on a bad command line
"""


def test_collector_sees_the_commands_infra_uses():
    found = collect_cli_invocations()
    commands = {argv[0] for argv in found if argv}
    assert {"serve", "run", "--help"} <= commands, found


@pytest.mark.parametrize("argv, where", sorted(collect_cli_invocations().items()), ids=str)
def test_infra_command_line_is_accepted_by_the_cli(argv, where):
    argv = list(argv)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, *a], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    parsed = run("-c", _CHECK_ARGV, json.dumps(argv))
    assert parsed.returncode == 0, f"{where}: `llmbatch {shlex.join(argv)}`\n{parsed.stderr}"
    path = json.loads(parsed.stdout.splitlines()[0])
    if path:
        helped = run("-m", "jobs.cli.main", *path, "--help")
        assert helped.returncode == 0, f"{where}: llmbatch {' '.join(path)} --help\n{helped.stderr}"
