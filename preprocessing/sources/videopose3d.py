"""VideoPose3D-format sources: the generic loader, and Human3.6M as a configuration of it.

Files (docs/field_notes.md): `data_3d_*.npz` key `positions_3d` = {subject: {action: [N, 32|17, 3]}} world
metres; a 2D file key `positions_2d` = {subject: {action: [per camera [N', 17, 2] pixels]}} plus an
optional `metadata` dict (the H36M GT file has no `layout_name`); a cameras JSON
(`preprocessing.cameras`). Each (subject, action, camera) becomes one `Sequence`: 3D moved into the
camera, root trajectory split off and the root zeroed, 2D normalised by the camera's resolution.

Human3.6M = this loader + the built-in H36M cameras + the standard split (S1,S5,S6,S7,S8 / S9,S11)
+ the S11 "Directions" exclusion, at 50 fps. 2D subjects without 3D (S2-S4 of the CPN file) are
skipped; 2D longer than 3D is trimmed at the tail; 2D shorter than 3D is an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Mapping, Optional

import numpy as np

from preprocessing.cameras import (
    BUILTIN_H36M_CAMERAS,
    CameraSet,
    load_cameras,
    normalize_screen_coordinates,
    world_to_camera,
)
from preprocessing.config import SourceConfig
from preprocessing.errors import DataError
from preprocessing.sources.safe_npz import read_npz
from preprocessing.sequences import Sequence
from preprocessing.skeleton import H36M17, reduce_h36m32

H36M_TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
H36M_TEST_SUBJECTS = ("S9", "S11")
H36M_EXCLUDED = frozenset({("S11", "Directions")})  # corrupt video (exact action name)
H36M_FPS = 50.0
# Raw first words of Human3.6M action names -> the 15 canonical activities.
ACTIVITY_ALIASES: Mapping[str, str] = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog"}
# Layout names a 2D file may declare for H36M-ordered keypoints (VideoPose3D writes "h36m").
H36M_LAYOUT_NAMES = ("h36m",)
_MAX_ABS_METRES = 100.0  # world coordinates beyond this are surely millimetres, not metres


def activity_of(action: str) -> str:
    """Grouping key of an action name: its first word, with Human3.6M's aliases resolved."""
    first = action.split(" ")[0]
    return ACTIVITY_ALIASES.get(first, first)


def _nested_dict(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected {what}, got {type(value).__name__}")
    for subject, actions in value.items():
        if not isinstance(actions, dict):
            raise DataError(f"{where}['{subject}']: expected a dict of actions, got {type(actions).__name__}")
    return value


def _check_metadata(metadata: Any, path: str) -> None:
    """Optional 2D metadata: layout (if declared) must be H36M's, joint count (if declared) 17."""
    if not isinstance(metadata, dict):
        raise DataError(f"{path}:metadata: expected a dict, got {type(metadata).__name__}")
    layout = metadata.get("layout_name")
    if layout is not None and layout not in H36M_LAYOUT_NAMES:
        raise DataError(
            f"{path}:metadata: layout_name is {layout!r}, expected one of {list(H36M_LAYOUT_NAMES)} "
            "(keypoints in another joint order must be converted to the Human3.6M 17-joint order)"
        )
    joints = metadata.get("num_joints")
    if joints is not None and joints != H36M17.num_joints:
        raise DataError(f"{path}:metadata: num_joints is {joints!r}, expected {H36M17.num_joints}")


def _positions_3d(value: Any, where: str) -> np.ndarray:
    """(N, 32|17, 3) world metres -> (N, 17, 3) float64, checked."""
    if not isinstance(value, np.ndarray) or value.ndim != 3 or value.shape[-1] != 3:
        shape = getattr(value, "shape", type(value).__name__)
        raise DataError(f"{where}: expected an array [frames, joints, 3], got {shape}")
    if value.shape[1] == 32:
        value = reduce_h36m32(value)
    elif value.shape[1] != 17:
        raise DataError(f"{where}: expected 17 or 32 joints, got {value.shape[1]}")
    if value.shape[0] == 0:
        raise DataError(f"{where}: has no frames")
    if not np.isfinite(value).all():
        raise DataError(f"{where}: contains NaN or inf")
    if np.abs(value).max() > _MAX_ABS_METRES:
        raise DataError(f"{where}: coordinates up to {np.abs(value).max():.0f}: expected metres, got millimetres?")
    return value.astype(np.float64)


def read_positions_2d(path: str) -> dict:
    """A VideoPose3D 2D file's `positions_2d` ({subject: {action: [per camera (N, J, 2)]}}), its
    optional metadata checked (H36M layout, 17 joints); the arrays themselves are not checked."""
    loaded = read_npz(path, ["positions_2d"], optional=["metadata"])
    positions = _nested_dict(loaded["positions_2d"], f"{path}:positions_2d", "{subject: {action: [arrays]}}")
    if "metadata" in loaded:
        _check_metadata(loaded["metadata"], path)
    return positions


def checked_keypoints_2d(value: Any, frames_3d: int, joints: int, where: str) -> np.ndarray:
    """(N', J, 2) pixels -> (frames_3d, J, 2): longer is trimmed at the tail, shorter is an error."""
    if not isinstance(value, np.ndarray) or value.ndim != 3 or value.shape[-1] != 2:
        shape = getattr(value, "shape", type(value).__name__)
        raise DataError(f"{where}: expected an array [frames, {joints}, 2], got {shape}")
    if value.shape[1] != joints:
        raise DataError(f"{where}: expected {joints} joints, got {value.shape[1]}")
    if value.shape[0] < frames_3d:
        raise DataError(f"{where}: has {value.shape[0]} frames, fewer than the 3D's {frames_3d}")
    value = value[:frames_3d]
    if not np.isfinite(value).all():
        raise DataError(f"{where}: contains NaN or inf")
    return value


def _split_of(train: Collection[str], test: Collection[str], where: str) -> dict[str, str]:
    both = sorted(set(train) & set(test))
    if both:
        raise DataError(f"{where}: subjects {both} are in both the train and the test split")
    split = {s: "train" for s in train}
    split.update({s: "test" for s in test})
    if not split:
        raise DataError(f"{where}: no train or test subjects selected")
    return split


def load_videopose3d(
    data_3d: str,
    data_2d: str,
    cameras: CameraSet,
    train_subjects: Collection[str],
    test_subjects: Collection[str],
    activities: Collection[str] = (),
    exclude: Collection[tuple[str, str]] = (),
    fps: Optional[float] = None,
) -> list[Sequence]:
    """The generic VideoPose3D loader: every (subject, action, camera) of the selected subjects.

    `activities` filters on `activity_of(action)`; every filter value must match something.
    `fps` defaults to the cameras JSON's `fps`, else Human3.6M's 50.
    """
    p3, p2 = str(Path(data_3d).resolve()), str(Path(data_2d).resolve())
    pos3d = _nested_dict(read_npz(p3, ["positions_3d"])["positions_3d"], f"{p3}:positions_3d", "{subject: {action: array}}")
    pos2d = read_positions_2d(p2)
    fps = fps if fps is not None else (cameras.fps if cameras.fps is not None else H36M_FPS)
    split = _split_of(train_subjects, test_subjects, p3)
    excluded = set(exclude)
    wanted = set(activities)
    matched: set[str] = set()

    for subject in split:
        if subject not in pos3d:
            raise DataError(f"{p3}: subject '{subject}' not found (subjects in file: {sorted(pos3d)})")
        if subject not in pos2d:
            raise DataError(f"{p2}: subject '{subject}' not found (subjects in file: {sorted(pos2d)})")
        if subject not in cameras.extrinsics:
            raise DataError(f"{cameras.path}: subject '{subject}' has no cameras in 'extrinsics' "
                            f"(subjects: {sorted(cameras.extrinsics)})")

    sequences: list[Sequence] = []
    for subject, part in split.items():
        for action in sorted(pos3d[subject]):
            activity = activity_of(action)
            if (subject, action) in excluded or (wanted and activity not in wanted):
                continue
            matched.add(activity)
            where3 = f"{p3}:positions_3d['{subject}']['{action}']"
            world = _positions_3d(pos3d[subject][action], where3)
            if action not in pos2d[subject]:
                raise DataError(f"{p2}: action '{action}' of subject '{subject}' not found (3D has it)")
            views = pos2d[subject][action]
            where2 = f"{p2}:positions_2d['{subject}']['{action}']"
            if not isinstance(views, (list, tuple)) or len(views) != len(cameras.intrinsics):
                got = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
                raise DataError(f"{where2}: expected a list of {len(cameras.intrinsics)} cameras "
                                f"(as in {cameras.path}), got {got}")
            for index, (intr, extr) in enumerate(zip(cameras.intrinsics, cameras.extrinsics[subject])):
                kp = checked_keypoints_2d(views[index], world.shape[0], H36M17.num_joints, f"{where2}[{index}]")
                cam = world_to_camera(world, extr.orientation, extr.translation)  # (N, 17, 3) metres
                trajectory = cam[:, 0].copy()
                rel = cam - cam[:, :1]
                seq = Sequence(
                    subject=subject, action=action, activity=activity, camera=intr.id,
                    camera_index=index, split=part, layout=H36M17.name,
                    keypoints_2d=normalize_screen_coordinates(kp, intr.res_w, intr.res_h).astype(np.float32),
                    positions_3d=rel.astype(np.float32), trajectory=trajectory.astype(np.float32),
                    intrinsics=intr.params.astype(np.float32), image_size=(intr.res_w, intr.res_h),
                    fps=float(fps), valid=np.ones(world.shape[0], dtype=bool),
                )
                sequences.append(seq)
    missing = sorted(wanted - matched)
    if missing:
        raise DataError(f"{p3}: activities filter {missing} matches no action of subjects {list(split)}")
    if not sequences:
        raise DataError(f"{p3}: no sequences selected (subjects {list(split)}, activities {sorted(wanted) or 'all'})")
    return sequences


def load_generic(source: SourceConfig) -> tuple[list[Sequence], list[str]]:
    """`source.kind = generic`: any subjects, user cameras JSON and split. Returns (sequences, files)."""
    cameras = load_cameras(source.cameras)
    sequences = load_videopose3d(
        source.data_3d, source.data_2d, cameras, source.train_subjects, source.test_subjects,
        activities=source.activities,
    )
    return sequences, _files(source.data_3d, source.data_2d, cameras.path)


def load_h36m(source: SourceConfig) -> tuple[list[Sequence], list[str]]:
    """`source.kind = h36m`: built-in cameras (unless `cameras` given), standard split, exclusions."""
    cameras = load_cameras(source.cameras or BUILTIN_H36M_CAMERAS)
    train = source.train_subjects or list(H36M_TRAIN_SUBJECTS)
    test = source.test_subjects or list(H36M_TEST_SUBJECTS)
    sequences = load_videopose3d(
        source.data_3d, source.data_2d, cameras, train, test,
        activities=source.activities, exclude=H36M_EXCLUDED, fps=H36M_FPS,
    )
    return sequences, _files(source.data_3d, source.data_2d, cameras.path)


def _files(*paths: str) -> list[str]:
    return [str(Path(p).resolve()) for p in paths]
