"""The field's 3D pose metrics in pure numpy, as the reference code computes them.

Inputs are poses `(..., J, 3)` in **metres**; errors come out in **millimetres** (PCK and AUC in
percent). Every metric has a per-frame form (`*_frames`, one value per pose, so any grouping and
masking can be applied afterwards) and a scalar form taking optional frame weights/masks.

- MPJPE (Protocol 1): mean Euclidean joint error.
- P-MPJPE (Protocol 2): per frame, similarity Procrustes (rotation, uniform scale, translation) of
  the prediction onto the ground truth, reflections excluded by the sign of det(R) exactly as
  VideoPose3D's `p_mpjpe`, then MPJPE. Batched SVD, no Python loop over frames.
- N-MPJPE: per frame scale s = sum<gt, pred> / sum |pred|^2 over joints, then MPJPE of s * pred
  (VideoPose3D's `n_mpjpe`, whose means over joints cancel in the ratio).
- MPJVE: MPJPE of first temporal differences along the frame axis (-3), only between two real
  consecutive frames of one sequence (mm per frame, no fps scaling, as VideoPose3D).
- 3DHP PCK@150 mm and AUC (mean PCK over thresholds 0, 5, ..., 150 mm) over the 14 MPI joints that
  exclude pelvis 14, spine 15 and head 16; a joint counts when its error is strictly < threshold.

Aggregation: `summarise` averages frames within each group (an H36M activity, a 3DHP test
sequence), the mean over groups (H36M's "action-wise" number) and the frame-wise mean. The
writers turn such summaries into a printed table, Markdown and JSON.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

MM_PER_M = 1000.0

# MPI-INF-3DHP (P-STMO order): PCK/AUC joints = all but pelvis 14, spine 15, head 16.
MPI_PCK_JOINTS: tuple[int, ...] = tuple(range(14))
# Human3.6M's 15 activities in the order papers print them.
H36M_ACTIVITIES = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
    "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
)
H36M_METRICS = ("mpjpe", "p_mpjpe", "n_mpjpe", "mpjve")
MPI_METRICS = ("pck", "auc", "mpjpe")
PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM: np.ndarray = np.linspace(0.0, 150.0, 31)  # 0, 5, ..., 150

# Human-readable metric names (units included) for tables.
METRIC_LABELS: dict[str, str] = {
    "mpjpe": "MPJPE (mm)",
    "p_mpjpe": "P-MPJPE (mm)",
    "n_mpjpe": "N-MPJPE (mm)",
    "mpjve": "MPJVE (mm)",
    "pck": "PCK@150 (%)",
    "auc": "AUC (%)",
}


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"expected poses of shape (..., J, 3), got {pred.shape}")
    return pred, gt


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean error of every joint in mm: (..., J, 3) x2 -> (..., J)."""
    pred, gt = _check_pair(pred, gt)
    return np.linalg.norm(pred - gt, axis=-1) * MM_PER_M


def mpjpe_frames(pred: np.ndarray, gt: np.ndarray, joints: Optional[Sequence[int]] = None) -> np.ndarray:
    """Per-frame MPJPE in mm: (..., J, 3) -> (...,); `joints` restricts the joints averaged."""
    err = joint_errors(pred, gt)
    if joints is not None:
        err = err[..., list(joints)]
    return err.mean(axis=-1)


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Align each pose of `pred` onto `gt` by rotation, uniform scale and translation.

    VideoPose3D's `p_mpjpe` alignment, batched: centre and normalise both, SVD of the 3x3
    cross-covariance, and where det(R) < 0 flip the last singular vector (and singular value) so R
    is a proper rotation: a mirrored prediction is not mirrored back.
    """
    pred, gt = _check_pair(pred, gt)
    shape = pred.shape
    y = pred.reshape((-1,) + shape[-2:])  # (F, J, 3) prediction
    x = gt.reshape((-1,) + shape[-2:])  # (F, J, 3) target
    mu_x = x.mean(axis=1, keepdims=True)
    mu_y = y.mean(axis=1, keepdims=True)
    x0 = x - mu_x
    y0 = y - mu_y
    norm_x = np.sqrt((x0**2).sum(axis=(1, 2), keepdims=True))  # (F, 1, 1)
    norm_y = np.sqrt((y0**2).sum(axis=(1, 2), keepdims=True))
    # A degenerate (all joints at one point) pose has no shape to align: keep it finite.
    norm_x = np.where(norm_x > 0, norm_x, 1.0)
    norm_y = np.where(norm_y > 0, norm_y, 1.0)
    x0 = x0 / norm_x
    y0 = y0 / norm_y
    h = np.matmul(x0.transpose(0, 2, 1), y0)  # (F, 3, 3)
    u, s, vt = np.linalg.svd(h)
    v = vt.transpose(0, 2, 1)
    r = np.matmul(v, u.transpose(0, 2, 1))
    sign = np.sign(np.linalg.det(r))  # (F,) +1 rotation, -1 reflection
    sign = np.where(sign == 0, 1.0, sign)
    v[:, :, -1] *= sign[:, None]
    s[:, -1] *= sign
    r = np.matmul(v, u.transpose(0, 2, 1))  # proper rotation
    trace = s.sum(axis=1)[:, None, None]
    scale = trace * norm_x / norm_y
    t = mu_x - scale * np.matmul(mu_y, r)
    aligned = scale * np.matmul(y, r) + t
    return aligned.reshape(shape)


def p_mpjpe_frames(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame P-MPJPE (Protocol 2) in mm: (..., J, 3) -> (...,)."""
    return mpjpe_frames(procrustes_align(pred, gt), gt)


def n_mpjpe_frames(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame N-MPJPE in mm: MPJPE after the least-squares scale of each predicted pose."""
    pred, gt = _check_pair(pred, gt)
    num = (gt * pred).sum(axis=(-1, -2), keepdims=True)
    den = (pred * pred).sum(axis=(-1, -2), keepdims=True)
    scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return mpjpe_frames(scale * pred, gt)


def mpjve_frames(
    pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step velocity error in mm along the frame axis (-3) of one or a batch of sequences.

    (..., T, J, 3) -> (errors (..., T-1), weights (..., T-1)); a step counts (weight 1) only when
    both its frames are real (`mask` (..., T), default all real), so padding and invalid frames
    never enter a difference. Pass one sequence per leading index: never concatenate sequences.
    """
    pred, gt = _check_pair(pred, gt)
    if pred.ndim < 3:
        raise ValueError(f"MPJVE needs (..., T, J, 3) sequences, got {pred.shape}")
    err = mpjpe_frames(np.diff(pred, axis=-3), np.diff(gt, axis=-3))
    if mask is None:
        mask = np.ones(pred.shape[:-2])
    mask = np.asarray(mask, dtype=np.float64)
    if mask.shape != pred.shape[:-2]:
        raise ValueError(f"mask shape {mask.shape} != frame shape {pred.shape[:-2]}")
    return err, mask[..., 1:] * mask[..., :-1]


def pck_frames(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold_mm: float = PCK_THRESHOLD_MM,
    joints: Sequence[int] = MPI_PCK_JOINTS,
) -> np.ndarray:
    """Per-frame percentage of `joints` with error strictly below `threshold_mm`: (..., J, 3) -> (...,)."""
    err = joint_errors(pred, gt)[..., list(joints)]
    return (err < threshold_mm).mean(axis=-1) * 100.0


def auc_frames(
    pred: np.ndarray,
    gt: np.ndarray,
    thresholds_mm: Iterable[float] = AUC_THRESHOLDS_MM,
    joints: Sequence[int] = MPI_PCK_JOINTS,
) -> np.ndarray:
    """Per-frame AUC in percent: the mean PCK over `thresholds_mm` (default 0, 5, ..., 150)."""
    err = joint_errors(pred, gt)[..., list(joints)]
    th = np.asarray(list(thresholds_mm), dtype=np.float64)
    return (err[..., None] < th).mean(axis=(-1, -2)) * 100.0


# --- reductions -------------------------------------------------------------------------------


def weighted_mean(values: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """Mean of `values` with frame `weights` (a 0/1 mask or any non-negative weights).

    NaN when the total weight is 0 (no frame counts), so an empty group never reads as 0 mm.
    """
    values = np.asarray(values, dtype=np.float64)
    w = np.ones_like(values) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), values.shape)
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    total = w.sum()
    if total == 0:
        return math.nan
    # Frames with weight 0 may hold garbage (NaN from padding): they must not poison the sum.
    return float((np.where(w > 0, values, 0.0) * w).sum() / total)


def mpjpe(pred: np.ndarray, gt: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """MPJPE in mm over all frames (weighted by `weights`, shape = frame shape)."""
    return weighted_mean(mpjpe_frames(pred, gt), weights)


def p_mpjpe(pred: np.ndarray, gt: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    return weighted_mean(p_mpjpe_frames(pred, gt), weights)


def n_mpjpe(pred: np.ndarray, gt: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    return weighted_mean(n_mpjpe_frames(pred, gt), weights)


def mpjve(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """MPJVE in mm of one sequence (T, J, 3) or a batch of sequences (..., T, J, 3)."""
    err, w = mpjve_frames(pred, gt, mask)
    return weighted_mean(err, w)


def pck(pred: np.ndarray, gt: np.ndarray, weights: Optional[np.ndarray] = None,
        threshold_mm: float = PCK_THRESHOLD_MM, joints: Sequence[int] = MPI_PCK_JOINTS) -> float:
    return weighted_mean(pck_frames(pred, gt, threshold_mm, joints), weights)


def auc(pred: np.ndarray, gt: np.ndarray, weights: Optional[np.ndarray] = None,
        joints: Sequence[int] = MPI_PCK_JOINTS) -> float:
    return weighted_mean(auc_frames(pred, gt, joints=joints), weights)


def grouped_means(
    values: np.ndarray, groups: np.ndarray, weights: Optional[np.ndarray] = None
) -> dict[str, tuple[float, float]]:
    """{group: (weighted mean, total weight)} for per-frame `values` labelled by `groups`."""
    values = np.asarray(values, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if groups.shape != values.shape:
        raise ValueError(f"groups shape {groups.shape} != values shape {values.shape}")
    w = np.ones_like(values) if weights is None else np.asarray(weights, np.float64).ravel()
    keys, inverse = np.unique(groups.astype(str), return_inverse=True)
    safe = np.where(w > 0, values, 0.0) * w
    sums = np.bincount(inverse, weights=safe, minlength=len(keys))
    totals = np.bincount(inverse, weights=w, minlength=len(keys))
    return {
        str(k): (float(s / t) if t > 0 else math.nan, float(t)) for k, s, t in zip(keys, sums, totals)
    }


def summarise(
    per_frame: Mapping[str, tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]],
    group_order: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Group-wise, mean-of-groups and frame-wise numbers for several metrics.

    `per_frame[name] = (values, groups, weights)` (each metric brings its own labels, since MPJVE
    has one value per frame step rather than per frame). Returns
    `{"groups": {group: {metric: value, "frames": n}}, "group_mean": {metric: value},
    "frame_wise": {metric: value}, "frames": n}`; the group mean averages the groups' means with
    equal weight (H36M's action-wise protocol), the frame-wise value pools all frames. Values are
    floats, or None where no frame counted.
    """
    if not per_frame:
        raise ValueError("summarise needs at least one metric")
    first = next(iter(per_frame))
    out_groups: dict[str, dict[str, Any]] = {}
    group_mean: dict[str, Optional[float]] = {}
    frame_wise: dict[str, Optional[float]] = {}
    frames = 0
    for name, (values, groups, weights) in per_frame.items():
        per_group = grouped_means(values, groups, weights)
        for g, (mean, total) in per_group.items():
            row = out_groups.setdefault(g, {})
            row[name] = _finite_or_none(mean)
            if name == first:
                row["frames"] = int(round(total))
        means = [m for m, t in per_group.values() if t > 0]
        group_mean[name] = _finite_or_none(float(np.mean(means))) if means else None
        frame_wise[name] = _finite_or_none(weighted_mean(values, weights))
        if name == first:
            frames = sum(int(round(t)) for _, t in per_group.values())
    order = list(group_order) if group_order else []
    ordered = {g: out_groups[g] for g in order if g in out_groups}
    ordered.update({g: out_groups[g] for g in sorted(out_groups) if g not in ordered})
    return {"groups": ordered, "group_mean": group_mean, "frame_wise": frame_wise, "frames": frames}


def _finite_or_none(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


# --- tables -----------------------------------------------------------------------------------


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def table_rows(
    summaries: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], group_mean_label: str,
    frame_wise_label: str = "frame-wise",
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a results table: one row per group, then the group mean and frame-wise
    (pooled) rows; columns = `metric` for each summary (e.g. the model and the mean-pose baseline)."""
    names = list(summaries)
    header = ["group"] + [
        METRIC_LABELS.get(m, m) if len(names) == 1 else f"{n} {METRIC_LABELS.get(m, m)}"
        for n in names for m in metrics
    ] + ["frames"]
    first = summaries[names[0]]
    rows: list[list[str]] = []
    for g in first["groups"]:
        row = [g]
        for n in names:
            grp = summaries[n]["groups"].get(g, {})
            row += [_fmt(grp.get(m)) for m in metrics]
        rows.append(row + [str(first["groups"][g].get("frames", ""))])
    for key, label in (("group_mean", group_mean_label), ("frame_wise", frame_wise_label)):
        row = [label]
        for n in names:
            row += [_fmt(summaries[n][key].get(m)) for m in metrics]
        rows.append(row + [str(first["frames"])])
    return header, rows


def format_table(
    summaries: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], group_mean_label: str = "action-wise",
    frame_wise_label: str = "frame-wise",
) -> str:
    """Plain-text, column-aligned table for the terminal."""
    from pipelines.viz.tables import render_table

    return render_table(*table_rows(summaries, metrics, group_mean_label, frame_wise_label))


def markdown_table(
    summaries: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], group_mean_label: str = "action-wise",
    frame_wise_label: str = "frame-wise",
) -> str:
    """GitHub Markdown table (group-mean and frame-wise rows in bold)."""
    from pipelines.viz.tables import render_table

    header, rows = table_rows(summaries, metrics, group_mean_label, frame_wise_label)
    return render_table(header, rows, markdown=True, bold_rows=range(len(rows) - 2, len(rows)))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    from preprocessing.store.storage import write_local_atomic

    return write_local_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")
