"""Local result files are replaced atomically: a failed write leaves the old file and no debris."""
from __future__ import annotations

import pytest

from preprocessing.store.storage import atomic_local_file, write_local_atomic


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


def test_result_files_are_readable_by_the_team(tmp_path):
    """Run directories live on shared storage: files 0644 and directories 0755 under the usual
    umask 022, like any file a program creates (mkstemp's 0600 must not leak through)."""
    import os

    old = os.umask(0o022)
    try:
        path = write_local_atomic(tmp_path / "run" / "config.yaml", "a: 1\n")
        with atomic_local_file(tmp_path / "run" / "metrics.csv") as tmp:
            tmp.write_text("epoch\n1\n")
        os.umask(0o077)  # a private umask is honoured too
        private = write_local_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "run" / "metrics.csv").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "run").stat().st_mode & 0o777) == oct(0o755)
    assert oct(private.stat().st_mode & 0o777) == oct(0o600)
