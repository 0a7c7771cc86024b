"""Cameras in VideoPose3D's conventions: JSON tables, quaternions, projection, normalisation.

Conventions (docs/field_notes.md): orientation is a unit quaternion (w, x, y, z) rotating camera
coordinates into world coordinates; translation is the camera centre in world coordinates (the
JSON stores millimetres, `load_cameras` returns metres); `world_to_camera(X) = qrot(q^-1, X - t)`.
Intrinsics are the (9,) vector fx, fy, cx, cy, k1, k2, k3, p1, p2 in pixels, projected with
VideoPose3D's `project_to_2d` distortion model. Everything here is pure numpy.

Cameras JSON (`videopose3d-cameras/1`, e.g. preprocessing/h36m_cameras.json):
`{"intrinsics": [{"id", "center": [cx, cy], "focal_length": [fx, fy], "radial_distortion":
[k1, k2, k3], "tangential_distortion": [p1, p2], "res_w", "res_h"}, ...],
"extrinsics": {subject: [{"orientation": [w, x, y, z], "translation": [x, y, z] (mm)}, ...]}}`
with one extrinsics entry per intrinsics entry, in the same camera order. An optional top-level
`"fps"` (raylift's extension, written by the synthetic generator) gives the frame rate.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from preprocessing.errors import DataError

BUILTIN_H36M_CAMERAS = Path(__file__).resolve().parent / "h36m_cameras.json"


@dataclass(frozen=True)
class CameraIntrinsics:
    """One camera's calibration: id, resolution and the (9,) pixel intrinsics vector."""

    id: str
    res_w: int
    res_h: int
    params: np.ndarray  # (9,) float64: fx, fy, cx, cy, k1, k2, k3, p1, p2


@dataclass(frozen=True)
class CameraExtrinsics:
    """One camera's pose for one subject: camera->world rotation and camera centre (metres)."""

    orientation: np.ndarray  # (4,) float64 unit quaternion w, x, y, z
    translation: np.ndarray  # (3,) float64 camera centre in world, metres


@dataclass
class CameraSet:
    """A cameras JSON: intrinsics per camera, extrinsics per subject and camera."""

    path: str
    intrinsics: list[CameraIntrinsics]
    extrinsics: dict[str, list[CameraExtrinsics]]
    fps: Optional[float] = None


# ----------------------------------------------------------------------------- quaternions


def qinverse(q: np.ndarray) -> np.ndarray:
    """Inverse of unit quaternions (..., 4) w,x,y,z: the conjugate."""
    q = np.asarray(q)
    return np.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4) (broadcast), as VideoPose3D does."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    qvec = q[..., 1:]
    uv = np.cross(qvec, v)
    uuv = np.cross(qvec, uv)
    return v + 2.0 * (q[..., :1] * uv + uuv)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion w,x,y,z -> (3, 3) rotation matrix R with R @ v == qrot(q, v)."""
    w, x, y, z = np.asarray(q, dtype=np.float64)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def world_to_camera(x: np.ndarray, orientation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """World points (..., 3) -> camera space: qrot(q^-1, X - t). Same units as x and translation.

    Computed as (X - t) @ R with R the camera->world matrix (R^T (X - t) per point): identical to
    VideoPose3D's qrot form, and fast on millions of points.
    """
    r = quaternion_to_matrix(orientation)
    return (np.asarray(x, dtype=np.float64) - np.asarray(translation, dtype=np.float64)) @ r


def camera_to_world(x: np.ndarray, orientation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Camera-space points (..., 3) -> world: qrot(q, X) + t."""
    r = quaternion_to_matrix(orientation)
    return np.asarray(x, dtype=np.float64) @ r.T + np.asarray(translation, dtype=np.float64)


# ----------------------------------------------------------------------------- projection


def project_to_2d(x: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Camera-space points (..., 3) -> pixels (..., 2) with VideoPose3D's distortion model.

    x/z and y/z are clamped to [-1, 1]; r2 = x^2 + y^2; radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3;
    tan = p1 x + p2 y; x' = x (radial + tan) + p1 r2, y' = y (radial + tan) + p2 r2;
    u = fx x' + cx, v = fy y' + cy. `intrinsics` is (9,), or (..., 9) whose leading axes broadcast
    against x's leading axes (e.g. x (B, J, 3) with intrinsics (B, 1, 9)).
    """
    x = np.asarray(x, dtype=np.float64)
    k9 = np.asarray(intrinsics, dtype=np.float64)
    fx, fy, cx, cy, k1, k2, k3, p1, p2 = (k9[..., i] for i in range(9))
    u = np.clip(x[..., 0] / x[..., 2], -1.0, 1.0)
    v = np.clip(x[..., 1] / x[..., 2], -1.0, 1.0)
    r2 = u * u + v * v
    radial_tan = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3)) + (p1 * u + p2 * v)
    return np.stack([fx * (u * radial_tan + p1 * r2) + cx, fy * (v * radial_tan + p2 * r2) + cy], axis=-1)


def normalize_screen_coordinates(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """Pixels (..., 2) -> [-1, 1] along x with the aspect ratio kept: x / w * 2 - [1, h / w]."""
    return np.asarray(x) / w * 2 - np.array([1.0, h / w])


def image_coordinates(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """Inverse of `normalize_screen_coordinates`."""
    return (np.asarray(x) + np.array([1.0, h / w])) * w / 2


# ----------------------------------------------------------------------------- JSON loading


def _numbers(entry: dict, key: str, n: int, where: str) -> np.ndarray:
    if key not in entry:
        raise DataError(f"{where}: missing key '{key}'")
    value = entry[key]
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}.{key}: expected {n} numbers, got {value!r}") from None
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DataError(f"{where}.{key}: expected {n} finite numbers, got {value!r}")
    return arr


def _positive_int(entry: dict, key: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return value


def parse_intrinsics(entry: Any, where: str) -> CameraIntrinsics:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    if "id" not in entry:
        raise DataError(f"{where}: missing key 'id'")
    f = _numbers(entry, "focal_length", 2, where)
    c = _numbers(entry, "center", 2, where)
    k = _numbers(entry, "radial_distortion", 3, where)
    p = _numbers(entry, "tangential_distortion", 2, where)
    if (f <= 0).any():
        raise DataError(f"{where}.focal_length: expected positive values, got {f.tolist()}")
    return CameraIntrinsics(
        id=str(entry["id"]),
        res_w=_positive_int(entry, "res_w", where),
        res_h=_positive_int(entry, "res_h", where),
        params=np.concatenate([f, c, k, p]),
    )


def parse_extrinsics(entry: Any, where: str) -> CameraExtrinsics:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    q = _numbers(entry, "orientation", 4, where)
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > 1e-3:
        raise DataError(f"{where}.orientation: expected a unit quaternion (w,x,y,z), norm is {norm:.6f}")
    t = _numbers(entry, "translation", 3, where)
    return CameraExtrinsics(orientation=q / norm, translation=t / 1000.0)


def load_cameras(path: str | Path) -> CameraSet:
    """Read and validate a cameras JSON; every problem is a DataError naming file and key."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"cameras file not found: {p}")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{p}: expected a JSON object at the top level")
    for key in ("intrinsics", "extrinsics"):
        if key not in raw:
            raise DataError(f"{p}: missing key '{key}'")
    if not isinstance(raw["intrinsics"], list) or not raw["intrinsics"]:
        raise DataError(f"{p}: 'intrinsics' must be a non-empty list of cameras")
    intrinsics = [parse_intrinsics(e, f"{p}: intrinsics[{i}]") for i, e in enumerate(raw["intrinsics"])]
    ids = [c.id for c in intrinsics]
    if len(set(ids)) != len(ids):
        raise DataError(f"{p}: intrinsics ids are not unique: {ids}")
    if not isinstance(raw["extrinsics"], dict):
        raise DataError(f"{p}: 'extrinsics' must map subject -> list of cameras")
    extrinsics: dict[str, list[CameraExtrinsics]] = {}
    for subject, entries in raw["extrinsics"].items():
        where = f"{p}: extrinsics['{subject}']"
        if not isinstance(entries, list) or len(entries) != len(intrinsics):
            got = len(entries) if isinstance(entries, list) else type(entries).__name__
            raise DataError(f"{where}: expected a list of {len(intrinsics)} cameras, got {got}")
        extrinsics[subject] = [parse_extrinsics(e, f"{where}[{i}]") for i, e in enumerate(entries)]
    fps = raw.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0):
        raise DataError(f"{p}: 'fps' must be a positive number, got {fps!r}")
    return CameraSet(
        path=str(p.resolve()), intrinsics=intrinsics, extrinsics=extrinsics,
        fps=float(fps) if fps is not None else None,
    )
