"""Evaluation protocol on small constructed test splits: frames counted once, MPJVE within
sequences, action-wise tables, 3DHP PCK/AUC, mean-pose baseline, checkpoint refusal, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from pipelines.evaluate import metrics, results, scoring
from preprocessing.errors import DataError
from preprocessing.skeleton import H36M17, MPI17
from tests.helpers import DepthlessLift, eval_sequence, windows_of


def expected_h36m(seqs):
    """Hand-computed action-wise/frame-wise MPJPE and MPJVE of DepthlessLift (mm)."""
    per_act, all_frames = {}, []
    for s in seqs:
        t = np.nonzero(s["valid"])[0]
        err = 10.0 * t * 16 / 17  # 16 non-root joints off by 10 t mm
        per_act.setdefault(s["activity"], []).extend(err.tolist())
        all_frames.extend(err.tolist())
    return per_act, float(np.mean([np.mean(v) for v in per_act.values()])), float(np.mean(all_frames))


@pytest.fixture
def h36m_seqs():
    # Unbalanced activities: Walking has 2 sequences (10 + 7 frames), Eating one of 5 frames.
    return [
        eval_sequence("S9", "Walking 1", "54138969", 10, seed=1),
        eval_sequence("S11", "Walking", "55011271", 7, seed=2),
        eval_sequence("S9", "Eating", "54138969", 5, seed=3),
    ]


def test_seq2seq_each_real_frame_counted_once_and_action_wise(h36m_seqs):
    test = windows_of(h36m_seqs, frames=4, flipped_copies=True)
    result = scoring.evaluate_arrays(DepthlessLift(), test, "mem://h36m", H36M17, flip=True, )
    assert result["frames"] == 10 + 7 + 5
    assert result["protocol"].startswith("seq2seq: non-overlapping windows, each real frame counted once")
    model = result["results"]["model"]
    assert model["groups"]["Walking"]["frames"] == 17 and model["groups"]["Eating"]["frames"] == 5
    per_act, action_wise, frame_wise = expected_h36m(h36m_seqs)
    assert model["groups"]["Eating"]["mpjpe"] == pytest.approx(np.mean(per_act["Eating"]), rel=1e-5)
    assert model["group_mean"]["mpjpe"] == pytest.approx(action_wise, rel=1e-5)
    assert model["frame_wise"]["mpjpe"] == pytest.approx(frame_wise, rel=1e-5)
    assert action_wise != pytest.approx(frame_wise)  # the case really is unbalanced
    # Velocity error: 10 mm per step on 16 of 17 joints, across window boundaries inside a sequence.
    assert model["frame_wise"]["mpjve"] == pytest.approx(10.0 * 16 / 17, rel=1e-5)
    assert model["frame_wise"]["p_mpjpe"] <= model["frame_wise"]["mpjpe"] + 1e-6
    assert model["frame_wise"]["n_mpjpe"] <= model["frame_wise"]["mpjpe"] + 1e-6
    assert list(model["groups"]) == ["Eating", "Walking"]  # the papers' activity order


def test_frames_are_reassembled_per_sequence(h36m_seqs):
    test = windows_of(h36m_seqs, frames=4)
    frames = scoring.collect_frames(test["positions_3d"].copy(), test, H36M17)
    assert frames.num_frames == 22
    # MPJVE steps: N - 1 per sequence, never across sequences: 9 + 6 + 4.
    assert len(frames.steps()) == 19
    for seq in np.unique(frames.sequence):
        idx = frames.index[frames.sequence == seq]
        np.testing.assert_array_equal(idx, np.arange(len(idx)))
    # A shifted sequence (its frames far from the others) must not create a cross-sequence step.
    pred = test["positions_3d"].copy()
    pred[test["action"] == "Eating"] += 1.0
    f2 = scoring.collect_frames(pred, test, H36M17)
    vel = metrics.mpjpe_frames(f2.pred[f2.steps() + 1] - f2.pred[f2.steps()], f2.gt[f2.steps() + 1] - f2.gt[f2.steps()])
    # Only the root moved relative to the zeroed target root: velocity errors stay 0.
    np.testing.assert_allclose(vel, 0.0, atol=1e-4)


def test_a_frame_counted_twice_is_refused(h36m_seqs):
    test = windows_of(h36m_seqs, frames=4)
    dup = {k: np.concatenate([v, v[:1]]) for k, v in test.items()}
    with pytest.raises(DataError, match="more than once"):
        scoring.collect_frames(dup["positions_3d"], dup, H36M17)


def test_seq2frame_every_frame_once(h36m_seqs):
    test = windows_of(h36m_seqs, frames=5, mode="seq2frame")
    assert test["positions_3d"].shape[1:] == (1, 17, 3)
    result = scoring.evaluate_arrays(DepthlessLift(seq2frame=True), test, "mem://h36m", H36M17, )
    assert result["mode"] == "seq2frame" and result["frames"] == 22
    _, action_wise, frame_wise = expected_h36m(h36m_seqs)
    model = result["results"]["model"]
    assert model["group_mean"]["mpjpe"] == pytest.approx(action_wise, rel=1e-5)
    assert model["frame_wise"]["mpjve"] == pytest.approx(10.0 * 16 / 17, rel=1e-5)


def test_3dhp_pck_auc_per_sequence_valid_frames_only():
    valid = np.ones(8, bool)
    valid[[2, 5]] = False
    seqs = [
        eval_sequence("TS1", "TS1", "0", 8, layout=MPI17, valid=valid, seed=4, step=0.0123),
        eval_sequence("TS2", "TS2", "0", 9, layout=MPI17, seed=5, step=0.0123),
    ]
    test = windows_of(seqs, frames=4)
    result = scoring.evaluate_arrays(PelvisOffset(), test, "mem://3dhp", MPI17, )
    assert result["metrics"] == ["pck", "auc", "mpjpe"]
    # The field's summary is MATLAB's "All": pooled over every valid frame, not the mean of TS1-6.
    assert result["summary_key"] == "frame_wise" and result["frame_wise_label"].startswith("All")
    assert "All (pooled" in results.result_tables(result) and "mean of TS1-TS6" in results.result_tables(result)
    model = result["results"]["model"]
    assert model["groups"]["TS1"]["frames"] == 6 and model["frames"] == 15
    # Errors are 12.3 t mm (t = frame; never on a threshold) on all 14 PCK joints (root 14 is not
    # one of them): every frame below 150 mm -> PCK 100; AUC per frame = fraction of thresholds > 12.3 t.
    assert model["groups"]["TS1"]["pck"] == pytest.approx(100.0)
    thresholds = np.arange(0, 151, 5)
    t1 = np.nonzero(valid)[0]
    auc1 = np.mean([(12.3 * t < thresholds).mean() * 100 for t in t1])
    assert model["groups"]["TS1"]["auc"] == pytest.approx(auc1, rel=1e-5)
    auc2 = np.mean([(12.3 * t < thresholds).mean() * 100 for t in range(9)])
    assert model["group_mean"]["auc"] == pytest.approx((auc1 + auc2) / 2, rel=1e-5)
    assert model["groups"]["TS2"]["mpjpe"] == pytest.approx(np.mean(12.3 * np.arange(9) * 16 / 17), rel=1e-5)
    # The predicted pelvis (10 cm off in PelvisOffset) is zeroed before scoring, as P-STMO does.
    assert model["groups"]["TS1"]["mpjpe"] == pytest.approx(np.mean(12.3 * t1 * 16 / 17), rel=1e-5)
    auc_all = np.mean([(12.3 * t < thresholds).mean() * 100 for t in list(t1) + list(range(9))])
    assert model["frame_wise"]["auc"] == pytest.approx(auc_all, rel=1e-5)
    assert model["frame_wise"]["auc"] != pytest.approx(model["group_mean"]["auc"])  # unbalanced on purpose


class PelvisOffset(DepthlessLift):
    """DepthlessLift with the MPI pelvis (joint 14) predicted 10 cm off."""

    def forward(self, x):
        out = super().forward(x).clone()
        out[..., MPI17.root, :] += 0.1
        return out


def test_multiview_views_scored_as_camera_sequences():
    seqs = [eval_sequence("S9", "Walking", c, 6, seed=i) for i, c in enumerate(["c0", "c1"])]
    single = windows_of(seqs, frames=3)
    half = len(single["subject"]) // 2
    test = {
        "keypoints_2d": np.stack([single["keypoints_2d"][:half], single["keypoints_2d"][half:]], axis=2),
        "positions_3d": np.stack([single["positions_3d"][:half], single["positions_3d"][half:]], axis=2),
        "mask": single["mask"][:half],
        **{k: single[k][:half] for k in ("subject", "action", "activity", "start", "sequence_length", "flipped")},
        "camera": np.array(["c0,c1"] * half),
    }
    result = scoring.evaluate_arrays(DepthlessLift(), test, "mem://mv", H36M17, )
    assert result["frames"] == 12 and "every view" in result["protocol"]
    assert result["results"]["model"]["frame_wise"]["mpjpe"] == pytest.approx(np.mean(10 * np.arange(6) * 16 / 17), rel=1e-5)


def test_mean_pose_baseline(h36m_seqs):
    test = windows_of(h36m_seqs, frames=4)
    pose_a = np.full((17, 3), 0.1, np.float32)
    pose_b = np.full((17, 3), 0.3, np.float32)
    train = {
        "positions_3d": np.stack([np.stack([pose_a, pose_b]), np.stack([pose_b, np.full((17, 3), 9.0, np.float32)])]),
        "mask": np.array([[1.0, 1.0], [1.0, 0.0]]),  # the 9.0 pose is padding
    }
    pred = scoring.baseline_mean_pose(train, test)
    expected_pose = (pose_a + 2 * pose_b) / 3
    assert pred.shape == test["positions_3d"].shape
    np.testing.assert_allclose(pred[0, 0], expected_pose, rtol=1e-6)
    frames = scoring.collect_frames(np.asarray(pred), test, H36M17)
    summary = scoring.score_frames(frames, H36M17)
    gt = np.concatenate([s["pos"] for s in h36m_seqs])
    assert summary["frame_wise"]["mpjpe"] == pytest.approx(metrics.mpjpe(np.broadcast_to(expected_pose, gt.shape), gt), rel=1e-5)
    # evaluate_arrays scores it next to the model with the same protocol.
    result = scoring.evaluate_arrays(DepthlessLift(), test, "mem://h36m", H36M17, train=train)
    assert result["results"]["baseline"] == summary
    assert result["results"]["baseline"]["frames"] == result["results"]["model"]["frames"] == 22
    assert "baseline" in results.result_tables(result)
    with pytest.raises(DataError, match="no real frame"):
        scoring.baseline_mean_pose({"positions_3d": train["positions_3d"], "mask": np.zeros((2, 2))}, test)


def _meta(name="mixste", frames=4, joints=17):
    return {"model": {"name": name}, "frames": frames, "joints": joints, "layout": "h36m"}


def test_mismatched_checkpoint_is_refused(h36m_seqs):
    test = scoring.describe_arrays(windows_of(h36m_seqs, frames=4))
    assert test == {"frames": 4, "joints": 17, "mode": "seq2seq", "multiview": False, "layout": None}
    scoring.check_compatible(_meta(), test, "ckpt", "ds")  # fits
    with pytest.raises(CheckpointError, match=r"T=8 frames but the dataset's windows have T=4"):
        scoring.check_compatible(_meta(frames=8), test, "ckpt", "ds")
    with pytest.raises(CheckpointError, match="predicts 16 joints"):
        scoring.check_compatible(_meta(joints=16), test, "ckpt", "ds")
    with pytest.raises(CheckpointError, match="seq2frame but the dataset's windows are seq2seq"):
        scoring.check_compatible(_meta(name="poseformer"), test, "ckpt", "ds")
    with pytest.raises(CheckpointError, match="layout 'h36m' but the dataset is 'mpi_inf_3dhp'"):
        scoring.check_compatible(_meta(), {**test, "layout": "mpi_inf_3dhp"}, "ckpt", "ds")
    with pytest.raises(CheckpointError, match="not multi-view but the dataset is multi-view"):
        scoring.check_compatible(_meta(), {**test, "multiview": True}, "ckpt", "ds")


def test_results_files(tmp_path, h36m_seqs):
    test = windows_of(h36m_seqs, frames=4)
    result = scoring.evaluate_arrays(DepthlessLift(), test, "mem://h36m", H36M17, )
    results.write_results(result, str(tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["frames"] == 22 and data["results"]["model"]["groups"]["Eating"]["frames"] == 5
    md = (tmp_path / "out" / "results.md").read_text()
    assert "each real frame counted once" in md and "| **action-wise** |" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]


# --- end to end through real shards, readers, checkpoints and the CLI -------------------------


def _small_experiment(tmp_path: Path) -> Path:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: evaltest\n"
        "data:\n"
        f"  root: {tmp_path / 'datasets'}\n"
        "  source:\n"
        "    kind: synthetic\n"
        "    synthetic: {subjects: [S1, S9], actions_per_subject: 2, frames_per_action: 30, "
        f"out_dir: {tmp_path / 'synthetic'}}}\n"
        "  windows: {mode: seq2seq, frames: 8}\n"
        "model: {name: mixste, dim: 16, depth: 1, heads: 2}\n"
    )
    return cfg


@pytest.mark.slow
def test_cli_end_to_end_with_real_shards(tmp_path, capsys):
    from models.checkpoint import save_checkpoint
    from models.registry import build_model
    from pipelines.cli import main
    from pipelines.config import load_config
    from preprocessing.keypoints.dataset import prepare_dataset
    from preprocessing.keypoints.readers import load_split_arrays

    cfg_path = _small_experiment(tmp_path)
    cfg = load_config(str(cfg_path))
    info = prepare_dataset(cfg.data, progress=lambda *_: None)
    test = load_split_arrays(info, "test")
    real_frames = int((test["mask"][~np.asarray(test["flipped"], bool)] > 0.5).sum())
    torch.manual_seed(0)
    model = build_model(cfg.model, frames=8, joints=17)
    meta = {"model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2}, "frames": 8, "joints": 17,
            "layout": "h36m", "epoch": 0, "dataset_id": info.id, "metrics": {}, "config": cfg.to_dict()}
    ckpt = save_checkpoint(tmp_path / "ckpt", model.state_dict(), meta)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "action-wise" in printed and "baseline" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["frames"] == real_frames  # every real frame exactly once
    assert result["frames"] == info.manifest["splits"]["test"]["masked_frames"]
    assert set(result["results"]) == {"model", "baseline"}
    # Same numbers through the dataset id and root.
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", info.id, "--root", str(tmp_path / "datasets"),
                 "--no-flip", "--no-baseline", "--out", str(tmp_path / "eval2")]) == 0
    # A checkpoint for another window length is refused with exit code 2 and one line.
    bad = save_checkpoint(tmp_path / "bad", build_model(cfg.model, frames=16, joints=17).state_dict(), {**meta, "frames": 16})
    assert main(["evaluate", "--checkpoint", str(bad), "--out", str(tmp_path / "eval3")]) == 2
    err = capsys.readouterr().err
    assert "T=16" in err and "T=8" in err
    assert not (tmp_path / "eval3").exists()


TINY_MODELS = {
    "mixste": {"dim": 8, "depth": 1, "heads": 2},
    "poseformer": {"spatial_dim": 8, "depth": 1, "heads": 2},
    "crossformer": {"spatial_dim": 8, "depth": 1, "heads": 2, "variant": "paper"},  # official: T=81 only
    "fusionformer": {"dim": 8, "heads": 2, "refine_hidden": 16},
    "multiview": {"dim": 8, "spatial_depth": 1, "relation_depth": 1, "heads": 2},
}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_registry_model_trains_through_its_loss_and_evaluates(name):
    """Interface check between models, losses and evaluation: forward_for_loss + build_loss give
    a finite loss with gradients, and evaluate_arrays scores every real frame once."""
    from models.losses import build_loss, forward_for_loss
    from models.registry import build_model, model_class, parse_model_config

    cls = model_class(name)
    cfg_fields = {f for f in getattr(parse_model_config({"name": name}), "__dataclass_fields__")}
    cfg = parse_model_config({"name": name, **{k: v for k, v in TINY_MODELS[name].items() if k in cfg_fields}})
    frames = 5
    torch.manual_seed(0)
    model = build_model(cfg, frames=frames, joints=17)
    seqs = [eval_sequence("S9", "Walking", f"c{v}", 7, seed=v) for v in range(2)]
    mode = cls.output_mode
    test = windows_of(seqs, frames=frames, mode=mode)
    if cls.multiview:
        half = len(test["subject"]) // 2
        test = {
            "keypoints_2d": np.stack([test["keypoints_2d"][:half], test["keypoints_2d"][half:]], axis=2),
            "positions_3d": np.stack([test["positions_3d"][:half], test["positions_3d"][half:]], axis=2),
            "mask": test["mask"][:half],
            **{k: test[k][:half] for k in ("subject", "action", "activity", "start", "flipped")},
            "camera": np.array(["c0,c1"] * half),
        }
    batch = {k: torch.from_numpy(np.ascontiguousarray(test[k][:3])) for k in ("keypoints_2d", "positions_3d", "mask")}
    model.train()
    loss, logs = build_loss(name)(forward_for_loss(model, batch["keypoints_2d"]), batch)
    loss.backward()
    assert torch.isfinite(loss) and logs["mpjpe_mm"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    result = scoring.evaluate_arrays(model, test, "mem://tiny", H36M17, batch_size=4)
    assert result["mode"] == mode and result["frames"] == 14
    assert all(v is not None for v in result["results"]["model"]["frame_wise"].values())
