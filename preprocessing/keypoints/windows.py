"""Cutting sequences into fixed-length windows, and mirroring them (pure numpy, no Ray).

Window start positions (frame index of a window's first frame; negative or past-the-end frames are
edge padding, i.e. copies of the first/last frame):
- seq2seq (MixSTE, Fusionformer): `k` windows of T frames with stride s, laid out centred on the
  sequence: k = max(1, ceil((N - T) / s) + 1), span = (k - 1)·s + T, offset = (span - N) // 2,
  start_i = i·s - offset. With s = T (the default) this is exactly MixSTE's ceil(N/T)
  non-overlapping chunks with offset (chunks·T - N) // 2; s = T/3 gives MotionBERT-style overlap.
  The test split always uses s = T, so every real frame lies in exactly one window.
- seq2frame (VideoPose3D, PoseFormer, CrossFormer): receptive field T = 2p + 1, one window per
  centre frame c = 0, s, 2s, ... < N (start = c - p); the target is the centre frame. The test
  split uses s = 1 (every frame is scored once).

Masks: 1 for a real frame (inside the sequence) that is valid, 0 for padding or an invalid frame.
Arrays may carry extra axes between frames and joints (multi-view: (N, V, J, C)); windowing only
touches the first (frame) axis and flipping only the last two (joint, coordinate).

Flip: x negated then left/right joints swapped with the layout's own permutation
(`Skeleton.flip_permutation`), for 2D (normalised, centred on the image) and camera-space 3D alike.
The mirrored camera, stored in pixels: cx' = w - cx (a normalised x of -x is pixel w - u) and
p1' = -p1 (tangential distortion along x changes sign); fx, fy, cy, k1-k3, p2 are unchanged. This
is the pixel form of VideoPose3D's "negate cx and p1" on its normalised intrinsics.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from preprocessing.skeleton import Skeleton

MODES = ("seq2seq", "seq2frame")


def seq2seq_starts(num_frames: int, frames: int, stride: int) -> np.ndarray:
    """Start frames of centred seq2seq windows (see module doc). (k,) int64."""
    _check(num_frames, frames, stride)
    count = 1 if num_frames <= frames else math.ceil((num_frames - frames) / stride) + 1
    span = (count - 1) * stride + frames
    offset = (span - num_frames) // 2
    return np.arange(count, dtype=np.int64) * stride - offset


def seq2frame_starts(num_frames: int, frames: int, stride: int) -> np.ndarray:
    """Start frames of seq2frame windows (receptive field `frames` = 2p + 1, centres 0, s, 2s...)."""
    _check(num_frames, frames, stride)
    if frames % 2 == 0:
        raise ValueError(f"seq2frame needs an odd receptive field (T = 2p + 1), got {frames}")
    return np.arange(0, num_frames, stride, dtype=np.int64) - frames // 2


def window_starts(num_frames: int, mode: str, frames: int, stride: int, split: str) -> np.ndarray:
    """Starts for `split`: training uses `stride`; the test and val splits ignore it (seq2seq: T,
    seq2frame: 1), so each real frame is scored once."""
    if mode == "seq2seq":
        return seq2seq_starts(num_frames, frames, stride if split == "train" else frames)
    if mode == "seq2frame":
        return seq2frame_starts(num_frames, frames, stride if split == "train" else 1)
    raise ValueError(f"unknown window mode {mode!r} (expected one of {MODES})")


def _check(num_frames: int, frames: int, stride: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a sequence needs at least one frame, got {num_frames}")
    if frames < 1 or stride < 1:
        raise ValueError(f"window frames and stride must be >= 1, got frames={frames}, stride={stride}")


def frame_indices(starts: np.ndarray, frames: int, num_frames: int) -> np.ndarray:
    """(W, T) source frame of each window frame, clipped to the sequence ('edge' padding)."""
    raw = starts[:, None] + np.arange(frames, dtype=np.int64)[None, :]
    return np.clip(raw, 0, num_frames - 1)


def window_mask(starts: np.ndarray, frames: int, valid: np.ndarray) -> np.ndarray:
    """(W, T) float32: 1 where the window frame is inside the sequence and valid, else 0."""
    n = valid.shape[0]
    raw = starts[:, None] + np.arange(frames, dtype=np.int64)[None, :]
    inside = (raw >= 0) & (raw < n)
    return (inside & valid[np.clip(raw, 0, n - 1)]).astype(np.float32)


def make_windows(
    keypoints_2d: np.ndarray,
    positions_3d: np.ndarray,
    valid: np.ndarray,
    starts: np.ndarray,
    frames: int,
    mode: str,
    trajectory: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Cut one sequence into windows.

    keypoints_2d (N, *, J, 2), positions_3d (N, *, J, 3), valid (N,) bool, starts (W,), optional
    trajectory (N, *, 3) (the root's camera-space position, cut like the target).
    Returns keypoints_2d (W, T, *, J, 2), positions_3d (W, T, *, J, 3) [seq2seq] or
    (W, 1, *, J, 3) [seq2frame: centre frame], mask (W, T) [seq2seq] or (W, 1) [seq2frame], and
    trajectory (W, T | 1, *, 3) when given.
    """
    n = keypoints_2d.shape[0]
    idx = frame_indices(starts, frames, n)  # (W, T)
    out = {"keypoints_2d": keypoints_2d[idx]}
    if mode == "seq2seq":
        target = idx
        out["mask"] = window_mask(starts, frames, valid)
    elif mode == "seq2frame":
        target = (starts + frames // 2)[:, None]  # always a real frame: 0 <= centre < N
        out["mask"] = valid[target].astype(np.float32)
    else:
        raise ValueError(f"unknown window mode {mode!r} (expected one of {MODES})")
    out["positions_3d"] = positions_3d[target]
    if trajectory is not None:
        out["trajectory"] = trajectory[target]
    return out


def _flip_points(points: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    if points.shape[-2] != skeleton.num_joints:
        raise ValueError(
            f"cannot flip {points.shape[-2]} joints with the {skeleton.name} layout ({skeleton.num_joints} joints)"
        )
    out = points[..., skeleton.flip_permutation(), :]  # fancy indexing copies
    out[..., 0] *= -1
    return out


def flip_keypoints_2d(keypoints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(..., J, 2) normalised 2D: negate x, swap left/right joints. Returns a new array."""
    return _flip_points(keypoints, skeleton)


def flip_positions_3d(positions: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(..., J, 3) camera-space 3D: negate X, swap left/right joints. Returns a new array."""
    return _flip_points(positions, skeleton)


def flip_trajectory(trajectory: np.ndarray) -> np.ndarray:
    """(..., 3) camera-space root position: negate X (no joints to swap). Returns a new array."""
    out = np.array(trajectory, copy=True)
    out[..., 0] *= -1
    return out


def flip_intrinsics(intrinsics: np.ndarray, image_width) -> np.ndarray:
    """(..., 9) fx, fy, cx, cy, k1, k2, k3, p1, p2 in pixels -> the mirrored camera:
    cx' = w - cx, p1' = -p1. `image_width` is a number or an array broadcasting to (...)."""
    out = np.array(intrinsics, dtype=np.float64, copy=True)
    out[..., 2] = np.asarray(image_width, dtype=np.float64) - out[..., 2]
    out[..., 7] = -out[..., 7]
    return out.astype(np.asarray(intrinsics).dtype)
