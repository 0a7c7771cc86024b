"""The house rules of the layout: imports only run downwards, every package says what it holds.

Floors, lowest first: preprocessing ← models ← cluster ← pipelines. A module may import its own
floor or any lower one, never a higher one, anywhere in the file (imports inside functions
included: the lazy ones are where upward reaches used to hide).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"preprocessing": 0, "models": 1, "cluster": 2, "pipelines": 3}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file that names a raylift floor."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in FLOORS]
    return found


def upward_imports(root: Path) -> list[str]:
    bad = []
    for package, floor in FLOORS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imported_packages(path):
                if FLOORS[target] > floor:
                    bad.append(f"{path.relative_to(root)}:{line} imports {target} (floor {FLOORS[target]} > {floor})")
    return bad


def test_no_import_runs_from_a_lower_floor_to_a_higher_one():
    assert upward_imports(REPO) == []


def test_the_walker_catches_an_upward_import(tmp_path):
    for package in FLOORS:
        (tmp_path / package).mkdir()
    (tmp_path / "preprocessing" / "ok.py").write_text("import numpy\nfrom preprocessing import errors\n")
    (tmp_path / "models" / "bad.py").write_text("def f():\n    from pipelines.config import load_config\n")
    (tmp_path / "cluster" / "bad.py").write_text("import pipelines.cli as cli\n")
    assert upward_imports(tmp_path) == [
        "models/bad.py:2 imports pipelines (floor 3 > 1)",
        "cluster/bad.py:1 imports pipelines (floor 3 > 2)",
    ]


@pytest.mark.parametrize("init", sorted(p.relative_to(REPO).as_posix() for f in FLOORS for p in (REPO / f).rglob("__init__.py")))
def test_every_package_says_what_lives_there(init):
    doc = ast.get_docstring(ast.parse((REPO / init).read_text()))
    assert doc and len(doc.split()) >= 8, f"{init}: needs a docstring saying what lives in the package"


def test_pipelines_is_grouped_by_command():
    """Command modules live in one sub-package per command; only the CLI and config stay on top."""
    top = sorted(p.name for p in (REPO / "pipelines").glob("*.py"))
    assert top == ["__init__.py", "cli.py", "config.py"]
    from pipelines.cli import COMMANDS

    for command, (module, _) in COMMANDS.items():
        assert module.split(".")[0] in ("pipelines", "cluster"), command
