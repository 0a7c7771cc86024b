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


# ----------------------------------------------------------------------------- oracles, box sources, mean pose


def windows(w: int, f: int, v: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Test windows as `predict_split` returns them (without `pred`): GT people in full-image
    pixels cropped in their keypoint boxes (margin 0.15, 32 px), the last frame of a window of
    f > 1 padded."""
    from preprocessing.images.crops import keypoint_box, to_crop

    gt = people(w * f * v, seed).reshape(w, f, v, 17, 2)
    boxes = np.stack([keypoint_box(p, 0.15) for p in gt.reshape(-1, 17, 2)]).reshape(w, f, v, 4)
    mask = np.ones((w, f), dtype=np.float32)
    if f > 1:
        mask[:, -1] = 0
    return {"keypoints": to_crop(gt, boxes, 32), "boxes": boxes, "mask": mask, "full": gt,
            "activity": np.array(["Walking", "Eating", "Posing"][:w], dtype=object)}  # w <= 3


@pytest.mark.parametrize("w,f,v", [(1, 1, 1), (2, 4, 4), (3, 2, 1), (1, 3, 2)])
def test_oracle_exact_labels_score_perfectly_and_a_known_shift_its_length(w, f, v):
    """Every (W, f, V, J, 2) the 2D scoring accepts: the GT labels score 0 px and PCK 100 %; a
    shift of (dx, dy) full-image pixels scores exactly hypot(dx, dy) px (padded frames ignored);
    the person boxes are 100 px, so PCK@0.05 is 100 % below 5 px and 0 above."""
    from pipelines.evaluate.images2d import score_predictions
    from preprocessing.images.crops import to_crop

    arrays = windows(w, f, v)
    exact = dict(arrays, pred=arrays["keypoints"].copy())
    exact["pred"][arrays["mask"] == 0] += 1000.0  # padded frames never count
    m = score_predictions(exact, 32)["overall"]
    assert m["pixel_error"] == pytest.approx(0.0, abs=1e-9) and m["PCK@0.05"] == 1.0 and m["AP"] == pytest.approx(1.0)
    assert m["images"] == int(arrays["mask"].sum()) * v
    for (dx, dy), correct in (((1.5, -2.0), 1.0), ((-6.0, 8.0), 0.0)):
        shifted = dict(arrays, pred=to_crop(arrays["full"] + [dx, dy], arrays["boxes"], 32))
        m = score_predictions(shifted, 32)["overall"]
        assert m["pixel_error"] == pytest.approx(np.hypot(dx, dy), rel=1e-9)
        assert m["MSE"] == pytest.approx((dx * dx + dy * dy) / 2, rel=1e-9) and m["PCK@0.05"] == correct
        flat = metrics_2d(arrays["full"].reshape(-1, 17, 2) + [dx, dy], arrays["full"].reshape(-1, 17, 2))
        assert flat["pixel_error"] == pytest.approx(np.hypot(dx, dy), rel=1e-12)  # (N, J, 2): the same arithmetic


def test_pck_is_normalised_by_the_ground_truth_person_box_whatever_the_crop_box():
    """Crops cut around ground-truth boxes score as before box files existed (the metrics of the
    full-image points); crops cut around other (detector) boxes score the same predictions the same."""
    from preprocessing.images.crops import to_crop

    arrays = windows(2, 3, 2, seed=3)
    rng = np.random.default_rng(4)
    pred = arrays["full"] + rng.normal(0, 4.0, arrays["full"].shape)  # about half within 5 px
    detector = arrays["boxes"] * 1.3 + rng.uniform(-20, 20, arrays["boxes"].shape[:-1] + (1,))
    detector[..., 3] = detector[..., 1] + detector[..., 2] - detector[..., 0]  # square
    acts = arrays["activity"]
    keep = arrays["mask"] > 0
    today = metrics_2d(pred[keep].reshape(-1, 17, 2), arrays["full"][keep].reshape(-1, 17, 2))
    assert 0.2 < today["PCK@0.05"] < 0.8
    for boxes in (arrays["boxes"], detector):
        got = evaluate_2d(to_crop(pred, boxes, 32), to_crop(arrays["full"], boxes, 32), boxes, 32, arrays["mask"], acts)
        for key, value in today.items():
            assert got["overall"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_mean_pose_row_places_the_training_mean_in_every_test_crop():
    from pipelines.evaluate.images2d import score_mean_pose

    arrays = windows(2, 2, 4, seed=5)
    mean = arrays["keypoints"][0, 0, 0]  # a (J, 2) crop-pixel pose
    same = dict(arrays, keypoints=np.broadcast_to(mean, arrays["keypoints"].shape).copy())
    m = score_mean_pose(same, mean, 32)["overall"]
    assert m["pixel_error"] == pytest.approx(0.0, abs=1e-9) and m["PCK@0.05"] == 1.0
    # every label is 1 crop pixel right of the mean; each crop maps it back through its own box
    off = dict(same, keypoints=same["keypoints"] + [1.0, 0.0])
    got = score_mean_pose(off, mean, 32)
    side = (arrays["boxes"][..., 2] - arrays["boxes"][..., 0])[arrays["mask"] > 0]  # (images / V, V)
    assert got["overall"]["pixel_error"] == pytest.approx(np.mean(side / 32), rel=1e-9)


def test_results_name_the_boxes_and_every_table_has_the_mean_pose_row(tmp_path):
    from pipelines.evaluate.images2d import MEAN_POSE, box_source_text, protocol_2d, result_text
    from preprocessing.store.dataset import Dataset
    from preprocessing.store.storage import as_location

    def dataset(boxes=None) -> Dataset:
        windows = {"size": 32, "margin": 0.15, **({"boxes": boxes} if boxes else {})}
        return Dataset(as_location(str(tmp_path)), {"id": "x", "windows": windows, "splits": {"train": {}, "test": {}}})

    gt = "ground-truth 2D boxes (+margin 0.15)"
    assert box_source_text(dataset()) == box_source_text(dataset("gt")) == gt  # older manifests: GT boxes
    det = box_source_text(dataset({"file": "cpn.npz", "sha256": "ab" * 32, "splits": ["test"]}))
    assert det == f"boxes from cpn.npz (sha256 {'ab' * 6}..., +margin 0.15) on test; {gt} on train"
    metrics = {"PCK@0.05": 0.5, "pixel_error": 3.0, "MSE": 9.0, "AP": 0.4, "AP50": 0.6, "AP75": 0.3, "AR": 0.5, "images": 8}
    result = {"protocol": protocol_2d(det), "boxes": det, "dataset": "x", "mean_pose": {"label": MEAN_POSE,
              "results": {"Walking": metrics, "overall": dict(metrics, pixel_error=12.0)}},
              "models": {"mpstr full": {"epoch": 1, "checkpoint": "c", "results": {"Walking": metrics, "overall": metrics}}}}
    text = result_text(result).splitlines()
    assert text[0] == f"crop boxes: {det}" and det in text[-1]
    rows = [line for line in text if line.lstrip("| ").startswith(MEAN_POSE)]
    assert len(rows) == 2 and all("12.00" in row for row in rows)  # the model's table and Table I
    assert any(line.startswith("Table I") for line in text)
