"""2D keypoints from real detectors and trackers: reading their files and converting COCO-17 -> H36M-17.

Lifters trained on Human3.6M consume the 17 H36M joints (docs/field_notes.md order), while detectors
(Detectron, HRNet, ViTPose, RTMPose, YOLO-pose ...) export the 17 COCO keypoints. The conversion
follows the field's convention exactly as MotionBERT's `coco2h36m` (lib/data/dataset_wild.py), which
VideoPose3D-style in-the-wild demos share:

    H36M joint            from COCO
    0  pelvis             midpoint of hips (11 l_hip, 12 r_hip)
    1/2/3 r hip/knee/ank  12, 14, 16
    4/5/6 l hip/knee/ank  11, 13, 15
    7  spine              midpoint of pelvis (0) and thorax (8)
    8  thorax             midpoint of shoulders (5 l_shoulder, 6 r_shoulder)
    9  neck/nose          0 nose
    10 head               midpoint of eyes (1 l_eye, 2 r_eye)
    11/12/13 l sho/elb/wr 5, 7, 9
    14/15/16 r sho/elb/wr 6, 8, 10

A detector confidence channel (third value per keypoint) is carried through as the *minimum* score
of the COCO keypoints a joint is built from (a derived joint is only as reliable as its least
reliable source), rather than MotionBERT's average.

Accepted files (`load_keypoints`), pixel coordinates:
- `.npz`: key `keypoints` (F, 17, 2|3) or (P, F, 17, 2|3) for P persons; optional scalar `width`,
  `height`. Loaded with `allow_pickle=False`.
- `.json`: a list of frames, or {"keypoints": <list of frames or persons>, "width": w, "height": h}.
  A frame is 17 [x, y(, score)] pairs, a flat list of 17*2 or 17*3 numbers (COCO's own result
  format), or an object with such a "keypoints" entry. Persons: a list of lists of frames.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from preprocessing.errors import DataError

COCO17_NAMES = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)

# H36M joint -> the COCO keypoints averaged to place it (MotionBERT's coco2h36m).
COCO_TO_H36M_SOURCES: tuple[tuple[int, ...], ...] = (
    (11, 12),  # 0 pelvis = hip midpoint
    (12,),  # 1 r_hip
    (14,),  # 2 r_knee
    (16,),  # 3 r_ankle
    (11,),  # 4 l_hip
    (13,),  # 5 l_knee
    (15,),  # 6 l_ankle
    (),  # 7 spine: midpoint of pelvis and thorax (derived from joints 0 and 8 below)
    (5, 6),  # 8 thorax = shoulder midpoint
    (0,),  # 9 neck/nose = nose
    (1, 2),  # 10 head = eye midpoint
    (5,),  # 11 l_shoulder
    (7,),  # 12 l_elbow
    (9,),  # 13 l_wrist
    (6,),  # 14 r_shoulder
    (8,),  # 15 r_elbow
    (10,),  # 16 r_wrist
)
SPINE_SOURCES = (11, 12, 5, 6)  # the COCO keypoints the spine depends on (for its score)

LAYOUTS = ("coco", "h36m")


def coco_to_h36m(keypoints: np.ndarray) -> np.ndarray:
    """(..., 17, C) COCO keypoints -> (..., 17, C) H36M joints; C = 2 (x, y) or 3 (x, y, score).

    Coordinates follow MotionBERT's coco2h36m; the score channel is the minimum of the source
    keypoints' scores.
    """
    kp = np.asarray(keypoints)
    if kp.shape[-2] != 17 or kp.shape[-1] not in (2, 3):
        raise ValueError(f"expected (..., 17, 2|3) COCO keypoints, got shape {kp.shape}")
    xy = kp[..., :2].astype(np.float64)
    out = np.zeros(kp.shape[:-1] + (2,), dtype=np.float64)
    for joint, sources in enumerate(COCO_TO_H36M_SOURCES):
        if sources:
            out[..., joint, :] = xy[..., list(sources), :].mean(axis=-2)
    out[..., 7, :] = (out[..., 0, :] + out[..., 8, :]) * 0.5
    if kp.shape[-1] == 2:
        return out.astype(np.float32)
    score = kp[..., 2].astype(np.float64)
    scores = np.stack(
        [score[..., list(s or SPINE_SOURCES)].min(axis=-1) for s in COCO_TO_H36M_SOURCES], axis=-1
    )
    return np.concatenate([out, scores[..., None]], axis=-1).astype(np.float32)


def normalize_screen(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixels -> the field's normalised coordinates `x / w * 2 - [1, h / w]` (docs/field_notes.md)."""
    xy = np.asarray(xy, dtype=np.float32)
    return (xy / width * 2.0 - np.array([1.0, height / width], dtype=np.float32)).astype(np.float32)


def screen_to_pixels(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Inverse of `normalize_screen`."""
    xy = np.asarray(xy, dtype=np.float32)
    return ((xy + np.array([1.0, height / width], dtype=np.float32)) * width / 2.0).astype(np.float32)


@dataclass
class KeypointInput:
    """One person's 2D track in H36M order, pixels, with the image size it was measured in."""

    keypoints: np.ndarray  # (F, 17, 2) float32 pixels, H36M order
    scores: Optional[np.ndarray]  # (F, 17) float32 or None
    width: float
    height: float
    source_layout: str  # "coco" or "h36m": layout of the file
    path: str
    person: Optional[int]  # index chosen among P persons, None for a single-person file

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])


def _read_npz(path: Path) -> tuple[Any, Any, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "keypoints" not in z.files:
                raise DataError(f"{path}: no key 'keypoints' (found {sorted(z.files)})")
            kp = z["keypoints"]
            width = z["width"] if "width" in z.files else None
            height = z["height"] if "height" in z.files else None
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot be read as npz without pickles ({e})") from None
    return kp, width, height


def _frame_array(frame: Any, where: str) -> np.ndarray:
    """One frame (17 pairs/triples, a flat list, or {"keypoints": ...}) -> (17, C)."""
    if isinstance(frame, dict):
        if "keypoints" not in frame:
            raise DataError(f"{where}: frame object has no 'keypoints' entry")
        frame = frame["keypoints"]
    try:
        arr = np.asarray(frame, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: keypoints are not numbers") from None
    if arr.ndim == 1 and arr.size in (34, 51):
        arr = arr.reshape(17, arr.size // 17)
    if arr.ndim != 2:
        raise DataError(f"{where}: expected 17 keypoints of 2 or 3 values, got shape {arr.shape}")
    return arr


def _json_frames(frames: Any, where: str) -> np.ndarray:
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{where}: expected a non-empty list of frames")
    arrays = [_frame_array(f, f"{where}[{i}]") for i, f in enumerate(frames)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{where}: frames have different shapes {sorted(shapes)}")
    return np.stack(arrays)


def _read_json(path: Path) -> tuple[Any, Any, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    width = height = None
    if isinstance(data, dict):
        if "keypoints" not in data:
            raise DataError(f"{path}: JSON object has no 'keypoints' entry (keys {sorted(data)})")
        width, height = data.get("width"), data.get("height")
        data = data["keypoints"]
    where = f"{path}: keypoints"
    if isinstance(data, list) and data and isinstance(data[0], list) and data[0] and _is_frame_list(data[0]):
        persons = [_json_frames(p, f"{where}[{i}]") for i, p in enumerate(data)]
        if len({p.shape for p in persons}) != 1:
            raise DataError(f"{where}: persons have different numbers of frames or values")
        return np.stack(persons), width, height
    return _json_frames(data, where), width, height


def _is_frame_list(item: list) -> bool:
    """True if `item` is a list of frames (a person's track) rather than one frame."""
    first = item[0]
    if isinstance(first, dict):
        return True
    # A frame's first item is one keypoint ([x, y(, s)]); a track's is a frame (17 pairs or flat 34/51).
    return isinstance(first, list) and bool(first) and (isinstance(first[0], list) or len(first) in (34, 51))


def _scalar_size(value: Any, name: str, path: Path) -> Optional[float]:
    if value is None:
        return None
    try:
        v = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise DataError(f"{path}: {name} must be a single number, got {value!r}") from None
    return v


def load_keypoints(
    path: str | Path,
    layout: str = "coco",
    person: Optional[int] = None,
    width: Optional[float] = None,
    height: Optional[float] = None,
) -> KeypointInput:
    """Read one person's 2D keypoints (pixels) and return them in H36M order.

    `width`/`height` override the file's; one of the two sources must give them. A multi-person
    array (P, F, 17, C) needs `person` unless P == 1. Raises DataError naming the file and problem.
    """
    if layout not in LAYOUTS:
        raise DataError(f"keypoint layout {layout!r} is not one of {LAYOUTS}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: keypoint file not found")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        raw, file_w, file_h = _read_npz(p)
    elif suffix == ".json":
        raw, file_w, file_h = _read_json(p)
    else:
        raise DataError(f"{p}: unsupported keypoint file type {suffix!r} (expected .npz or .json)")
    kp = np.asarray(raw)
    if not np.issubdtype(kp.dtype, np.number):
        raise DataError(f"{p}: keypoints have dtype {kp.dtype}, expected numbers")
    chosen: Optional[int] = None
    if kp.ndim == 4:
        persons = kp.shape[0]
        if person is None and persons > 1:
            raise DataError(f"{p}: holds {persons} persons (shape {kp.shape}); choose one with --person")
        chosen = 0 if person is None else int(person)
        if not 0 <= chosen < persons:
            raise DataError(f"{p}: --person {chosen} out of range (file holds {persons} persons)")
        kp = kp[chosen]
    elif person not in (None, 0):
        raise DataError(f"{p}: holds one person (shape {kp.shape}), --person {person} does not exist")
    if kp.ndim != 3 or kp.shape[1] != 17 or kp.shape[2] not in (2, 3):
        raise DataError(
            f"{p}: keypoints have shape {kp.shape}, expected (frames, 17, 2|3) or (persons, frames, 17, 2|3)"
        )
    if kp.shape[0] < 1:
        raise DataError(f"{p}: keypoints hold no frames")
    if not np.isfinite(kp).all():
        bad = int(np.argwhere(~np.isfinite(kp))[0][0])
        raise DataError(f"{p}: keypoints contain NaN or inf (first at frame {bad}); fill gaps before lifting")
    w = width if width is not None else _scalar_size(file_w, "width", p)
    h = height if height is not None else _scalar_size(file_h, "height", p)
    if w is None or h is None:
        raise DataError(f"{p}: image size unknown: give --width and --height (the file has no width/height)")
    if w <= 0 or h <= 0:
        raise DataError(f"{p}: image size must be positive, got width={w} height={h}")
    h36m = coco_to_h36m(kp) if layout == "coco" else kp.astype(np.float32)
    scores = h36m[..., 2].astype(np.float32) if h36m.shape[-1] == 3 else None
    return KeypointInput(
        keypoints=np.ascontiguousarray(h36m[..., :2], dtype=np.float32),
        scores=scores,
        width=float(w),
        height=float(h),
        source_layout=layout,
        path=str(p),
        person=chosen,
    )
