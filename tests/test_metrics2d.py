"""2D metrics: PCK@0.05 (the authors' definition), pixel error / MSE mapped back through crop
boxes, OKS AP/AR through pycocotools with the H36M sigmas, per activity."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluate.metrics2d import H36M_OKS_SIGMAS, evaluate_2d, metrics_2d, oks_ap_ar, pck


def people(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 100, (n, 17, 2)) + rng.uniform(0, 500, (n, 1, 2))
    gt[:, 0] = gt[:, 0].min()  # joint 0 at the top-left corner ...
    gt[:, 1] = gt[:, 0] + 100  # ... and joint 1 at +100: every tight box is exactly 100 x 100
    gt[:, 2:] = np.clip(gt[:, 2:], gt[:, :1], gt[:, 1:2])
    return gt


def test_perfect_predictions_score_perfectly():
    gt = people()
    m = metrics_2d(gt.copy(), gt)
    assert m["PCK@0.05"] == 1.0 and m["pixel_error"] == 0.0 and m["MSE"] == 0.0
    assert m["AP"] == pytest.approx(1.0) and m["AR"] == pytest.approx(1.0)


def test_pck_threshold_is_five_percent_of_the_person_box():
    gt = people()
    pred = gt.copy()
    pred[:, :8, 0] += 4.9  # 0.049 of the 100 px box: correct
    pred[:, 8:, 1] += 5.1  # 0.051: wrong
    assert pck(pred, gt) == pytest.approx(8 / 17)


def test_oks_ap_uses_the_h36m_sigmas():
    """Every image gets the same OKS, so AP = the share of COCO's thresholds 0.50:0.05:0.95 it
    clears. The OKS is computed here from COCO's definition with the H36M sigmas."""
    gt = people()
    pred = gt.copy()
    pred[:, 9:11] += [9.0, 12.0]  # 15 px on neck/nose and head only
    d2 = np.zeros(17)
    d2[9:11] = 225.0
    area = 100.0 * 100.0
    oks = np.mean(np.exp(-d2 / (2 * area * (2 * H36M_OKS_SIGMAS) ** 2)))
    expected = np.mean(oks > np.linspace(0.5, 0.95, 10))
    assert 0 < expected < 1  # the test is informative
    got = oks_ap_ar(pred, gt)
    assert got["AP"] == pytest.approx(expected) and got["AR"] == pytest.approx(expected)
    reordered = oks_ap_ar(pred, gt, sigmas=H36M_OKS_SIGMAS[::-1])  # a wrong joint mapping changes AP
    assert reordered["AP"] != pytest.approx(expected)


def test_errors_are_in_full_image_pixels_per_activity_without_padded_frames():
    rng = np.random.default_rng(1)
    w, f, v, size = 2, 3, 2, 64
    gt = rng.uniform(10, 50, (w, f, v, 17, 2))
    pred = gt + [1.0, 0.0]  # 1 crop pixel right
    boxes = np.zeros((w, f, v, 4))
    boxes[..., :2] = [100.0, 200.0]
    boxes[..., 2:] = boxes[..., :2] + np.array([128.0, 256.0])[:, None, None, None]  # side 128 or 256
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32)
    pred[1, 2] += 1000.0  # a padded frame: must not count
    out = evaluate_2d(pred, gt, boxes, size, mask, np.array(["Walking", "Eating"]))
    assert set(out) == {"Walking", "Eating", "overall"}
    assert out["Walking"]["pixel_error"] == pytest.approx(2.0)  # 1 px x 128 / 64
    assert out["Eating"]["pixel_error"] == pytest.approx(4.0)  # 1 px x 256 / 64
    assert out["Eating"]["images"] == 2 * v
    assert out["overall"]["pixel_error"] == pytest.approx((6 * 2.0 + 4 * 4.0) / 10)
    assert out["overall"]["MSE"] == pytest.approx((6 * 4.0 + 4 * 16.0) / 10 / 2)
