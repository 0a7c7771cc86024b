"""The house rules of the layout: imports only run downwards, every package says what it holds.

Floors, lowest first: preprocessing ← models ← cluster ← pipelines. Inside `preprocessing/` and
`pipelines/` the modules stand on floors too (`INNER_FLOORS`, docs/layout.md). A module may import
its own floor or any lower one, never a higher one, anywhere in the file (imports inside functions
included: the lazy ones are where upward reaches used to hide), and no package has an import
circle among its modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"preprocessing": 0, "models": 1, "cluster": 2, "pipelines": 3}
# Floors inside a package, lowest first: the longest matching module prefix decides a module's floor.
INNER_FLOORS = {
    "preprocessing": {
        "preprocessing.errors": 0, "preprocessing.version": 0, "preprocessing.schema": 0, "preprocessing.config": 0,
        "preprocessing.skeleton": 1, "preprocessing.cameras": 1, "preprocessing.sequences": 1,
        "preprocessing.sources": 2, "preprocessing.store": 2,
        "preprocessing.keypoints": 3, "preprocessing.images": 3,
    },
    "pipelines": {
        "pipelines.config": 0, "pipelines.tune.space": 0, "pipelines.viz.tables": 0, "pipelines.viz.plots": 0, "pipelines.viz.render": 0,
        "pipelines.data": 1, "pipelines.models": 1,
        "pipelines.evaluate": 2,
        "pipelines.train": 3,
        "pipelines.tune": 4, "pipelines.twostage": 4,
        "pipelines.bench": 5, "pipelines.viz.commands": 5,
        "pipelines.cli": 6,
    },
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in a file that names a raylift floor; for
    `from a.b import c` both `a.b` and `a.b.c` (c may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FLOORS]
    return found


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def upward_imports(root: Path) -> list[str]:
    bad = []
    for package, floor in FLOORS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, top in sorted({(line, t.split(".")[0]) for line, t in imports_of(path)}):
                if FLOORS[top] > floor:
                    bad.append(f"{path.relative_to(root)}:{line} imports {top} (floor {FLOORS[top]} > {floor})")
    return bad


def inner_floor(package: str, module: str):
    prefixes = [p for p in INNER_FLOORS[package] if module == p or module.startswith(p + ".")]
    return INNER_FLOORS[package][max(prefixes, key=len)] if prefixes else None


def inner_upward_imports(root: Path, package: str) -> list[str]:
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        here = inner_floor(package, module_name(root, path))
        reported = set()
        for line, target in sorted(imports_of(path), key=lambda x: (x[0], len(x[1]))):
            there = inner_floor(package, target) if target.split(".")[0] == package else None
            if here is not None and there is not None and there > here and line not in reported:
                reported.add(line)
                bad.append(f"{path.relative_to(root)}:{line} imports {target} (floor {there} > {here})")
    return bad


def import_circles(root: Path, package: str) -> list[list[str]]:
    """Strongly connected sets of more than one module (package `__init__`s aside)."""
    modules = {module_name(root, p): p for p in (root / package).rglob("*.py") if p.name != "__init__.py"}
    edges = {m: {t for _, t in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    return out


def test_no_import_runs_from_a_lower_floor_to_a_higher_one():
    assert upward_imports(REPO) == []


@pytest.mark.parametrize("package", sorted(INNER_FLOORS))
def test_inside_a_package_imports_run_downwards_too(package):
    unplaced = [module_name(REPO, p) for p in sorted((REPO / package).rglob("*.py"))
                if p.name != "__init__.py" and inner_floor(package, module_name(REPO, p)) is None]
    assert unplaced == [], f"modules without a floor in INNER_FLOORS[{package!r}]"
    assert inner_upward_imports(REPO, package) == []


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_no_package_has_an_import_circle(package):
    assert import_circles(REPO, package) == []


def test_the_walkers_catch_an_upward_import_and_a_circle(tmp_path):
    for package in FLOORS:
        (tmp_path / package).mkdir()
    (tmp_path / "preprocessing" / "ok.py").write_text("import numpy\nfrom preprocessing import errors\n")
    (tmp_path / "models" / "bad.py").write_text("def f():\n    from pipelines.config import load_config\n")
    (tmp_path / "cluster" / "bad.py").write_text("import pipelines.cli as cli\n")
    assert upward_imports(tmp_path) == [
        "models/bad.py:2 imports pipelines (floor 3 > 1)",
        "cluster/bad.py:1 imports pipelines (floor 3 > 2)",
    ]
    (tmp_path / "pipelines" / "evaluate").mkdir()
    (tmp_path / "pipelines" / "train").mkdir()
    (tmp_path / "pipelines" / "evaluate" / "a.py").write_text("def f():\n    from pipelines.train.b import g\n")
    (tmp_path / "pipelines" / "train" / "b.py").write_text("from pipelines.evaluate.a import f\n")
    assert inner_upward_imports(tmp_path, "pipelines") == [
        "pipelines/evaluate/a.py:2 imports pipelines.train.b (floor 3 > 2)"]
    assert import_circles(tmp_path, "pipelines") == [["pipelines.evaluate.a", "pipelines.train.b"]]


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
