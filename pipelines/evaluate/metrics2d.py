"""2D keypoint metrics of the image-to-2D model (the MPSTR paper's Table I), pure numpy +
pycocotools, per activity and overall.

- PCK@0.05 as the authors' code computes it (WUJINHUAN/3D-human-pose, utils/valid.py calling
  mmpose's `keypoint_pck_accuracy(pred, gt, mask, thr=0.05, normalize=[s, s])` with
  s = max(bbox width, bbox height)): a joint is correct when its error divided by s is < 0.05;
  the accuracy of each joint over the images, then the mean over joints. Here s is the longer side
  of the tight box of the ground-truth keypoints in full-image pixels (the person box), never the
  crop box: crops cut around ground-truth or detector boxes are scored against the same s.
- Mean pixel error (Euclidean, per joint) and MSE (mean squared coordinate error, px^2) in
  full-image pixels: crop-pixel predictions are mapped back through the stored crop boxes.
- AP / AR (OKS, COCO's 10 thresholds 0.50:0.05:0.95, plus AP50/AP75) through pycocotools'
  `COCOeval`, one ground-truth person and one prediction (score 1) per image, area = the
  ground-truth keypoints' tight box area, with `H36M_OKS_SIGMAS`.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from preprocessing.images.crops import to_full

PCK_THRESHOLD = 0.05  # of max(person box width, height): the authors' utils/valid.py
# COCO's per-keypoint sigmas (pycocotools, cocoeval.py) mapped to the Human3.6M-17 joints. COCO has
# no pelvis, spine, thorax or head top: pelvis and spine take the hips' 0.107, thorax the
# shoulders' 0.079, neck/nose COCO's nose 0.026, head (top) COCO's ears 0.035.
COCO_SIGMAS = {"nose": 0.026, "eye": 0.025, "ear": 0.035, "shoulder": 0.079, "elbow": 0.072, "wrist": 0.062,
               "hip": 0.107, "knee": 0.087, "ankle": 0.089}
H36M_TO_COCO_SIGMA = ("hip", "hip", "knee", "ankle", "hip", "knee", "ankle", "hip", "shoulder", "nose", "ear",
                      "shoulder", "elbow", "wrist", "shoulder", "elbow", "wrist")
H36M_OKS_SIGMAS = np.array([COCO_SIGMAS[name] for name in H36M_TO_COCO_SIGMA])


def person_box_side(gt: np.ndarray) -> np.ndarray:
    """Longer side of the tight box of each image's keypoints: (N, J, 2) -> (N,)."""
    return np.max(gt.max(axis=1) - gt.min(axis=1), axis=-1)


def pck(pred: np.ndarray, gt: np.ndarray, threshold: float = PCK_THRESHOLD) -> float:
    """PCK as mmpose's keypoint_pck_accuracy: per-joint accuracy over images, then their mean.
    pred, gt: (N, J, 2) pixels."""
    side = np.maximum(person_box_side(gt), 1e-6)  # (N,)
    dist = np.linalg.norm(pred - gt, axis=-1) / side[:, None]  # (N, J)
    return float(np.mean(np.mean(dist < threshold, axis=0)))


def pixel_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(mean Euclidean error per joint, MSE per coordinate), pixels and pixels^2."""
    diff = pred - gt
    return float(np.mean(np.linalg.norm(diff, axis=-1))), float(np.mean(diff ** 2))


def oks_ap_ar(pred: np.ndarray, gt: np.ndarray, sigmas: np.ndarray = H36M_OKS_SIGMAS) -> dict[str, float]:
    """AP, AP50, AP75, AR (OKS) with pycocotools over N images of one person each. (N, J, 2) pixels."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n, j = gt.shape[:2]
    if len(sigmas) != j:
        raise ValueError(f"{len(sigmas)} OKS sigmas for {j} joints")
    lo, hi = gt.min(axis=1), gt.max(axis=1)
    wh = np.maximum(hi - lo, 1.0)
    annotations, results = [], []
    for i in range(n):
        kp_gt = np.concatenate([gt[i], np.full((j, 1), 2.0)], axis=1).ravel().tolist()  # v = 2: visible
        kp_pr = np.concatenate([pred[i], np.ones((j, 1))], axis=1).ravel().tolist()
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "num_keypoints": j,
                            "keypoints": kp_gt, "area": float(wh[i, 0] * wh[i, 1]),
                            "bbox": [float(lo[i, 0]), float(lo[i, 1]), float(wh[i, 0]), float(wh[i, 1])]})
        results.append({"image_id": i + 1, "category_id": 1, "keypoints": kp_pr, "score": 1.0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(n)], "annotations": annotations,
                    "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(j)], "skeleton": []}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
        detections = coco.loadRes(results)
        ev = COCOeval(coco, detections, iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats  # AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl
    return {"AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": float(s[5])}


def metrics_2d(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Every 2D metric over (N, J, 2) full-image pixels."""
    mpe, mse = pixel_errors(pred, gt)
    return {"PCK@0.05": pck(pred, gt), "pixel_error": mpe, "MSE": mse, **oks_ap_ar(pred, gt), "images": int(len(gt))}


def evaluate_2d(pred_crop: np.ndarray, gt_crop: np.ndarray, boxes: np.ndarray, size: int, mask: np.ndarray,
                activities: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-activity and overall 2D metrics of window predictions.

    pred_crop, gt_crop: (W, f, V, J, 2) crop pixels; boxes (W, f, V, 4); mask (W, f) (padded frames
    are left out); activities (W,). Images are mapped to full-image pixels first. Returns
    {activity: metrics, ..., "overall": metrics over every image} (the overall row is image-wise,
    not a mean of the activity rows)."""
    pred = to_full(pred_crop, boxes, size)
    gt = to_full(gt_crop, boxes, size)
    keep = np.asarray(mask) > 0  # (W, f)
    views = pred.shape[2]
    acts = np.repeat(np.broadcast_to(np.asarray(activities, dtype=object)[:, None], keep.shape)[keep], views)
    joints = pred.shape[-2]
    pred_img = pred[keep].reshape(-1, joints, 2)  # (images, J, 2)
    gt_img = gt[keep].reshape(-1, joints, 2)
    out = {act: metrics_2d(pred_img[acts == act], gt_img[acts == act]) for act in sorted(set(acts))}
    out["overall"] = metrics_2d(pred_img, gt_img)
    return out
