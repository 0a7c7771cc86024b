"""Training: the pure loop pieces (no Ray), run-directory checkpoints and logs, and quick real runs
in the driver process (num_workers=0) on a tiny synthetic dataset."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, save_checkpoint
from models.losses import build_loss, forward_for_loss
from models.registry import build_model, count_parameters
from pipelines.config import TrainConfig, config_from_dict
from pipelines.train.checkpoints import (
    best, checkpoint_name, latest, list_checkpoints, prune, to_keep, write_checkpoint,
)
from pipelines.train.logs import csv_text, read_csv, RunLog
from pipelines.train.loop import (
    build_optimizer, build_scheduler, build_train_state, capture_rng_state, check_compatible,
    checkpoint_meta, current_lr, epoch_line, load_resume_state, masked_error_sums, restore_rng_state,
    train_step, unwrap, validation_sums,
)
from tests.helpers import synthetic_cfg

T, J = 9, 17


def tiny_cfg(**train) -> dict:
    return config_from_dict({
        "name": "unit",
        "data": {"windows": {"mode": "seq2seq", "frames": T}},
        "model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2},
        "train": {"lr": 1e-3, **train},
    }).to_dict()


def tiny_model(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config_from_dict(cfg).model, frames=T, joints=J)


def fake_batch(n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, T, J, 3, generator=g) * 0.2
    pos[:, :, 0] = 0
    return {
        "keypoints_2d": pos[..., :2] / 2 + 0.01 * torch.randn(n, T, J, 2, generator=g),
        "positions_3d": pos,
        "mask": torch.ones(n, T),
        "intrinsics": torch.zeros(n, 9),
        "flipped": torch.zeros(n, dtype=torch.bool),
    }


def mixste_loss():
    loss = build_loss("mixste")
    return lambda m, b: loss(forward_for_loss(m, b["keypoints_2d"]), b)


# ----------------------------------------------------------------------------- optimisation
def test_optimizer_and_scheduler_follow_config():
    model = torch.nn.Linear(3, 3)
    tc = TrainConfig(lr=2e-4, weight_decay=0.1, optimizer="adamw", betas=(0.9, 0.98), lr_decay=0.98)
    opt = build_optimizer(model, tc)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 2e-4 and group["weight_decay"] == 0.1 and tuple(group["betas"]) == (0.9, 0.98)
    sched = build_scheduler(opt, tc)
    for _ in range(3):
        opt.step()
        sched.step()
    assert current_lr(opt) == pytest.approx(2e-4 * 0.98**3)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adam")), torch.optim.Adam)


def test_train_step_reduces_loss_and_clips():
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    opt = build_optimizer(model, config_from_dict(cfg).train)
    batch, loss_fn = fake_batch(), mixste_loss()
    first, terms = train_step(model, batch, loss_fn, opt)
    assert {"wmpjpe", "tc", "mpjve", "mpjpe_mm"} <= set(terms)
    for _ in range(40):
        last, _ = train_step(model, batch, loss_fn, opt)
    assert last < 0.6 * first
    _, terms = train_step(model, batch, loss_fn, opt, clip_grad=1e-3)
    assert terms["grad_norm"] > 1e-3  # measured before clipping


def test_train_step_refuses_non_finite_loss():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {"keypoints_2d": torch.zeros(1, 2)}
    with pytest.raises(FloatingPointError, match="not finite"):
        train_step(model, batch, lambda m, b: (m(b["keypoints_2d"]).sum() * float("nan"), {}), opt)


# ----------------------------------------------------------------------------- validation
def test_masked_error_sums_count_only_real_frames():
    pred = torch.zeros(2, 3, 2, 3)
    target = torch.zeros(2, 3, 2, 3)
    target[0, 0, :, 0] = 3.0  # frame error 3 m, counted
    target[1, 2, :, 1] = 100.0  # padded frame, not counted
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    total, count = masked_error_sums(pred, target, mask)
    assert count == 5 and total == pytest.approx(3.0)
    with pytest.raises(ValueError, match="shape"):
        masked_error_sums(pred, target[:, :1], mask)


def test_validation_sums_skip_flipped_windows():
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    batches = [fake_batch(3, seed=s) for s in range(3)]
    whole = validation_sums(model, batches, torch.device("cpu"))
    batches[1]["flipped"][:] = True
    without = validation_sums(model, batches, torch.device("cpu"))
    alone = validation_sums(model, batches[1:2], torch.device("cpu"))
    assert whole[1] == 3 * 3 * T and without[1] == 2 * 3 * T and alone == (0.0, 0.0)
    assert model.training  # mode restored


# ----------------------------------------------------------------------------- RNG state
def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first


# ----------------------------------------------------------------------------- checkpoints
def _trained(cfg: dict):
    model = tiny_model(cfg)
    tc = config_from_dict(cfg).train
    opt, sched = build_optimizer(model, tc), build_scheduler(build_optimizer(model, tc), tc)
    sched = build_scheduler(opt, tc)
    train_step(model, fake_batch(), mixste_loss(), opt)
    sched.step()
    return model, opt, sched


def _save(directory, cfg: dict, epoch: int = 1, val: float = 50.0, dataset_id: str = "ds1"):
    model, opt, sched = _trained(cfg)
    history = [{"epoch": e, "loss": 0.1, "val_mpjpe": val} for e in range(1, epoch + 1)]
    meta = checkpoint_meta(cfg, epoch, dataset_id, J, "h36m", {"val_mpjpe": val}, "val_mpjpe")
    state = build_train_state(opt, sched, epoch, [capture_rng_state()], history)
    save_checkpoint(directory, model.state_dict(), meta, state)
    return model, opt, sched


def test_checkpoint_payload_round_trip(tmp_path):
    cfg = tiny_cfg()
    model, opt, sched = _save(tmp_path / "ck", cfg, epoch=3)
    fresh = tiny_model(tiny_cfg())
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    tc = config_from_dict(cfg).train
    fopt = build_optimizer(fresh, tc)
    fsched = build_scheduler(fopt, tc)
    state = load_resume_state(str(tmp_path / "ck"), fresh, fopt, fsched, cfg, J, "ds1")
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert current_lr(fopt) == pytest.approx(current_lr(opt))
    assert fsched.last_epoch == sched.last_epoch
    key = next(iter(opt.state))
    fkey = next(iter(fopt.state))
    assert torch.equal(opt.state[key]["exp_avg"], fopt.state[fkey]["exp_avg"])
    assert len(state["rng"]) == 1 and "torch" in state["rng"][0]


def test_mismatched_checkpoints_are_refused(tmp_path):
    cfg = tiny_cfg()
    _save(tmp_path / "ck", cfg)
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    other_model = config_from_dict({"data": {"windows": {"mode": "seq2frame", "frames": T}},
                                    "model": {"name": "poseformer"}}).to_dict()
    with pytest.raises(CheckpointError, match="holds model 'mixste'.*'poseformer'"):
        check_compatible(meta, other_model, J, "ds1", "ck")
    other_t = config_from_dict({**cfg, "data": {**cfg["data"], "windows": {**cfg["data"]["windows"], "frames": 27}}}).to_dict()
    with pytest.raises(CheckpointError, match="T=9 frames.*frames=27"):
        check_compatible(meta, other_t, J, "ds1", "ck")
    with pytest.raises(CheckpointError, match="model.depth"):
        check_compatible(meta, {**cfg, "model": {**cfg["model"], "depth": 2}}, J, "ds1", "ck")
    with pytest.raises(CheckpointError, match="dataset 'ds1'.*'ds2'"):
        check_compatible(meta, cfg, J, "ds2", "ck")
    model = tiny_model(cfg)
    tc = config_from_dict(cfg).train
    opt = build_optimizer(model, tc)
    with pytest.raises(CheckpointError, match="T=9"):
        load_resume_state(str(tmp_path / "ck"), model, opt, build_scheduler(opt, tc), other_t, J, "ds1")


def test_corrupt_checkpoints_are_refused(tmp_path):
    cfg = tiny_cfg()
    _save(tmp_path / "ck", cfg)
    model = tiny_model(cfg)
    tc = config_from_dict(cfg).train
    opt = build_optimizer(model, tc)
    sched = build_scheduler(opt, tc)
    data = (tmp_path / "ck" / "model.pt").read_bytes()
    (tmp_path / "ck" / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pt: cannot be read"):
        load_resume_state(str(tmp_path / "ck"), model, opt, sched, cfg, J, "ds1")
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt meta.json"):
        load_resume_state(str(tmp_path / "ck"), model, opt, sched, cfg, J, "ds1")


def test_run_directory_retention_and_partial_uploads(tmp_path):
    cfg = tiny_cfg()
    run = str(tmp_path / "run")
    vals = [80.0, 60.0, 70.0, 65.0]
    model, opt, sched = _trained(cfg)
    for epoch, val in enumerate(vals, start=1):
        meta = checkpoint_meta(cfg, epoch, "ds1", J, "h36m", {"val_mpjpe": val}, "val_mpjpe")
        write_checkpoint(run, epoch, model.state_dict(), meta, build_train_state(opt, sched, epoch, [], []))
    (tmp_path / "run" / checkpoint_name(5)).mkdir()  # an upload cut short: no files
    (tmp_path / "run" / checkpoint_name(5) / "model.pt").write_bytes(b"partial")
    found = list_checkpoints(run)
    assert [c.epoch for c in found] == [1, 2, 3, 4]
    assert best(found).epoch == 2 and latest(found).epoch == 4
    assert to_keep(found, 2) == {checkpoint_name(2), checkpoint_name(4)}
    assert sorted(prune(run, keep_best=1)) == [checkpoint_name(1), checkpoint_name(3)]
    assert [c.epoch for c in list_checkpoints(run)] == [2, 4]


def test_csv_and_tensorboard_logs(tmp_path):
    history = [{"epoch": 1, "loss": 0.5, "val_mpjpe": 90.0, "lr": 1e-3, "windows_per_s": 10.0,
                "epoch_time_s": 2.0, "train_tc": 0.1}]
    log = RunLog(str(tmp_path / "run"))
    log.write(history)
    history.append({**history[0], "epoch": 2, "val_mpjpe": 80.0})
    log.write(history)
    log.close()
    rows = read_csv(str(tmp_path / "run"))
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_mpjpe"] == 80.0 and rows[0]["train_tc"] == 0.1
    assert csv_text(history).splitlines()[0].startswith("epoch,loss,val_mpjpe,lr,windows_per_s")  # the rows' order
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_training_curves_png_and_epoch_line():
    from pipelines.viz.plots import training_curves_png

    history = [{"epoch": e, "loss": 1.0 / e, "val_mpjpe": 100.0 / e, "lr": 1e-3 * 0.9**e} for e in (1, 2, 3)]
    png = training_curves_png(history, title="unit")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    line = epoch_line({**history[1], "windows_per_s": 123.4, "epoch_time_s": 5.0}, 10, 3725)
    assert "epoch  2/10" in line and "50.00 mm" in line and "123 windows/s" in line and "ETA 1:02:05" in line
    assert "n/a" in epoch_line({**history[0], "val_mpjpe": math.nan, "windows_per_s": 1, "epoch_time_s": 1}, 3, 0)


def test_unwrap_returns_the_plain_module():
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model)
    assert unwrap(compiled) is model and unwrap(model) is model


# ----------------------------------------------------------------------------- real runs


def test_driver_process_run_resumes_and_refuses_mismatches(tmp_path, ray_local):
    from pipelines.train.driver import run_training
    from pipelines.train.data import iter_val_batches
    from preprocessing.keypoints.readers import load_split_arrays

    lines: list[str] = []
    out = run_training(synthetic_cfg(tmp_path, evaluate=True), progress=lines.append)
    run = tmp_path / "runs" / "tiny"
    assert out.run_uri == str(run)
    assert [h["epoch"] for h in out.history] == [1, 2] and all(h["val_mpjpe"] > 0 for h in out.history)
    n_train = len(load_split_arrays(out.dataset, "train", columns=["mask"])["mask"])
    assert all(h["windows"] == n_train for h in out.history)  # one worker: every window, every epoch
    # Cost columns: the model's MACs and parameters, and frames (T per seq2seq window) per second.
    params = count_parameters(build_model(synthetic_cfg(tmp_path).model, frames=9, joints=17))
    for h in out.history:
        assert h["params"] == params and h["macs_per_frame"] > 0 and h["peak_memory_mb"] > 0
        assert h["train_frames_per_s"] == pytest.approx(9 * h["windows_per_s"])
    assert [r["epoch"] for r in read_csv(str(run))] == [1, 2]
    assert read_csv(str(run))[0]["macs_per_frame"] == out.history[0]["macs_per_frame"]
    assert (run / "training_curves.png").stat().st_size > 5000 and (run / "config.yaml").is_file()
    assert (run / "eval" / "results.md").is_file() and {"model", "baseline"} <= set(out.evaluation["results"])
    assert any("best checkpoint:" in line for line in lines)
    # Validation shares: two workers' row groups together are the whole test split, once.
    n_test = len(load_split_arrays(out.dataset, "test")["mask"])
    shares = [sum(len(b["mask"]) for b in iter_val_batches(out.dataset, "test", 7, r, 2)) for r in (0, 1)]
    assert sum(shares) == n_test and min(shares) > 0
    assert sum(len(b["mask"]) for b in iter_val_batches(out.dataset, "test", 7, 0, 1, max_windows=10)) == 10
    kept = [c.epoch for c in list_checkpoints(str(run))]
    assert 2 in kept and len(kept) <= 2  # the best and the latest

    # The same command with more epochs continues after epoch 2 (the first rows are kept as they were).
    first_rows = read_csv(str(run))
    lines.clear()
    out = run_training(synthetic_cfg(tmp_path, epochs=3), progress=lines.append)
    assert any("resuming from" in line and checkpoint_name(2) in line for line in lines)
    rows = read_csv(str(run))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[:2] == first_rows
    assert latest(list_checkpoints(str(run))).epoch == 3

    # Another window length or another model under the same run name is refused before training.
    other_t = synthetic_cfg(tmp_path, epochs=4)
    other_t.data.windows.frames = 11
    with pytest.raises(CheckpointError, match="T=9 frames"):
        run_training(other_t, progress=lines.append)
    # A damaged latest checkpoint is refused too, naming the file.
    model_pt = run / checkpoint_name(3) / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{checkpoint_name(3)}/model.pt"):
        run_training(synthetic_cfg(tmp_path, epochs=4), progress=lines.append)


def test_cli_reports_bad_configs_in_one_line(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    assert main(["train", "--config", demo, "--set", "train.keep_best=0"]) == 2
    assert "train.keep_best must be >= 1" in capsys.readouterr().err


def test_bench_train_reports_figures():
    from pipelines.bench.train import bench_train, format_result

    r = bench_train("mixste", frames=9, batch=2, steps=2, warmup=1, overrides=["model.dim=16", "model.depth=1",
                                                                               "model.heads=2"])
    assert r["frames_per_s"] > 0 and r["peak_memory_bytes"] > 0 and r["gflop_per_step"] > 0
    assert r["precision"] == "fp32" and "process peak RSS" in format_result(r)
