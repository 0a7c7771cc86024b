"""The canonical sequence every source produces and every later stage consumes.

One `Sequence` per (subject, action, camera). Conventions (docs/field_notes.md):
- `keypoints_2d` (N, J, 2) float32, normalised image coordinates `x / w * 2 - [1, h / w]`.
- `positions_3d` (N, J, 3) float32, camera space, metres, root-relative with the root joint zeroed.
- `trajectory` (N, 3) float32, the root joint's camera-space position in metres (kept separately).
- `intrinsics` (9,) float32: fx, fy, cx, cy (pixels), k1, k2, k3, p1, p2 (VideoPose3D order of
  distortion terms); `image_size` = (width, height) in pixels.
- `valid` (N,) bool: frames with usable annotation (3DHP test sequences have invalid frames).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sequence:
    subject: str
    action: str  # raw action name, e.g. "Walking 1"
    activity: str  # grouping key, e.g. "Walking" (action.split(' ')[0], canonicalised)
    camera: str  # camera id, e.g. "54138969"
    camera_index: int  # position of the camera in the source's camera list
    split: str  # "train", "val" (held-out training subjects) or "test"
    layout: str  # skeleton name: "h36m" or "mpi_inf_3dhp"
    keypoints_2d: np.ndarray  # (N, J, 2) float32
    positions_3d: np.ndarray  # (N, J, 3) float32
    trajectory: np.ndarray  # (N, 3) float32
    intrinsics: np.ndarray  # (9,) float32
    image_size: tuple[int, int]  # (width, height)
    fps: float
    valid: np.ndarray  # (N,) bool

    @property
    def num_frames(self) -> int:
        return int(self.keypoints_2d.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.keypoints_2d.shape[1])

    def check(self) -> None:
        """Raise ValueError if shapes, dtypes or values break the conventions above."""
        n, j = self.keypoints_2d.shape[:2]
        expect = {
            "keypoints_2d": (self.keypoints_2d, (n, j, 2)),
            "positions_3d": (self.positions_3d, (n, j, 3)),
            "trajectory": (self.trajectory, (n, 3)),
            "intrinsics": (self.intrinsics, (9,)),
            "valid": (self.valid, (n,)),
        }
        where = f"{self.subject}/{self.action}/camera {self.camera}"
        for name, (arr, shape) in expect.items():
            if tuple(arr.shape) != shape:
                raise ValueError(f"{where}: {name} has shape {tuple(arr.shape)}, expected {shape}")
        for name in ("keypoints_2d", "positions_3d", "trajectory"):
            arr = getattr(self, name)
            if not np.isfinite(arr).all():
                raise ValueError(f"{where}: {name} contains NaN or inf")
