"""MPI-INF-3DHP in P-STMO's npz files (the form every lifter uses).

- `data_train_3dhp.npz`, key `data` = {"S1 Seq1": [{camera: {"data_2d": [F,17,2] px,
  "data_3d": [F,17,3] mm}}, fps], ...} for cameras "0","1","2","4","5","6","7","8".
  One Sequence per (subject, sequence, camera): subject "S1", action "Seq1", split "train",
  image 2048x2048, all frames valid.
- `data_test_3dhp.npz`, key `data` = {"TS1": {"data_2d", "data_3d", "valid"}, ...}: subject =
  action = "TS1".."TS6", camera "0" (the single test camera), split "test", image 2048x2048
  (TS1-TS4) or 1920x1080 (TS5, TS6), `valid` from the file.

Conventions applied (docs/field_notes.md): MPI 17-joint order, root = pelvis 14; 3D (`univ_annot3`) is
already camera-space but in millimetres -> metres, root trajectory split off and root zeroed.
Activity = the scene of the official scene-wise breakdown for the test set (GreenScreen TS1-2,
NoGreenScreen TS3-4, Outdoor TS5-6), the sequence name ("Seq1") for training.

Intrinsics: P-STMO's npz carries no calibration, and `univ_annot3` is rescaled to a universal
skeleton height, so no pinhole model reproduces its 2D from its 3D anyway. We store all-zero
intrinsics: an explicit "unknown" (fx = 0 can never be mistaken for a real camera). Flip
augmentation does change them: it mirrors the principal point, cx' = image width - cx, so a
flipped window carries cx = 2048 (or 1920) and p1 = -0 while fx = fy = 0 still marks them unknown.

Frame rates: training = the fps stored in the file; if absent, the table of the dataset's
`mpii_get_sequence_info.m` (25 fps, 50 fps for S1 Seq2, S3, S5). Test = 25 fps for the studio
sequences TS1-TS4 and 50 fps for the outdoor TS5-TS6 (not in the npz; from the test set's
documentation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

import numpy as np

from preprocessing.config import SourceConfig
from preprocessing.errors import DataError
from preprocessing.sources.safe_npz import read_npz
from preprocessing.sequences import Sequence
from preprocessing.skeleton import MPI17
from preprocessing.sources.videopose3d import checked_keypoints_2d

TRAIN_CAMERAS = ("0", "1", "2", "4", "5", "6", "7", "8")
TRAIN_RESOLUTION = (2048, 2048)
TEST_RESOLUTION = {"TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048), "TS4": (2048, 2048),
                   "TS5": (1920, 1080), "TS6": (1920, 1080)}
TEST_SCENE = {"TS1": "GreenScreen", "TS2": "GreenScreen", "TS3": "NoGreenScreen", "TS4": "NoGreenScreen",
              "TS5": "Outdoor", "TS6": "Outdoor"}
TEST_FPS = {"TS1": 25.0, "TS2": 25.0, "TS3": 25.0, "TS4": 25.0, "TS5": 50.0, "TS6": 50.0}
# mpi_inf_3dhp/util/mpii_get_sequence_info.m: sequences recorded at 50 fps (all others 25).
TRAIN_FPS_50 = frozenset({("S1", "Seq2"), ("S3", "Seq1"), ("S3", "Seq2"), ("S5", "Seq1"), ("S5", "Seq2")})
UNKNOWN_INTRINSICS = np.zeros(9, dtype=np.float32)
_MAX_ABS_MM = 1e5  # camera-space millimetres: 100 m is far outside any capture volume


def _positions_3d_mm(value: Any, where: str, valid: np.ndarray | None = None) -> np.ndarray:
    """(F, 17, 3) camera-space mm -> float64 metres; invalid frames' non-finite values become 0."""
    if not isinstance(value, np.ndarray) or value.ndim != 3 or value.shape[-1] != 3:
        shape = getattr(value, "shape", type(value).__name__)
        raise DataError(f"{where}: expected an array [frames, 17, 3], got {shape}")
    if value.shape[1] != MPI17.num_joints:
        raise DataError(f"{where}: expected {MPI17.num_joints} joints, got {value.shape[1]}")
    if value.shape[0] == 0:
        raise DataError(f"{where}: has no frames")
    value = value.astype(np.float64)
    finite = np.isfinite(value).all(axis=(1, 2))
    if valid is not None:
        value[~valid & ~finite] = 0.0
        finite |= ~valid
    if not finite.all():
        raise DataError(f"{where}: contains NaN or inf (first at frame {int(np.argmin(finite))})")
    if np.abs(value).max() > _MAX_ABS_MM:
        raise DataError(f"{where}: coordinates up to {np.abs(value).max():.3g}: expected millimetres")
    return value / 1000.0


def _sequence(subject: str, action: str, activity: str, camera: str, camera_index: int, split: str,
              kp: np.ndarray, pos_m: np.ndarray, size: tuple[int, int], fps: float,
              valid: np.ndarray) -> Sequence:
    root = MPI17.root
    w, h = size
    return Sequence(
        subject=subject, action=action, activity=activity, camera=camera, camera_index=camera_index,
        split=split, layout=MPI17.name,
        keypoints_2d=(kp / w * 2 - np.array([1.0, h / w])).astype(np.float32),
        positions_3d=(pos_m - pos_m[:, root:root + 1]).astype(np.float32),
        trajectory=pos_m[:, root].astype(np.float32),
        intrinsics=UNKNOWN_INTRINSICS.copy(), image_size=size, fps=fps, valid=valid,
    )


def _select(keys: Collection[str], wanted: Collection[str], path: str, what: str) -> list[str]:
    missing = sorted(set(wanted) - set(keys))
    if missing:
        raise DataError(f"{path}: {what} {missing} not found (in file: {sorted(keys)})")
    return [k for k in keys if not wanted or k in wanted]


def _train_fps(entry: Any, subject: str, action: str, where: str) -> float:
    if len(entry) > 1:
        fps = entry[1]
        if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, (int, float, np.number)) or not fps > 0:
            raise DataError(f"{where}[1]: expected the sequence's fps (a positive number), got {fps!r}")
        return float(fps)
    return 50.0 if (subject, action) in TRAIN_FPS_50 else 25.0


def load_train(path: str, subjects: Collection[str], activities: Collection[str]) -> list[Sequence]:
    p = str(Path(path).resolve())
    data = read_npz(p, ["data"])["data"]
    if not isinstance(data, dict):
        raise DataError(f"{p}:data: expected {{'S1 Seq1': [cameras, fps]}}, got {type(data).__name__}")
    by_subject: dict[str, list[str]] = {}
    for key in data:
        parts = str(key).split(" ")
        if len(parts) != 2:
            raise DataError(f"{p}:data: key {key!r} is not '<subject> <sequence>' (e.g. 'S1 Seq1')")
        by_subject.setdefault(parts[0], []).append(key)
    sequences: list[Sequence] = []
    for subject in _select(list(by_subject), subjects, p, "subjects"):
        for key in by_subject[subject]:
            action = key.split(" ")[1]
            if activities and action not in activities:
                continue
            where = f"{p}:data['{key}']"
            entry = data[key]
            entry = [entry] if isinstance(entry, dict) else entry
            if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], dict):
                raise DataError(f"{where}: expected [{{camera: {{data_2d, data_3d}}}}, fps]")
            fps = _train_fps(entry, subject, action, where)
            cameras = sorted(entry[0], key=lambda c: (len(str(c)), str(c)))
            for index, camera in enumerate(cameras):
                anim = entry[0][camera]
                cw = f"{where}[0]['{camera}']"
                if not isinstance(anim, dict) or "data_2d" not in anim or "data_3d" not in anim:
                    raise DataError(f"{cw}: expected a dict with keys 'data_2d' and 'data_3d'")
                pos = _positions_3d_mm(anim["data_3d"], f"{cw}['data_3d']")
                kp = checked_keypoints_2d(anim["data_2d"], pos.shape[0], MPI17.num_joints, f"{cw}['data_2d']")
                sequences.append(_sequence(subject, action, action, str(camera), index, "train", kp, pos,
                                           TRAIN_RESOLUTION, fps, np.ones(pos.shape[0], dtype=bool)))
    return sequences


def load_test(path: str, subjects: Collection[str], activities: Collection[str]) -> list[Sequence]:
    p = str(Path(path).resolve())
    data = read_npz(p, ["data"])["data"]
    if not isinstance(data, dict):
        raise DataError(f"{p}:data: expected {{'TS1': {{data_2d, data_3d, valid}}}}, got {type(data).__name__}")
    sequences: list[Sequence] = []
    for name in _select(list(data), subjects, p, "test sequences"):
        where = f"{p}:data['{name}']"
        if name not in TEST_RESOLUTION:
            raise DataError(f"{where}: unknown test sequence (expected one of {sorted(TEST_RESOLUTION)})")
        if activities and TEST_SCENE[name] not in activities:
            continue
        anim = data[name]
        if not isinstance(anim, dict) or any(k not in anim for k in ("data_2d", "data_3d", "valid")):
            raise DataError(f"{where}: expected a dict with keys 'data_2d', 'data_3d', 'valid'")
        raw3d = anim["data_3d"]
        frames = raw3d.shape[0] if isinstance(raw3d, np.ndarray) and raw3d.ndim else 0
        valid = np.asarray(anim["valid"])
        if valid.size != frames or not (valid.dtype == bool or np.issubdtype(valid.dtype, np.number)):
            raise DataError(f"{where}['valid']: expected {frames} flags (one per frame), got shape {valid.shape}")
        valid = valid.reshape(-1) != 0
        pos = _positions_3d_mm(raw3d, f"{where}['data_3d']", valid)
        raw2d = anim["data_2d"]
        if isinstance(raw2d, np.ndarray) and raw2d.ndim == 3 and raw2d.shape[0] == frames:
            raw2d = np.where(valid[:, None, None], raw2d, np.nan_to_num(raw2d, nan=0.0, posinf=0.0, neginf=0.0))
        kp = checked_keypoints_2d(raw2d, pos.shape[0], MPI17.num_joints, f"{where}['data_2d']")
        sequences.append(_sequence(name, name, TEST_SCENE[name], "0", 0, "test", kp, pos,
                                   TEST_RESOLUTION[name], TEST_FPS[name], valid))
    return sequences


def load_mpi3dhp(source: SourceConfig) -> tuple[list[Sequence], list[str]]:
    """`source.kind = mpi3dhp`: train and/or test file. Returns (sequences, files read)."""
    sequences: list[Sequence] = []
    files: list[str] = []
    if source.mpi_train:
        sequences += load_train(source.mpi_train, source.train_subjects, source.activities)
        files.append(str(Path(source.mpi_train).resolve()))
    if source.mpi_test:
        sequences += load_test(source.mpi_test, source.test_subjects, source.activities)
        files.append(str(Path(source.mpi_test).resolve()))
    found = {s.activity for s in sequences}
    missing = sorted(set(source.activities) - found)
    if missing:
        raise DataError(f"{', '.join(files)}: activities filter {missing} matches nothing "
                        f"(activities: {sorted(found) or 'none'})")
    if not sequences:
        raise DataError(f"{', '.join(files)}: no sequences selected")
    return sequences, files
