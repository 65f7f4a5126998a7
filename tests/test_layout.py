"""The package's layout: one folder per stage of the DAG, imports one way, the loop and the
strategies blind to the configuration, modules a newcomer can read.

Imports are read from the source (every import statement, nested ones too, except under
``if TYPE_CHECKING``), so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "audiopetl"
# The stages and the edge, lowest first: a package may import the packages of a lower rank and
# itself, never one of its own rank or above (audiopetl/__init__.py draws the same picture).
RANKS = {
    "core": 0,
    "process": 1,
    "data": 2,
    "features": 3,
    "models": 3,
    "training": 4,
    "report": 4,
    "study": 5,
    "inference": 6,
    "cli": 7,
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    """The audiopetl modules a module imports."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.startswith("audiopetl"):
                resolved = _resolve(target)
                # A package's own __init__ is not an edge of its submodules.
                if resolved and resolved != name and not name.startswith(resolved + "."):
                    found.add(resolved)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def test_every_module_belongs_to_a_stage() -> None:
    top = ("audiopetl", "audiopetl.__main__")
    loose = [n for n in MODULES if stage_of(n) is None and n not in top]
    assert loose == [], f"modules outside the stage packages: {loose}"
    assert set(RANKS) == {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}


def circles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle() -> None:
    circles = circles_of(GRAPH)
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_checks_can_fail() -> None:
    """A circle is found where there is one, and imports inside functions are read."""
    assert circles_of({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # cli.common imports the study inside a function only.
    assert "audiopetl.study" in GRAPH["audiopetl.cli.common"]


def test_imports_run_one_way() -> None:
    wrong = []
    for name, targets in GRAPH.items():
        here = stage_of(name)
        for target in targets:
            there = stage_of(target)
            if here is None or there is None or here == there:
                continue
            if RANKS[there] >= RANKS[here]:
                wrong.append(f"{name} -> {target} ({here} may not import {there})")
    assert wrong == [], "\n".join(wrong)


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += GRAPH[name]
    return seen


@pytest.mark.parametrize(
    "module",
    [
        "audiopetl.training.trainer",
        "audiopetl.training.run",
        "audiopetl.training.evaluate",
        *sorted(m for m in MODULES if m.startswith("audiopetl.models.")),
    ],
)
def test_the_loop_strategies_and_builders_never_reach_the_configuration(module: str) -> None:
    """They receive typed settings; neither they nor anything they import reads the config
    module or resolves a configuration (audiopetl.study)."""
    reached = closure(module)
    assert "audiopetl.core.config" not in reached
    assert not any(m.startswith("audiopetl.study") for m in reached)


def test_training_a_run_loads_no_configuration_module() -> None:
    """The same, at run time: importing the training job and every strategy and model kind
    (the registries import their modules dynamically) leaves the config module unloaded."""
    code = (
        "import sys\n"
        "import audiopetl.training.run, audiopetl.training.evaluate\n"
        "from audiopetl.models.strategies import kinds as strategies\n"
        "from audiopetl.models.backbones import kinds as backbones\n"
        "strategies(); backbones()\n"
        "bad = [m for m in sys.modules if m == 'audiopetl.core.config'"
        " or m.startswith('audiopetl.study')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("stage", sorted(RANKS))
def test_every_stage_says_what_it_owns_and_may_import(stage: str) -> None:
    doc = ast.get_docstring(ast.parse((SRC / stage / "__init__.py").read_text())) or ""
    assert len(doc.split()) >= 25, f"{stage}/__init__.py: a paragraph on what it owns"
    assert "Imports:" in doc, f"{stage}/__init__.py: say what it may import"


def test_no_module_is_longer_than_a_sitting() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    over = {n: lines for n, lines in long.items() if lines > MAX_LINES}
    assert over == {}, f"modules over {MAX_LINES} lines: {over}"
