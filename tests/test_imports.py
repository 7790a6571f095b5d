"""notifier's modules import one another without a circle, at module top, and each on its own.

The import graph is read from the source with ``ast``: every import of a notifier module at
any level (inside a function, under ``if TYPE_CHECKING:``), so that an import tucked into a
function to dodge a circle still shows the circle. Importing ``notifier.a.b`` from outside
the package ``notifier.a`` runs ``notifier/a/__init__.py`` first, so it counts as importing
``notifier.a`` as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from itertools import pairwise
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = "notifier"

# Imports of notifier modules inside a function that are there on purpose, with the reason
# in a comment beside each: (importing module, imported module).
LATE_ON_PURPOSE = {
    ("notifier.cli", "notifier.web"),  # start-up time of every command but `web` and `run`
    # SQLAlchemy and Alembic added about a third to every command's start-up
    ("notifier.record_cli", "notifier.store"),
    ("notifier.record_cli", "notifier.responses"),
    ("notifier.record_cli", "notifier.evidence"),
}
# Importing it runs the command line (it is `python -m notifier`), so it is not imported alone.
SCRIPTS = {"notifier.__main__", "notifier.migrations.env"}  # run by `python -m`; by Alembic


@dataclass(frozen=True)
class Import:
    """One import of a notifier module, as written."""

    source: str  # the importing module
    target: str  # the module imported
    path: Path
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.target}"


def modules() -> dict[str, Path]:
    """Every module of notifier, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(known: dict[str, Path]) -> list[Import]:
    """Every import of a notifier module in notifier, at any level."""
    return [found for name, path in known.items() for found in _imports_of(name, path, known)]


def _imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    todo: list[tuple[ast.AST, bool]] = [(tree, False)]
    while todo:
        node, in_function = todo.pop()
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            todo.append((child, inside))
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, package)
                # ``from notifier import timeline`` imports the module notifier.timeline.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            else:
                continue
            for target in dict.fromkeys(targets):  # each module once per statement
                if target in known:
                    yield Import(name, target, path, child.lineno, inside)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` names, relative ones made absolute."""
    if not node.level:
        return node.module or ""
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def _packages(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``: what is initialised before ``a.b.c`` is."""
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def graph(found: list[Import]) -> dict[str, dict[str, Import]]:
    """Module -> the modules importing it initialises (first), each with the import that does."""
    edges: dict[str, dict[str, Import]] = {}
    for item in found:
        mine = {item.source, *_packages(item.source)}  # already being initialised
        for target in [*_packages(item.target), item.target]:
            if target not in mine:
                edges.setdefault(item.source, {}).setdefault(target, item)
    return edges


def test_notifier_modules_import_one_another_without_a_circle() -> None:
    edges = graph(imports(modules()))
    try:
        TopologicalSorter({source: set(targets) for source, targets in edges.items()}).prepare()
    except CycleError as exc:
        cycle: list[str] = exc.args[1]
        if not all(b in edges.get(a, {}) for a, b in pairwise(cycle)):
            cycle.reverse()  # graphlib may give it against the arrows
        steps = "\n".join(
            f"  {edges[a][b]}" + (f" (so {b})" if edges[a][b].target != b else "") for a, b in pairwise(cycle)
        )
        raise AssertionError(f"import circle {' -> '.join(cycle)}:\n{steps}") from None


def test_no_module_imports_a_notifier_module_inside_a_function() -> None:
    late = [item for item in imports(modules()) if item.in_function]
    unexplained = [str(item) for item in late if (item.source, item.target) not in LATE_ON_PURPOSE]
    assert not unexplained, "imports to move to the top of their module:\n" + "\n".join(unexplained)
    stale = LATE_ON_PURPOSE - {(item.source, item.target) for item in late}
    assert not stale, f"no longer imported inside a function (drop them from LATE_ON_PURPOSE): {stale}"


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    # One interpreter, and before each module every notifier module is forgotten, so each one
    # is imported first, as a program that starts with it would import it.
    names = sorted(set(modules()) - SCRIPTS)
    script = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "notifier" or m.startswith("notifier.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(f"import {name}:\\n{traceback.format_exc()}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_opens_with_a_line_saying_what_it_is_for() -> None:
    silent = []
    for name, path in modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not docstring or not docstring.splitlines()[0].strip():
            silent.append(name)
    assert not silent, f"modules without a docstring saying what they are for: {silent}"
