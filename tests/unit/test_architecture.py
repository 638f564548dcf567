"""The package rules, checked on every test run so a wrong import fails CI: the import-linter
contracts of pyproject.toml (layers jobs -> workers -> llm_core -> cluster, no Ray in llm_core, no
cycles between sibling subpackages), no import cycle between any two modules, and small modules."""

from __future__ import annotations

import graphlib
import subprocess
import sys
from pathlib import Path

import grimp

from tests.support.paths import REPO

PACKAGES = ("cluster", "llm_core", "workers", "jobs")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")  # installed by the dev extra
MAX_LINES = 300
MIGRATIONS = "migrations"  # generated alembic revisions: long by nature, never edited by hand


def test_import_linter_contracts_are_kept():
    # A subprocess: lint-imports owns its console, and reads pyproject.toml from its working directory.
    lint = subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert lint.returncode == 0, (
        f"an import breaks a contract of [tool.importlinter] in pyproject.toml:\n{lint.stdout}{lint.stderr}"
    )


def _import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every cycle found while cutting one import of each until none is left (a cycle per cut)."""
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = []
    while True:
        try:
            graphlib.TopologicalSorter(edges).prepare()
            return cycles
        except graphlib.CycleError as exc:
            cycle = exc.args[1][::-1]  # graphlib lists it imported-first; read it importer-first
            cycles.append(cycle)
            edges[cycle[0]].discard(cycle[1])


def _describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    steps = []
    for importer, imported in zip(cycle, cycle[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = f" (line {details[0]['line_number']})" if details else ""
        steps.append(f"{importer}{where}")
    return " -> ".join([*steps, cycle[-1]])


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = _import_cycles(graph)
    assert not cycles, "import cycles (each module imports the next):\n" + "\n".join(
        _describe(graph, c) for c in cycles
    )


def test_the_cycle_finder_reports_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=importer, imported=imported)
    [cycle] = _import_cycles(graph)
    assert cycle[0] == cycle[-1] and set(cycle) == {"p.a", "p.b", "p.c"}


def test_no_module_is_over_300_lines():
    too_long = {
        str(path.relative_to(REPO)): n
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if MIGRATIONS not in path.relative_to(REPO).parts
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"
