"""Local result files are replaced atomically: a failed write leaves the old file and no debris."""
from __future__ import annotations

import pytest

from preprocessing.storage import atomic_local_file, write_local_atomic


def test_write_local_atomic_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "results.md"
    assert write_local_atomic(path, "one\n") == path
    write_local_atomic(path, b"two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.md"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="renderer crashed"):
        with atomic_local_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("renderer crashed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
