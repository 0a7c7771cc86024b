"""Image sources: which frames of which cameras to crop, with their labels, and how to get pixels.

`load_image_sequences(data)` turns `data.source` (kinds `synthetic_images`, `h36m_video`,
`frames`) into `ImageSequence`s: one per (split, subject, action), its V cameras synchronised by
frame index, its 2D labels in full-image pixels (N, V, J, 2), and where each view's pixels come
from. Everything is checked here, on the driver, before any Ray task runs:
- a (subject, action) without a video / frame folder for every camera: DataError naming the
  missing file (`images.on_missing: error`), or listed in `skipped` (`skip`), never dropped silently;
- a video or folder with fewer frames than the labels, or a frame folder with a gap: frames out
  of sync, DataError naming the file and the first missing frame;
- `images.boxes: file`: the 2D file the boxes of `images.boxes_splits` are cut around
  (`boxes_file`) must hold every (subject, action, camera) of those splits, with at least the
  labels' frames (longer is trimmed at the tail, as the labels are) and a finite point in every
  frame: else a DataError naming the file, sequence, camera and frame or counts.
`frames_of(seq, view, start, stop)` yields the decoded frames in a task: PyAV for videos (any
decode error names the file and frame), Pillow for frame folders, the renderer for synthetic.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from preprocessing.cameras import image_coordinates
from preprocessing.config import DataConfig
from preprocessing.errors import DataError
from preprocessing.images.render import Background, video_path
from preprocessing.sequences import Sequence
from preprocessing.skeleton import H36M17, Skeleton

FRAME_FILE = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)


@dataclass
class ImageSequence:
    """One (split, subject, action) seen by V synchronised cameras."""

    split: str
    subject: str
    action: str
    activity: str
    cameras: list[str]  # V camera ids, in the source's camera order
    keypoints: np.ndarray  # (N, V, J, 2) float64, pixels of the camera's full resolution
    image_sizes: np.ndarray  # (V, 2) int: the cameras' (width, height) the labels refer to
    files: list[str] = field(default_factory=list)  # per view: video file or frame folder ("" synthetic)
    frame_files: list[dict[int, str]] = field(default_factory=list)  # frames: per view, frame -> file
    joints_cam: Optional[np.ndarray] = None  # synthetic: (N, V, J, 3) camera-space metres
    intrinsics: Optional[np.ndarray] = None  # synthetic: (V, 9)
    # images.boxes: file, a split in boxes_splits: (N, V, J, 2) the points the crop boxes are cut
    # around, in the pixels of `keypoints` (NaN: a point the detector missed); None: around the labels
    boxes_2d: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])

    def name(self, view: int) -> str:
        return f"{self.subject}/{self.action}/camera {self.cameras[view]}"


@dataclass
class ImageSourceData:
    sequences: list[ImageSequence]
    skeleton: Skeleton
    files: list[str]  # every input file whose content defines the dataset (hashed for the id)
    cameras: list[str]
    skipped: list[str]  # "subject/action: reason" for groups left out under on_missing=skip
    boxes_file: str = ""  # images.boxes: file: the 2D file the boxes are cut around (also in `files`)


def _keypoint_sequences(data: DataConfig) -> tuple[list[Sequence], list[str]]:
    """The labelled sequences of an image source, `source.val_subjects` moved to the "val" split."""
    from preprocessing.sources.videopose3d import load_generic, load_h36m
    from preprocessing.sources import hold_out, load_synthetic

    source = data.source
    if source.kind == "synthetic_images" and not source.data_3d:
        sequences, files = load_synthetic(source, gt_2d=True)  # the renders show the true pose
    elif source.kind == "synthetic_images":
        sequences, files = load_generic(source)
    else:
        sequences, files = load_h36m(source)
    if source.val_subjects:
        sequences = hold_out(sequences, source.val_subjects, files[0])
    return sequences, files


def _groups(sequences: list[Sequence], views: int) -> tuple[list[str], dict[tuple, dict[str, Sequence]]]:
    order = sorted({(s.camera_index, s.camera) for s in sequences})
    cameras = [c for _, c in order]
    if len(cameras) < views:
        raise DataError(f"images.views = {views}, but the source has {len(cameras)} cameras ({', '.join(cameras)})")
    groups: dict[tuple, dict[str, Sequence]] = {}
    for s in sorted(sequences, key=lambda s: (s.split != "train", s.subject, s.action, s.camera_index)):
        groups.setdefault((s.split, s.subject, s.action), {})[s.camera] = s
    return cameras[:views], groups


def boxes_file(data: DataConfig) -> str:
    """The 2D file crop boxes are cut around (`images.boxes: file`; see `ImagesConfig`), as an
    absolute path; "" for ground-truth boxes. DataError naming the key when there is none."""
    images, source = data.images, data.source
    if images.boxes == "gt":
        return ""
    if images.boxes_2d:
        path = Path(images.boxes_2d).resolve()
        if not path.is_file():
            raise DataError(f"data.images.boxes_2d: file not found: {path}")
        return str(path)
    if source.kind != "synthetic_images" or source.data_3d:
        raise DataError("data.images.boxes is file but data.images.boxes_2d is empty: name a VideoPose3D-format "
                        "2D file (only the embedded synthetic_images source has one of its own)")
    if source.synthetic.noise_px <= 0:
        raise DataError("data.source.synthetic.noise_px is 0: data.images.boxes: file without boxes_2d cuts the "
                        "boxes around the synthetic detector-like 2D, which needs noise_px > 0")
    from preprocessing.sources.synthetic import ensure_synthetic

    return ensure_synthetic(source.synthetic).data_2d


def _box_points(positions: dict, path: str, seq: ImageSequence, camera_index: dict[str, int]) -> np.ndarray:
    """(N, V, J, 2) points of `seq` from `positions`, the `positions_2d` of the 2D file at `path`
    (longer sequences are trimmed at the tail like the labels); DataError naming the file,
    sequence, camera and the frame counts or the first frame without a finite point."""
    where = f"{path}: {seq.subject}/{seq.action}"
    views = positions.get(seq.subject, {}).get(seq.action)
    if views is None:
        raise DataError(f"{where}: no 2D for this sequence (images.boxes: file crops the "
                        f"{seq.split} split around this file)")
    n, joints = seq.num_frames, seq.keypoints.shape[2]
    points = []
    for cam in seq.cameras:
        index = camera_index[cam]
        view = views[index] if isinstance(views, (list, tuple)) and index < len(views) else None
        if not isinstance(view, np.ndarray) or view.ndim != 3 or view.shape[1:] != (joints, 2):
            shape = getattr(view, "shape", type(view).__name__)
            raise DataError(f"{where} camera {cam} (index {index}): expected an array [frames, {joints}, 2], got {shape}")
        if len(view) < n:
            raise DataError(f"{where} camera {cam}: frames out of sync: the 2D file has {len(view)} frames, "
                            f"the labels {n}")
        view = view[:n].astype(np.float64)
        empty = np.flatnonzero(~np.isfinite(view).all(axis=-1).any(axis=-1))
        if len(empty):
            raise DataError(f"{where} camera {cam} frame {empty[0]}: no finite 2D point to cut a crop box around "
                            f"({len(empty)} such frames)")
        points.append(view)
    return np.stack(points, axis=1)


def _frame_folder(folder: Path) -> dict[int, str]:
    out = {}
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = FRAME_FILE.match(entry.name)
        if m:
            out[int(m.group(1))] = str(entry)
    return out


def _video_frame_count(path: str) -> int:
    """Frames in a video from its container metadata (0 if unknown); DataError if unreadable."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            return int(container.streams.video[0].frames or 0)
    except av.FFmpegError as e:
        raise DataError(f"{path}: cannot open video ({e})") from None


def load_image_sequences(data: DataConfig) -> ImageSourceData:
    """See module doc. Raises DataError naming the file and frame on any inconsistency."""
    source, images = data.source, data.images
    sequences, label_files = _keypoint_sequences(data)
    cameras, groups = _groups(sequences, images.views)
    out, skipped, files = [], [], list(label_files)
    for (split, subject, action), by_camera in groups.items():
        missing_labels = [c for c in cameras if c not in by_camera]
        views = [by_camera[c] for c in cameras if c in by_camera]
        n = min(v.num_frames for v in views)
        seq = ImageSequence(
            split=split, subject=subject, action=action, activity=views[0].activity, cameras=list(cameras),
            keypoints=np.zeros((0,)), image_sizes=np.array([v.image_size for v in views], dtype=np.int64),
        )
        problem = f"{subject}/{action}: no 2D labels for camera(s) {', '.join(missing_labels)}" if missing_labels else ""
        if not problem and source.kind == "h36m_video":
            for cam in cameras:
                path = video_path(source.videos, subject, action, cam)
                if not path.is_file():
                    problem = f"{path}: missing camera {cam} of {subject}/{action} (expected <videos>/<subject>/Videos/<action>.<camera>.mp4)"
                    break
                count = _video_frame_count(str(path))
                if 0 < count < n:
                    raise DataError(f"{path}: frames out of sync: the video has {count} frames, the 2D labels "
                                    f"{n} (frame {count} is missing)")
                seq.files.append(str(path))
        elif not problem and source.kind == "frames":
            for cam in cameras:
                folder = Path(source.frames_dir) / subject / f"{action}.{cam}"
                frames = _frame_folder(folder)
                if not frames:
                    problem = f"{folder}: missing camera {cam} of {subject}/{action} (no <frame>.jpg/.png files)"
                    break
                first = min(frames)
                gap = next((first + k for k in range(n) if first + k not in frames), None)
                if gap is not None:
                    raise DataError(f"{folder}: frames out of sync: frame {gap} is missing "
                                    f"({len(frames)} files from {first}, the 2D labels have {n} frames)")
                seq.files.append(str(folder))
                seq.frame_files.append({k: frames[first + k] for k in range(n)})
        if problem:
            if images.on_missing == "error":
                raise DataError(problem + " (set data.images.on_missing: skip to leave such sequences out)")
            skipped.append(problem)
            continue
        seq.keypoints = np.stack([image_coordinates(v.keypoints_2d[:n], *v.image_size) for v in views], axis=1)
        if source.kind == "synthetic_images":
            # positions are root-relative with the root zeroed: adding the root trajectory gives
            # every joint (the root included) in camera space.
            seq.joints_cam = np.stack([v.positions_3d[:n] + v.trajectory[:n, None] for v in views], axis=1).astype(np.float64)
            seq.intrinsics = np.stack([v.intrinsics for v in views]).astype(np.float64)
        out.append(seq)
    if not out:
        raise DataError(f"{data.source.kind} source: no sequence has all {len(cameras)} cameras ({'; '.join(skipped[:3])})")
    boxes_path = boxes_file(data)
    if boxes_path:
        files.append(boxes_path)  # its content is part of the dataset id
        _attach_box_points(out, boxes_path, images.boxes_splits, {s.camera: s.camera_index for s in sequences})
    for seq in out:
        files.extend(seq.files if data.source.kind == "h36m_video" else [f for d in seq.frame_files for f in d.values()])
    return ImageSourceData(out, H36M17, files, cameras, skipped, boxes_path)


def _attach_box_points(sequences: list[ImageSequence], path: str, splits: list[str],
                       camera_index: dict[str, int]) -> None:
    """Set `boxes_2d` of the sequences of `splits` from the 2D file at `path` (read once)."""
    from preprocessing.sources.videopose3d import read_positions_2d

    wanted = [s for s in sequences if s.split in splits]
    if wanted:
        positions = read_positions_2d(path)
        for seq in wanted:
            seq.boxes_2d = _box_points(positions, path, seq, camera_index)


# ----------------------------------------------------------------------------- pixels, in tasks


def video_frames(path: str, start: int, stop: int) -> Iterator[np.ndarray]:
    import av

    index = -1
    try:
        with av.open(path) as container:
            for index, frame in decode_from(container, container.streams.video[0], start):
                if index >= stop:
                    return
                if index >= start:
                    yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise DataError(f"{path}: cannot decode frame {index + 1} ({e})") from None
    if index + 1 < stop:
        raise DataError(f"{path}: frames out of sync: the video ends after {index + 1} frames, frame {index + 1} is needed")


def decode_from(container, stream, start: int) -> Iterator[tuple[int, object]]:
    """(frame index, frame) pairs of `stream` from the keyframe at or before frame `start` on.

    A shard task needs a window from the middle of a long video (a Human3.6M take has up to ~5000
    frames), and decoding from frame 0 for every shard would make a video's cost quadratic in its
    shards. So the container seeks back to the keyframe before `start` and each frame's index is
    its timestamp times the frame rate (Human3.6M's videos are constant-rate). Where timestamps
    cannot give an exact index (no rate or start time, a frame without pts, or a seek that landed
    after `start`), it decodes from the first frame and counts, as a plain sequential read does."""
    from fractions import Fraction

    rate, base, offset = stream.average_rate, stream.time_base, stream.start_time
    if start > 0 and rate and base and offset is not None:
        per_frame = Fraction(1) / (Fraction(rate) * Fraction(base))  # pts ticks per frame
        container.seek(int(offset + start * per_frame), stream=stream, backward=True, any_frame=False)
        first = True
        for frame in container.decode(stream):
            index = None if frame.pts is None else round((frame.pts - offset) / per_frame)
            if index is None or (first and index > start):
                break  # cannot place this frame exactly: fall back to counting from frame 0
            first = False
            yield index, frame
        else:
            return
        if not first:  # frames were already yielded: a later pts gap is a broken stream, not a seek miss
            raise DataError(f"{container.name}: frame without a timestamp after frame {start}")
        container.seek(offset, stream=stream, backward=True, any_frame=False)
    yield from enumerate(container.decode(stream))


def _folder_frames(files: dict[int, str], start: int, stop: int, folder: str) -> Iterator[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    for k in range(start, stop):
        try:
            with Image.open(files[k]) as im:
                yield np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{files[k]}: cannot decode frame {k} of {folder} ({e})") from None


def frames_of(seq: ImageSequence, view: int, start: int, stop: int) -> Iterator[np.ndarray]:
    """Decoded full frames [start, stop) of one view, (H, W, 3) uint8 each (videos and folders)."""
    if seq.frame_files:
        return _folder_frames(seq.frame_files[view], start, stop, seq.files[view])
    return video_frames(seq.files[view], start, stop)


def background_of(seq: ImageSequence, view: int, seed: int) -> Background:
    from preprocessing.images.render import sequence_seed

    return Background.random(sequence_seed(seed, seq.subject, seq.action, seq.cameras[view]))


# ----------------------------------------------------------------------------- synthetic files


def render_full_frames(seq: ImageSequence, view: int, scale: float, seed: int, blur_px: float = 0.0,
                       noise_std: float = 0.0, occluder_prob: float = 0.0,
                       occluder_size: float = 0.25) -> Iterator[np.ndarray]:
    """Whole frames of a synthetic sequence at `scale` x the camera resolution (even sizes, for
    H.264), (H, W, 3) uint8 each. The occluders are those of the crops (same seeds)."""
    from preprocessing.images.render import PixelGrid, render_frame, sequence_seed

    w, h = seq.image_sizes[view]
    width, height = 2 * max(8, round(w * scale / 2)), 2 * max(8, round(h * scale / 2))
    grid = PixelGrid(0.0, 0.0, width / w, width, height)
    background = background_of(seq, view, seed)
    for k in range(seq.num_frames):
        yield render_frame(seq.joints_cam[k, view], seq.intrinsics[view], grid, background, k, blur_px, noise_std,
                           seed=sequence_seed(seed, seq.subject, seq.action, seq.cameras[view]),
                           occluder_prob=occluder_prob, occluder_size=occluder_size)


def write_synthetic_videos(data: DataConfig, out_root: str, scale: float = 0.2, frames_dir: bool = False) -> list[str]:
    """Render the `synthetic_images` source of `data` as Human3.6M-layout MP4 files
    (`<out_root>/<subject>/Videos/<action>.<camera>.mp4`) or, with `frames_dir`, as frame folders
    (`<out_root>/<subject>/<action>.<camera>/<frame:06d>.png`), so the real video and frame paths
    can be run on real files. The occluders of `data.images` are drawn into them (blur and noise,
    which are in crop pixels, are not). Returns the written paths."""
    from PIL import Image

    from preprocessing.images.render import write_video

    if data.source.kind != "synthetic_images":
        raise DataError(f"source.kind must be synthetic_images to render videos, got {data.source.kind!r}")
    written = []
    for seq in load_image_sequences(data).sequences:
        for v, cam in enumerate(seq.cameras):
            frames = render_full_frames(seq, v, scale, data.source.synthetic.seed,
                                        occluder_prob=data.images.occluder_prob, occluder_size=data.images.occluder_size)
            if frames_dir:
                folder = Path(out_root) / seq.subject / f"{seq.action}.{cam}"
                folder.mkdir(parents=True, exist_ok=True)
                for k, frame in enumerate(frames):
                    Image.fromarray(frame).save(folder / f"{k:06d}.png")
                written.append(str(folder))
            else:
                written.append(str(write_video(video_path(out_root, seq.subject, seq.action, cam), frames, data.source.synthetic.fps)))
    return written
