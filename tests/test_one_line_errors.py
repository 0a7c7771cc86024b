"""User errors end in one line naming what was wrong: a code-bearing pickle, an unreachable S3
endpoint (never torch's advice to disable weights-only loading, never "no meta.json")."""
from __future__ import annotations

import shutil
import socket

import pytest
import torch

from models.checkpoint import CheckpointError, load_state
from models.convert import load_official_file
from pipelines.cli import main as cli_main


class _Code:
    # shutil.rmtree, not print: Ray replaces builtins.print with its own once its tqdm is imported.
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent/raylift-test",))


def test_code_bearing_pickles_are_refused_in_one_line(tmp_path):
    torch.save({"weight": torch.zeros(2), "hook": _Code()}, tmp_path / "model.pt")
    for load in (lambda: load_state(tmp_path), lambda: load_official_file(tmp_path / "model.pt")):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert "\n" not in msg and "weights_only" not in msg and "weights_only=False" not in msg
        assert f"{tmp_path / 'model.pt'}: holds code-bearing pickles (it names shutil.rmtree)" in msg
        assert msg.endswith("and was refused; raylift loads only tensors and plain data")


def test_evaluate_names_an_unreachable_s3_endpoint(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    assert cli_main(["evaluate", "--checkpoint", "s3://runs/exp/checkpoint_epoch0001"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"cannot reach S3 endpoint http://127.0.0.1:{port} for s3://runs/exp/checkpoint_epoch0001" in err
    assert "meta.json" not in err
