"""2D pose files as the common detectors write them, read into one person's H36M-17 track.

Every reader turns its file into `Detections`: per frame, the people found, each with keypoints in
the detector's own joint layout, (x, y, score) in pixels, and when the file has them a track id and
a box. `pick_person` then keeps one person per frame (a track id, or the largest box), the layout is
mapped to COCO-17 (`LAYOUT_TO_COCO`) and from there to H36M-17 with the field's conversion
(`keypoint_formats.coco_to_h36m`), and frames where the person is missing are filled by linear
interpolation of each joint (score 0 there), counted in the result.

Formats (`FORMATS`; `detect_format` picks one from the file where that is unambiguous):

| format        | writer                                     | file                                                     | layouts |
|---------------|--------------------------------------------|----------------------------------------------------------|---------|
| `mmpose`      | MMPose / RTMPose (`--save-predictions`, the inferencer's `predictions`) | JSON: `{"instance_info": [{"frame_id", "instances": [{"keypoints", "keypoint_scores", "bbox", "track_id"?}]}]}` or a list of frames of such instances | COCO-17, COCO-WholeBody-133 |
| `openpose`    | OpenPose `--write_json`                     | a directory of per-frame `*_keypoints.json` (`people[].pose_keypoints_2d`), or one such file | BODY_25 |
| `alphapose`   | AlphaPose `alphapose-results.json`         | JSON list of `{"image_id", "keypoints": [x, y, s, ...], "box"?, "idx"?}` | COCO-17, Halpe-26 (and Halpe-136's body) |
| `videopose3d` | Detectron2 through VideoPose3D's `prepare_data_2d_custom.py` | `data_2d_custom_*.npz`: `positions_2d[video]["custom"][0]` (F, 17, 2), `metadata.video_metadata[video]` {w, h} | COCO-17 |
| `mediapipe`   | MediaPipe Pose landmarks, saved as JSON    | a list of frames, each 33 `{"x", "y", "visibility"}` (normalised to [0, 1]) or `{"landmarks": [...]}`; `width`/`height` at the top level or given | BlazePose-33 |
| `csv`         | any tool                                   | a header with `<joint>_x`, `<joint>_y` (and `<joint>_score`) for the 17 COCO or H36M joint names; optional `frame` and `track_id` columns | COCO-17, H36M-17 |

The joint mappings to COCO-17 are `LAYOUT_TO_COCO` (docs/infer.md prints the table): BODY_25
and BlazePose-33 keep their COCO-named joints; COCO-WholeBody and Halpe list COCO's 17 first.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from preprocessing.errors import DataError
from preprocessing.sources.keypoint_formats import COCO17_NAMES, KeypointInput, coco_to_h36m
from preprocessing.skeleton import H36M17

# Source layout -> the index, in that layout, of each COCO-17 keypoint (COCO17_NAMES order).
LAYOUT_TO_COCO: dict[str, tuple[int, ...]] = {
    "coco17": tuple(range(17)),
    "coco_wholebody133": tuple(range(17)),  # body first, then feet, face, hands
    "halpe26": tuple(range(17)),  # COCO's 17, then head, neck, hip and 6 foot points
    "halpe136": tuple(range(17)),
    # OpenPose BODY_25: 0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8 mid-hip, 9-11 right leg,
    # 12-14 left leg, 15 r_eye, 16 l_eye, 17 r_ear, 18 l_ear, 19-24 feet.
    "body25": (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11),
    # MediaPipe BlazePose-33: 0 nose, 2 l_eye, 5 r_eye, 7 l_ear, 8 r_ear, 11/12 shoulders,
    # 13/14 elbows, 15/16 wrists, 23/24 hips, 25/26 knees, 27/28 ankles (left first).
    "blazepose33": (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28),
}
LAYOUT_BY_JOINTS = {17: "coco17", 25: "body25", 26: "halpe26", 33: "blazepose33", 133: "coco_wholebody133",
                    136: "halpe136"}


@dataclass
class Person:
    """One person in one frame: keypoints (K, 3) = x, y, score in pixels, in the file's layout."""

    keypoints: np.ndarray
    track: Optional[int] = None
    box: Optional[tuple[float, float, float, float]] = None  # x1, y1, x2, y2

    def area(self) -> float:
        """The box's area, or that of the keypoints' extent when the file gives no box."""
        if self.box is not None:
            x1, y1, x2, y2 = self.box
        else:
            seen = self.keypoints[self.keypoints[:, 2] > 0] if (self.keypoints[:, 2] > 0).any() else self.keypoints
            (x1, y1), (x2, y2) = seen[:, :2].min(0), seen[:, :2].max(0)
        return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


@dataclass
class Detections:
    """What a detector wrote: per frame (in order), the people it found."""

    frames: list[list[Person]]
    layout: str  # a key of LAYOUT_TO_COCO
    width: Optional[float] = None
    height: Optional[float] = None


# ----------------------------------------------------------------------------- readers
def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _layout_of(joints: int, where: str, allowed: tuple[str, ...]) -> str:
    """The layout a person of `joints` keypoints is in, among the format's `allowed` ones."""
    layout = LAYOUT_BY_JOINTS.get(joints)
    if layout not in allowed:
        counts = {name: n for n, name in LAYOUT_BY_JOINTS.items()}
        raise DataError(f"{where}: {joints} keypoints per person fit none of this format's layouts "
                        f"({', '.join(f'{k}: {counts[k]}' for k in allowed)})")
    return layout


def _array(values: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: keypoints are not numbers") from None
    return arr


def _xyxy(box: Any, xywh: bool = False) -> Optional[tuple[float, float, float, float]]:
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float64).reshape(-1)[:4]
    if b.size < 4:
        return None
    x1, y1, a, c = (float(v) for v in b)
    return (x1, y1, x1 + a, y1 + c) if xywh else (x1, y1, a, c)


def _mmpose_person(inst: dict, where: str) -> Person:
    if not isinstance(inst, dict) or "keypoints" not in inst:
        raise DataError(f"{where}: an instance needs 'keypoints' (and 'keypoint_scores')")
    xy = _array(inst["keypoints"], where)
    if xy.ndim == 3:  # the inferencer wraps one instance's keypoints in a list
        xy = xy[0]
    scores = _array(inst.get("keypoint_scores", np.ones(len(xy))), where).reshape(-1)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(scores) != len(xy):
        raise DataError(f"{where}: keypoints {xy.shape} and keypoint_scores {scores.shape} do not fit (K, 2) and (K,)")
    track = inst.get("track_id")
    return Person(np.concatenate([xy, scores[:, None]], 1), None if track is None else int(track),
                  _xyxy(inst.get("bbox")))


def read_mmpose(path: Path) -> Detections:
    data = _load_json(path)
    if isinstance(data, dict) and "instance_info" in data:
        entries = sorted(data["instance_info"], key=lambda e: int(e.get("frame_id", 0)))
        frames = [[_mmpose_person(i, f"{path}: frame {e.get('frame_id')}") for i in e.get("instances", [])]
                  for e in entries]
        # A frame with nobody still has its entry in instance_info; frame ids may skip some.
        ids = [int(e.get("frame_id", n)) for n, e in enumerate(entries)]
        if ids:
            by_id = dict(zip(ids, frames))
            frames = [by_id.get(i, []) for i in range(min(ids), max(ids) + 1)]
    elif isinstance(data, list):
        frames = [[_mmpose_person(i, f"{path}: frame {n}") for i in (f if isinstance(f, list) else [f])]
                  for n, f in enumerate(data)]
    else:
        raise DataError(f"{path}: not an MMPose result (expected 'instance_info' or a list of frames)")
    joints = next((len(p.keypoints) for f in frames for p in f), None)
    if joints is None:
        raise DataError(f"{path}: no person in any frame")
    meta = data.get("meta_info", {}) if isinstance(data, dict) else {}
    return Detections(frames, _layout_of(joints, str(path), ("coco17", "coco_wholebody133")),
                      meta.get("width"), meta.get("height"))


OPENPOSE_FRAME = re.compile(r"(\d+)_keypoints\.json$")


def read_openpose(path: Path) -> Detections:
    files = sorted(path.glob("*_keypoints.json")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no OpenPose *_keypoints.json files in this directory")
    numbered = [(int(m.group(1)) if (m := OPENPOSE_FRAME.search(f.name)) else n, f) for n, f in enumerate(files)]
    frames: list[list[Person]] = []
    for _, f in sorted(numbered):
        data = _load_json(f)
        if not isinstance(data, dict) or "people" not in data:
            raise DataError(f"{f}: not an OpenPose frame (no 'people')")
        people = []
        for n, person in enumerate(data["people"]):
            flat = _array(person.get("pose_keypoints_2d", []), f"{f}: people[{n}]").reshape(-1)
            if flat.size % 3:
                raise DataError(f"{f}: people[{n}].pose_keypoints_2d has {flat.size} values, not (x, y, c) triples")
            track = person.get("person_id", [-1])
            track = int(track[0] if isinstance(track, list) else track)
            people.append(Person(flat.reshape(-1, 3), track if track >= 0 else None))
        frames.append(people)
    joints = next((len(p.keypoints) for fr in frames for p in fr), None)
    if joints is None:
        raise DataError(f"{path}: no person in any frame")
    return Detections(frames, _layout_of(joints, str(path), ("body25",)))


def read_alphapose(path: Path) -> Detections:
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(d, dict) and "keypoints" in d and "image_id" in d for d in data):
        raise DataError(f"{path}: not an AlphaPose result (expected a list of {{'image_id', 'keypoints'}})")
    if not data:
        raise DataError(f"{path}: no person in any frame")

    def frame_number(image_id: Any) -> int:
        digits = re.findall(r"\d+", str(image_id))
        if not digits:
            raise DataError(f"{path}: image_id {image_id!r} has no frame number")
        return int(digits[-1])

    by_frame: dict[int, list[Person]] = {}
    for n, det in enumerate(data):
        flat = _array(det["keypoints"], f"{path}: entry {n}").reshape(-1)
        if flat.size % 3:
            raise DataError(f"{path}: entry {n} has {flat.size} keypoint values, not (x, y, score) triples")
        track = det.get("idx")
        track = track[0] if isinstance(track, list) and track else track
        by_frame.setdefault(frame_number(det["image_id"]), []).append(
            Person(flat.reshape(-1, 3), None if track is None else int(track), _xyxy(det.get("box"), xywh=True)))
    first, last = min(by_frame), max(by_frame)
    frames = [by_frame.get(i, []) for i in range(first, last + 1)]
    joints = len(data[0]["keypoints"]) // 3
    return Detections(frames, _layout_of(joints, str(path), ("coco17", "halpe26", "halpe136")))


def read_videopose3d(path: Path, video: Optional[str] = None) -> Detections:
    from preprocessing.sources.safe_npz import read_npz

    z = read_npz(path, required=("positions_2d",), optional=("metadata",))
    positions, meta = z["positions_2d"], z.get("metadata") or {}
    if not isinstance(positions, dict) or not positions:
        raise DataError(f"{path}: positions_2d holds no video")
    if video is None:
        if len(positions) > 1:
            raise DataError(f"{path}: holds {len(positions)} videos ({', '.join(sorted(positions))}); choose one with --video-name")
        video = next(iter(positions))
    if video not in positions:
        raise DataError(f"{path}: no video {video!r} (found {', '.join(sorted(positions))})")
    cams = positions[video].get("custom") if isinstance(positions[video], dict) else None
    if not cams:
        raise DataError(f"{path}: positions_2d[{video!r}] has no 'custom' entry")
    kp = np.asarray(cams[0], dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] not in (2, 3):
        raise DataError(f"{path}: positions_2d[{video!r}]['custom'][0] has shape {kp.shape}, expected (frames, joints, 2)")
    if kp.shape[2] == 2:
        kp = np.concatenate([kp, np.ones(kp.shape[:2] + (1,))], 2)
    layout = str(meta.get("layout_name", "coco"))
    if layout != "coco":
        raise DataError(f"{path}: metadata layout_name {layout!r}, expected 'coco' (Detectron2's COCO keypoints)")
    size = (meta.get("video_metadata") or {}).get(video, {})
    frames = [[] if not np.isfinite(f[:, :2]).all() else [Person(f)] for f in kp]
    return Detections(frames, _layout_of(kp.shape[1], str(path), ("coco17",)), size.get("w"), size.get("h"))


def read_mediapipe(path: Path, width: Optional[float] = None, height: Optional[float] = None) -> Detections:
    """MediaPipe's landmarks are fractions of the frame: `width`/`height` (else the file's) scale them."""
    data = _load_json(path)
    if isinstance(data, dict):
        width = width if width is not None else data.get("width")
        height = height if height is not None else data.get("height")
        data = data.get("frames", data.get("landmarks"))
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: not MediaPipe landmarks (expected a list of frames of 33 landmarks)")
    frames: list[list[Person]] = []
    for n, frame in enumerate(data):
        marks = frame.get("landmarks", frame.get("pose_landmarks")) if isinstance(frame, dict) else frame
        if not marks:  # MediaPipe found nobody in this frame
            frames.append([])
            continue
        if not isinstance(marks, list) or len(marks) != 33:
            raise DataError(f"{path}: frame {n} has {len(marks) if isinstance(marks, list) else 'no'} landmarks, "
                            "expected MediaPipe Pose's 33")
        rows = [(m["x"], m["y"], m.get("visibility", 1.0)) if isinstance(m, dict) else tuple(m[:2]) + (m[3] if len(m) > 3 else 1.0,)
                for m in marks]
        frames.append([Person(_array(rows, f"{path}: frame {n}"))])
    if width is None or height is None:
        raise DataError(f"{path}: MediaPipe landmarks are normalised to [0, 1]: give the frame size "
                        "('width'/'height' in the file, or --width/--height)")
    for people in frames:
        for p in people:
            p.keypoints[:, 0] *= float(width)
            p.keypoints[:, 1] *= float(height)
    return Detections(frames, "blazepose33", width, height)


def read_csv(path: Path) -> Detections:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = set(rows[0])
    layouts = {"coco17": COCO17_NAMES, "h36m17": H36M17.joint_names}
    layout = next((k for k, names in layouts.items() if all(f"{j}_x" in columns and f"{j}_y" in columns for j in names)), None)
    if layout is None:
        raise DataError(f"{path}: the header needs <joint>_x and <joint>_y columns for the 17 COCO names "
                        f"({', '.join(COCO17_NAMES[:3])}, ...) or the 17 H36M names ({', '.join(H36M17.joint_names[:3])}, ...)")
    names = layouts[layout]
    by_frame: dict[int, list[Person]] = {}
    for n, row in enumerate(rows):
        try:
            kp = np.array([[float(row[f"{j}_x"]), float(row[f"{j}_y"]), float(row.get(f"{j}_score") or 1.0)]
                           for j in names])
            frame = int(row["frame"]) if row.get("frame") not in (None, "") else n
            track = int(row["track_id"]) if row.get("track_id") not in (None, "") else None
        except ValueError as e:
            raise DataError(f"{path}: row {n + 2}: {e}") from None
        by_frame.setdefault(frame, []).append(Person(kp, track))
    frames = [by_frame.get(i, []) for i in range(min(by_frame), max(by_frame) + 1)]
    return Detections(frames, layout)


READERS: dict[str, Callable[[Path], Detections]] = {
    "mmpose": read_mmpose,
    "openpose": read_openpose,
    "alphapose": read_alphapose,
    "videopose3d": read_videopose3d,
    "mediapipe": read_mediapipe,
    "csv": read_csv,
}
FORMATS = tuple(READERS)


def detect_format(path: Path) -> Optional[str]:
    """The format of `path` when its content says so unambiguously, else None."""
    if path.is_dir():
        return "openpose" if any(path.glob("*_keypoints.json")) else None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".npz":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return "videopose3d" if "positions_2d.npy" in z.namelist() else None
        except (zipfile.BadZipFile, OSError):
            return None
    if suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if isinstance(data, dict):
        if "instance_info" in data:
            return "mmpose"
        if "people" in data:
            return "openpose"
        if "frames" in data or "landmarks" in data:
            return "mediapipe"
        return None
    if isinstance(data, list) and data:
        first = data[0]
        if isinstance(first, dict) and "image_id" in first:
            return "alphapose"
        if isinstance(first, list) and first and isinstance(first[0], dict) and "keypoint_scores" in first[0]:
            return "mmpose"
        if isinstance(first, dict) and "keypoint_scores" in first:
            return "mmpose"
        if isinstance(first, (list, dict)) and _mediapipe_frame(first):
            return "mediapipe"
    return None


def _mediapipe_frame(frame: Any) -> bool:
    marks = frame.get("landmarks", frame.get("pose_landmarks")) if isinstance(frame, dict) else frame
    return isinstance(marks, list) and len(marks) == 33 and isinstance(marks[0], dict) and "x" in marks[0]


# ----------------------------------------------------------------------------- one person's track
@dataclass
class Track:
    """One person's keypoints over every frame, in the file's layout; NaN where missing."""

    keypoints: np.ndarray  # (F, K, 3)
    missing: np.ndarray  # (F,) bool
    track: Optional[int]
    people_max: int  # the most people any frame held


def pick_person(det: Detections, track: Optional[int] = None) -> Track:
    """One person per frame: the one with track id `track` when given; else, in a file with track
    ids, the track whose boxes are largest on average (a person, followed through the file); in a
    file without them, the largest box of each frame (VideoPose3D's in-the-wild rule)."""
    joints = next(len(p.keypoints) for f in det.frames for p in f)
    ids = sorted({p.track for f in det.frames for p in f if p.track is not None})
    if track is not None and track not in ids:
        raise DataError(f"no person with track id {track} (the file's track ids: "
                        + (", ".join(map(str, ids)) if ids else "none, it holds no track ids") + ")")
    if track is None and ids:
        areas: dict[int, list[float]] = {}
        for people in det.frames:
            for p in people:
                if p.track is not None:
                    areas.setdefault(p.track, []).append(p.area())
        track = max(ids, key=lambda t: float(np.mean(areas[t])))
    out = np.full((len(det.frames), joints, 3), np.nan)
    for i, people in enumerate(det.frames):
        chosen = [p for p in people if p.track == track] if track is not None else people
        if chosen:
            out[i] = max(chosen, key=Person.area).keypoints
    missing = np.isnan(out).any(axis=(1, 2))
    if missing.all():
        raise DataError("no person in any frame" + (f" with track id {track}" if track is not None else ""))
    return Track(out, missing, track, max((len(f) for f in det.frames), default=0))


def interpolate_missing(kp: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Fill missing frames of (F, K, 3) by linear interpolation of x and y per joint (the nearest
    seen frame before the first or after the last); their scores are 0."""
    out = kp.copy()
    seen = np.flatnonzero(~missing)
    gaps = np.flatnonzero(missing)
    if gaps.size:
        for c in range(2):
            for j in range(kp.shape[1]):
                out[gaps, j, c] = np.interp(gaps, seen, kp[seen, j, c])
        out[gaps, :, 2] = 0.0
    return out


def to_h36m(kp: np.ndarray, layout: str) -> np.ndarray:
    """(F, K, 3) in `layout` -> (F, 17, 3) H36M joints (through COCO-17 unless already H36M)."""
    if layout == "h36m17":
        return kp.astype(np.float32)
    return coco_to_h36m(kp[:, list(LAYOUT_TO_COCO[layout]), :])


@dataclass
class DetectorInput:
    """A detector file read for lifting: the track in H36M order and what reading it did."""

    track: KeypointInput
    format: str
    layout: str
    frames: int
    interpolated: int  # frames where the chosen person was missing
    people_max: int
    chosen_track: Optional[int]  # the track id lifted, None in a file without track ids


def load_detections(path: str | Path, fmt: Optional[str] = None, track: Optional[int] = None,
                    width: Optional[float] = None, height: Optional[float] = None,
                    video: Optional[str] = None) -> DetectorInput:
    """Read a detector's file (`fmt`, or detected from the file), keep one person, map to H36M-17.
    The image size comes from `width`/`height`, else the file; one of them must give it. `video`
    picks one video of a VideoPose3D file holding several."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: keypoint file not found")
    if fmt is None:
        fmt = detect_format(p)
        if fmt is None:
            raise DataError(f"{p}: cannot tell which detector wrote this file; give --format "
                            f"({', '.join(FORMATS)})")
    if fmt not in READERS:
        raise DataError(f"unknown keypoint format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if fmt == "mediapipe":
        det = read_mediapipe(p, width, height)
    elif fmt == "videopose3d":
        det = read_videopose3d(p, video)
    else:
        det = READERS[fmt](p)
    return one_person(det, str(p), fmt, track, width, height)


def one_person(det: Detections, source: str, fmt: str, track: Optional[int] = None,
               width: Optional[float] = None, height: Optional[float] = None) -> DetectorInput:
    """`det`'s chosen person (`pick_person`), gaps interpolated, in H36M-17; errors name `source`."""
    try:
        chosen = pick_person(det, track)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    kp = interpolate_missing(chosen.keypoints, chosen.missing)
    h36m = to_h36m(kp, det.layout)
    w = width if width is not None else det.width
    h = height if height is not None else det.height
    if w is None or h is None:
        raise DataError(f"{source}: image size unknown: give --width and --height (the file has no frame size)")
    if float(w) <= 0 or float(h) <= 0:
        raise DataError(f"{source}: image size must be positive, got width={w} height={h}")
    return DetectorInput(
        track=KeypointInput(np.ascontiguousarray(h36m[..., :2]), np.ascontiguousarray(h36m[..., 2]),
                            float(w), float(h), det.layout, source, None),
        format=fmt, layout=det.layout, frames=len(det.frames), interpolated=int(chosen.missing.sum()),
        people_max=chosen.people_max, chosen_track=chosen.track)
