"""raylift talks to Ray through public APIs only : no `ray._private` imports,
no dashboard-internal HTTP routes, no parsing of Ray Train's private snapshot file."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("preprocessing", "models", "cluster", "pipelines")


def _sources():
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_no_private_ray_imports():
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if n.startswith("ray.") and "._" in n or n.startswith("ray._")]
    assert offenders == []


def test_no_dashboard_internal_routes_or_snapshot_parsing():
    for path in _sources():
        text = path.read_text()
        assert "/nodes?" not in text and "urlopen" not in text, f"{path}: a dashboard-internal route"
        assert "checkpoint_results" not in text, f"{path}: parses Ray Train's private snapshot"


def test_ray_registered_reads_the_run_through_result_from_path(tmp_path, monkeypatch):
    """Without a Ray Train record there is nothing registered; with one, Result.from_path is asked."""
    import ray.train

    from pipelines.train import checkpoints

    assert checkpoints.ray_registered(str(tmp_path)) is None
    (tmp_path / checkpoints.RAY_SNAPSHOT).write_text("{}")
    seen = {}

    class FakeCheckpoint:
        def __init__(self, path):
            self.path = path

    class FakeResult:
        best_checkpoints = [(FakeCheckpoint(f"{tmp_path}/checkpoint_epoch0002"), {"val_mpjpe": 1.0})]
        checkpoint = FakeCheckpoint(f"{tmp_path}/checkpoint_epoch0003/")

    def from_path(path, storage_filesystem=None):
        seen["path"] = path
        return FakeResult()

    monkeypatch.setattr(ray.train.Result, "from_path", staticmethod(from_path))
    assert checkpoints.ray_registered(str(tmp_path)) == {"checkpoint_epoch0002", "checkpoint_epoch0003"}
    assert seen["path"] == str(tmp_path)
