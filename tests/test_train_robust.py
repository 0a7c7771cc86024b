"""Training that loses nothing: one live run per run directory, resumes only with the same trained
settings, a full disk ends in one line with nothing half-written (driver-process runs, tiny model)."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
import yaml

from models.checkpoint import CheckpointError
from pipelines.cli import main as cli_main
from pipelines.train.checkpoints import checkpoint_name, list_checkpoints
from pipelines.train.driver import RUN_LOCK, run_training
from pipelines.train.logs import read_csv
from pipelines.train.loop import config_differences
from preprocessing.store import lease
from preprocessing.store.storage import open_location
from tests.helpers import synthetic_cfg


def test_config_differences_ignore_only_the_listed_keys():
    a = synthetic_cfg(Path("/a")).to_dict()
    b = synthetic_cfg(Path("/b"), epochs=9, lr=1e-3, evaluate=True, val_batch_size=3)
    b.eval.flip = False
    diff = config_differences(a, b.to_dict())
    assert [k for k, _, _ in diff] == ["train.lr"]  # paths, epochs, eval settings may differ
    b.train.shuffle_buffer = 7
    b.model.depth = 2
    assert [k for k, _, _ in config_differences(a, b.to_dict())] == ["model.depth", "train.lr", "train.shuffle_buffer"]


def test_run_directory_lock_and_resume_with_other_settings(tmp_path, ray_local):
    run = tmp_path / "runs" / "tiny"
    # A live holder of the run directory (this test process stands in for another `raylift train`).
    holder = lease.acquire(open_location(str(run)).child(RUN_LOCK), "raylift train of run tiny")
    try:
        with pytest.raises(lease.LeaseHeld, match=rf"{run}/{RUN_LOCK} is held by raylift train of run tiny \(host .*pid"):
            run_training(synthetic_cfg(tmp_path, epochs=1), progress=lambda m: None)
    finally:
        holder.release()
    assert not list_checkpoints(str(run))

    run_training(synthetic_cfg(tmp_path, epochs=1), progress=lambda m: None)
    assert not (run / RUN_LOCK).exists()  # released when the run ends
    # Another learning rate is another experiment: refused, naming the key and both values.
    with pytest.raises(CheckpointError, match=r"train.lr: checkpoint 0.002, config 0.001"):
        run_training(synthetic_cfg(tmp_path, epochs=2, lr=1e-3), progress=lambda m: None)
    # More epochs (and other evaluation settings) continue the same run.
    lines: list[str] = []
    run_training(synthetic_cfg(tmp_path, epochs=2, val_batch_size=8), progress=lines.append)
    assert any("resuming from" in line for line in lines)
    assert [c.epoch for c in list_checkpoints(str(run))][-1] == 2


def test_full_disk_keeps_no_partial_checkpoint_and_no_log_row(tmp_path, ray_local, monkeypatch, capsys):
    """Defect 4: ENOSPC while epoch 2's train_state.pt is written (half the bytes land first)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synthetic_cfg(tmp_path, epochs=3).to_dict()))
    real_save = torch.save
    calls = {"train_state": 0}

    def full_disk_save(obj, f, *args, **kwargs):
        if str(f).endswith("train_state.pt"):
            calls["train_state"] += 1
            if calls["train_state"] == 2:
                real_save(obj, f, *args, **kwargs)
                Path(f).write_bytes(Path(f).read_bytes()[:1000])
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    capsys.readouterr()
    assert cli_main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    run = tmp_path / "runs" / "tiny"
    assert len(err.splitlines()) == 1, err
    assert f"no space left on device writing checkpoint {run / checkpoint_name(2)}: it needs about" in err
    assert "MB free" in err
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(("checkpoint", "."))) == [checkpoint_name(1)]
    assert [r["epoch"] for r in read_csv(str(run))] == [1]  # no row for the epoch that was not kept
