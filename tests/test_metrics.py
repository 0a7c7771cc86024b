"""Metrics against hand-computed cases (inputs in metres, errors in mm)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipelines.evaluate import metrics


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix (proper, det +1)."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


@pytest.fixture
def poses() -> np.ndarray:
    return np.random.default_rng(0).normal(scale=0.3, size=(5, 17, 3))  # 5 frames, metres


def test_mpjpe_of_known_offset(poses):
    # Every joint off by (3, 4, 0) cm = 50 mm.
    pred = poses + np.array([0.03, 0.04, 0.0])
    np.testing.assert_allclose(metrics.mpjpe_frames(pred, poses), 50.0)
    assert metrics.mpjpe(pred, poses) == pytest.approx(50.0)
    # Half the joints exact: 25 mm per frame.
    pred2 = poses.copy()
    pred2[:, :8] += [0.05, 0, 0]
    pred2[:, 8:16] += [0, 0, 0.05]
    assert metrics.mpjpe(pred2, poses) == pytest.approx(50.0 * 16 / 17)


def test_p_mpjpe_removes_rotation_scale_translation(poses):
    r = rotation(np.array([0.3, -1.0, 0.5]), 1.1)
    pred = 1.7 * poses @ r.T + np.array([0.5, -2.0, 3.0])
    np.testing.assert_allclose(metrics.p_mpjpe_frames(pred, poses), 0.0, atol=1e-6)
    assert metrics.mpjpe(pred, poses) > 100  # plain MPJPE sees the transform
    # The aligned prediction is the ground truth.
    np.testing.assert_allclose(metrics.procrustes_align(pred, poses), poses, atol=1e-9)


def test_p_mpjpe_does_not_undo_a_reflection():
    # Six joints on the axes, centred: variances 8 (x), 2 (y), 0.5 (z), |X|^2 = 10.5.
    gt = np.array([[2, 0, 0], [-2, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0.5], [0, 0, -0.5]], dtype=float)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])  # mirror image in x: a reflection, no rotation undoes it
    # VideoPose3D's alignment keeps det(R) = +1: the best proper fit flips the least-spread axis (z)
    # instead, with scale s = (8 + 2 - 0.5) / 10.5 = 19/21. Errors: x joints 2(1-s) = 4/21,
    # y joints 2/21, z joints 0.5(1+s) = 20/21; mean = (2*4 + 2*2 + 2*20) / (6*21) = 26/63 m.
    expected_mm = 26 / 63 * 1000
    assert metrics.p_mpjpe(mirrored[None], gt[None]) == pytest.approx(expected_mm, rel=1e-9)
    aligned = metrics.procrustes_align(mirrored[None], gt[None])[0]
    np.testing.assert_allclose(aligned, gt * np.array([1, 1, -1]) * 19 / 21, atol=1e-12)
    # A mirrored pose with a rotation on top gives the same value (rotation is still removed).
    r = rotation(np.array([1.0, 2.0, -0.5]), 0.7)
    assert metrics.p_mpjpe((mirrored @ r.T)[None], gt[None]) == pytest.approx(expected_mm, rel=1e-9)


def test_n_mpjpe_of_scaled_prediction_is_zero(poses):
    np.testing.assert_allclose(metrics.n_mpjpe_frames(0.6 * poses, poses), 0.0, atol=1e-9)
    # Per frame: each frame has its own scale.
    scales = np.array([0.5, 1.0, 2.0, 3.0, 0.9])[:, None, None]
    np.testing.assert_allclose(metrics.n_mpjpe_frames(scales * poses, poses), 0.0, atol=1e-9)
    # Hand case: gt = (1,0,0),(0,1,0), pred = (2,0,0),(0,0,0): s = 2/4 = 0.5 -> pred (1,0,0),(0,0,0),
    # errors 0 and 1 m -> 500 mm.
    gt = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])
    pred = np.array([[[2.0, 0, 0], [0, 0, 0]]])
    assert metrics.n_mpjpe(pred, gt) == pytest.approx(500.0)


def test_mpjve_constant_offset_and_known_velocity_error():
    t = np.arange(6, dtype=float)
    gt = np.zeros((6, 17, 3))
    gt[:, :, 0] = 0.01 * t[:, None]  # moves 10 mm per frame in x
    assert metrics.mpjve(gt + 0.2, gt) == pytest.approx(0.0, abs=1e-9)
    pred = np.zeros((6, 17, 3))
    pred[:, :, 0] = 0.013 * t[:, None]  # 13 mm per frame: velocity error 3 mm on every joint
    err, w = metrics.mpjve_frames(pred, gt)
    np.testing.assert_allclose(err, 3.0)
    assert err.shape == (5,) and w.sum() == 5
    # A masked frame removes both steps that touch it.
    mask = np.ones(6)
    mask[3] = 0
    pred2 = pred.copy()
    pred2[3] += 5.0  # garbage on the masked frame must not count
    err2, w2 = metrics.mpjve_frames(pred2, gt, mask)
    np.testing.assert_array_equal(w2, [1, 1, 0, 0, 1])
    assert metrics.mpjve(pred2, gt, mask) == pytest.approx(3.0)


def test_mpjve_never_crosses_sequence_boundaries():
    # Two sequences as a batch (2, T, J, 3): a jump between them must not appear.
    gt = np.zeros((2, 4, 17, 3))
    gt[1] += 1.0  # second sequence far away
    pred = gt.copy()
    assert metrics.mpjve(pred, gt) == 0.0
    # Concatenating them into one sequence would produce a (wrong) non-zero error.
    flat_pred = pred.reshape(8, 17, 3).copy()
    flat_pred[4:] += 0.01
    assert metrics.mpjve(flat_pred, gt.reshape(8, 17, 3)) > 0


def test_pck_and_auc_on_constructed_errors():
    # 14 PCK joints; frame errors: 4 joints 0 mm, 5 joints 100 mm, 5 joints 200 mm.
    gt = np.zeros((1, 17, 3))
    pred = np.zeros((1, 17, 3))
    pred[0, 4:9, 0] = 0.1
    pred[0, 9:14, 0] = 0.2
    pred[0, 14:, 0] = 5.0  # pelvis, spine, head: excluded from PCK/AUC
    assert metrics.pck(pred, gt) == pytest.approx(100 * 9 / 14)
    # AUC: thresholds 0..150 step 5 (31). Error 0 passes 30 thresholds (not 0: strict <), 100 mm
    # passes 105..150 (10), 200 mm none -> (4*30 + 5*10) / (14*31).
    assert metrics.auc(pred, gt) == pytest.approx(100 * (4 * 30 + 5 * 10) / (14 * 31))
    # Simple 3-joint case from the brief: errors 0, 100, 200 mm.
    g = np.zeros((1, 3, 3))
    p = np.array([[[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]])
    assert metrics.pck(p, g, joints=[0, 1, 2]) == pytest.approx(200 / 3)
    assert metrics.auc(p, g, joints=[0, 1, 2]) == pytest.approx(100 * 40 / 93)
    # MPJPE for 3DHP stays over all 17 joints.
    assert metrics.mpjpe(pred, gt) == pytest.approx((5 * 100 + 5 * 200 + 3 * 5000) / 17)


def test_action_wise_vs_frame_wise_on_unbalanced_activities():
    # Activity A: 3 frames at 10 mm; activity B: 1 frame at 50 mm.
    values = np.array([10.0, 10.0, 10.0, 50.0])
    groups = np.array(["A", "A", "A", "B"])
    s = metrics.summarise({"mpjpe": (values, groups, None)}, ["B", "A"])
    assert s["groups"]["A"]["mpjpe"] == 10.0 and s["groups"]["B"]["mpjpe"] == 50.0
    assert s["group_mean"]["mpjpe"] == pytest.approx(30.0)  # action-wise: (10 + 50) / 2
    assert s["frame_wise"]["mpjpe"] == pytest.approx(20.0)  # frame-wise: 80 / 4
    assert list(s["groups"]) == ["B", "A"] and s["frames"] == 4
    assert s["groups"]["A"]["frames"] == 3


def test_masks_exclude_frames_everywhere(poses):
    pred = poses.copy()
    pred[:, :, 0] += 0.01  # 10 mm
    pred[4] = np.nan  # padding frame with garbage
    w = np.array([1, 1, 1, 1, 0.0])
    assert metrics.mpjpe(pred, poses, w) == pytest.approx(10.0)
    assert metrics.weighted_mean(np.array([1.0, 3.0]), np.array([3.0, 1.0])) == pytest.approx(1.5)
    assert math.isnan(metrics.weighted_mean(np.array([1.0]), np.array([0.0])))
    groups = np.array(["A", "A", "B", "B", "B"])
    s = metrics.summarise({"mpjpe": (metrics.mpjpe_frames(pred, poses), groups, w)})
    assert s["frames"] == 4
    assert s["groups"]["B"]["mpjpe"] == pytest.approx(10.0)
    # A group with no counted frame reports None, and does not enter the group mean.
    s2 = metrics.summarise({"mpjpe": (np.array([5.0, 7.0]), np.array(["A", "B"]), np.array([1.0, 0.0]))})
    assert s2["groups"]["B"]["mpjpe"] is None and s2["group_mean"]["mpjpe"] == 5.0


def test_batched_shapes_and_shape_errors(poses):
    batch = np.stack([poses, poses + 0.001])  # (2, 5, 17, 3)
    assert metrics.p_mpjpe_frames(batch, batch).shape == (2, 5)
    assert metrics.pck_frames(batch, batch).shape == (2, 5)
    with pytest.raises(ValueError, match="shape"):
        metrics.mpjpe_frames(poses, poses[:, :16])


def test_tables_and_writers(tmp_path):
    s = metrics.summarise({
        "mpjpe": (np.array([10.0, 30.0]), np.array(["Walking", "Eating"]), None),
        "mpjve": (np.array([1.0]), np.array(["Walking"]), None),
    }, ["Walking", "Eating"])
    base = metrics.summarise({
        "mpjpe": (np.array([100.0, 300.0]), np.array(["Walking", "Eating"]), None),
        "mpjve": (np.array([0.5]), np.array(["Walking"]), None),
    })
    text = metrics.format_table({"model": s, "baseline": base}, ["mpjpe", "mpjve"])
    lines = text.splitlines()
    assert lines[2].split()[0] == "Walking" and "10.0" in lines[2] and "100.0" in lines[2]
    assert "action-wise" in text and "frame-wise" in text and "20.0" in text
    assert "-" in lines[3].split()  # Eating has no MPJVE
    md = metrics.markdown_table({"model": s}, ["mpjpe"])
    assert md.splitlines()[0].startswith("| group | MPJPE (mm)")
    assert "| **action-wise** | **20.0** | **2** |" in md
    metrics.write_json(tmp_path / "r" / "x.json", {"a": s})
    assert json.loads((tmp_path / "r" / "x.json").read_text())["a"]["group_mean"]["mpjpe"] == 20.0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["x.json"]  # no temp leftovers
