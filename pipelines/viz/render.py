"""Rendering: skeleton animations (GIF / MP4) and static plots, matplotlib Agg only (no display).

Animations reuse one figure and only move its line artists each frame (no re-plotting), then
grab the Agg buffer: a 3-panel 640-pixel-wide frame renders in tens of milliseconds.

Colours follow the usual lifting demos: left limbs blue, right limbs red, the spine/head dark grey
(a bone takes the side of its child joint, from the skeleton's own left/right lists).
3D poses are camera-space (x right, y down, z forward); they are drawn with x to the right, z into
the picture and -y up, so a standing person stands upright.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from preprocessing.errors import DataError
from preprocessing.skeleton import Skeleton
from preprocessing.store.storage import atomic_local_file, write_local_atomic

SIDE_COLOURS = {"left": "#1f77b4", "right": "#d62728", "centre": "#333333"}
DPI = 80


@dataclass
class Panel:
    """One subplot of an animation: 2D keypoints (pixels) or 3D joints (metres), (F, J, 2|3).
    A 2D panel with `background` (frame index -> (H, W, 3) image) draws the skeleton over the
    whole video frame instead of following the person. `frame_size` is the (width, height) of the
    image the keypoints are measured in: the video frame is stretched onto it, so keypoints from a
    full-resolution detection land on the person in a smaller (or larger) copy of the video.
    None: the video's own size."""

    title: str
    poses: np.ndarray
    kind: str  # "2d" | "3d"
    background: Optional[Callable[[int], np.ndarray]] = None
    frame_size: Optional[tuple[float, float]] = None


class VideoFrames:
    """Frame `i` of a video, decoded in one forward pass (an animation asks in increasing order)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from preprocessing.sources.video_pose import decode_frames

        self.path = path
        self._frames = decode_frames(path)
        self._index, self._current = -1, None

    def __call__(self, i: int) -> np.ndarray:
        if i < self._index:
            raise ValueError(f"frame {i} requested after frame {self._index}: frames must come in order")
        while self._index < i:
            nxt = next(self._frames, None)
            if nxt is None:
                raise DataError(f"{self.path}: the video ends at frame {self._index + 1}, the poses need frame {i + 1}")
            self._index, self._current = self._index + 1, nxt
        return self._current


def bone_colours(skeleton: Skeleton) -> list[str]:
    return [SIDE_COLOURS[skeleton.side(child)] for _, child in skeleton.bones()]


def _camera_to_plot(p: np.ndarray) -> np.ndarray:
    """Camera (x right, y down, z forward) -> plot (x right, depth, up)."""
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


class SkeletonAnimator:
    """A figure with one panel per `Panel`, redrawn frame by frame by moving its line artists."""

    def __init__(self, panels: Sequence[Panel], skeleton: Skeleton, panel_inches: float = 3.0) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not panels:
            raise ValueError("an animation needs at least one panel")
        self.frames = int(panels[0].poses.shape[0])
        for p in panels:
            if p.poses.shape[0] != self.frames or p.poses.shape[1] != skeleton.num_joints:
                raise DataError(f"panel {p.title!r}: poses {p.poses.shape} do not match "
                                f"{self.frames} frames x {skeleton.num_joints} joints")
        self.skeleton = skeleton
        self.bones = skeleton.bones()
        self.figure = Figure(figsize=(panel_inches * len(panels), panel_inches + 0.3), dpi=DPI)
        self.canvas = FigureCanvasAgg(self.figure)
        self.title = self.figure.suptitle("", fontsize=9)
        colours = bone_colours(skeleton)
        in_3d = [p.poses for p in panels if p.kind == "3d"]
        radius = max([float(np.abs(p).max()) * 1.05 for p in in_3d] + [1e-3])
        self._updates = []
        for i, panel in enumerate(panels):
            if panel.kind == "2d":
                self._updates.append(self._add_2d(i, len(panels), panel, colours))
            else:
                self._updates.append(self._add_3d(i, len(panels), panel, colours, radius))
        self.figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.1)

    def _add_2d(self, i: int, n: int, panel: Panel, colours: list[str]):
        """2D panel following the person: centred on each frame's bounding box, one fixed scale."""
        ax = self.figure.add_subplot(1, n, i + 1)
        pts = panel.poses
        lo, hi = pts.min(axis=1), pts.max(axis=1)  # (F, 2) per-frame bounding boxes
        centres = (lo + hi) / 2
        half = max(float((hi - lo).max()) / 2 * 1.15, 1e-6)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(panel.title, fontsize=9)
        image = None
        if panel.background is not None:
            first = panel.background(0)
            width, height = panel.frame_size or (first.shape[1], first.shape[0])
            image = ax.imshow(first, extent=(0, width, height, 0), interpolation="bilinear")
        lines = [ax.plot([], [], color=c, lw=2)[0] for c in colours]

        def update(f: int) -> None:
            p = pts[f]
            if image is not None:  # the whole frame, the skeleton where the detector put it
                image.set_data(panel.background(f))
            else:
                cx, cy = centres[f]
                ax.set_xlim(cx - half, cx + half)
                ax.set_ylim(cy + half, cy - half)  # image y points down
            for line, (a, b) in zip(lines, self.bones):
                line.set_data([p[a, 0], p[b, 0]], [p[a, 1], p[b, 1]])

        return update

    def _add_3d(self, i: int, n: int, panel: Panel, colours: list[str], radius: float):
        """3D panel around the root, with the same scale for every 3D panel (prediction vs truth)."""
        ax = self.figure.add_subplot(1, n, i + 1, projection="3d")
        pts = _camera_to_plot(panel.poses)
        ax.set_xlim(-radius, radius)
        ax.set_ylim(-radius, radius)
        ax.set_zlim(-radius, radius)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=15.0, azim=-70.0)
        # Few grid lines (a depth cue) and no tick labels: tick drawing dominates 3D render time.
        ticks = [-radius / 2, 0.0, radius / 2]
        ax.set_xticks(ticks, labels=[])
        ax.set_yticks(ticks, labels=[])
        ax.set_zticks(ticks, labels=[])
        ax.set_title(panel.title, fontsize=9)
        lines = [ax.plot([], [], [], color=c, lw=2)[0] for c in colours]

        def update(f: int) -> None:
            p = pts[f]
            for line, (a, b) in zip(lines, self.bones):
                line.set_data_3d([p[a, 0], p[b, 0]], [p[a, 1], p[b, 1]], [p[a, 2], p[b, 2]])

        return update

    def render(self, frame: int, label: str = "") -> np.ndarray:
        """(H, W, 3) uint8 image of `frame`."""
        for update in self._updates:
            update(frame)
        self.title.set_text(label or f"frame {frame + 1}/{self.frames}")
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def iter_frames(animator: SkeletonAnimator, frames: Sequence[int]) -> Iterator[np.ndarray]:
    """Render the given frame indices (the label counts source frames, so no two GIF frames match)."""
    for f in frames:
        yield animator.render(f, f"frame {f + 1}/{animator.frames}")


def write_animation(images: Iterator[np.ndarray], path: str | os.PathLike, fps: float) -> int:
    """Write frames to `path` (.gif via Pillow, .mp4 via PyAV) atomically; returns frames written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise DataError(f"{path}: unsupported animation type {suffix!r} (expected .gif or .mp4)")
    if fps <= 0:
        raise DataError(f"--fps must be > 0, got {fps}")
    with atomic_local_file(path) as tmp:
        return _write_gif(images, str(tmp), fps) if suffix == ".gif" else _write_mp4(images, str(tmp), fps)


def _write_gif(images: Iterator[np.ndarray], path: str, fps: float) -> int:
    from PIL import Image

    frames = [Image.fromarray(img).quantize(colors=64, method=Image.Quantize.FASTOCTREE) for img in images]
    if not frames:
        raise DataError("no frames to write")
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                   duration=max(int(round(1000.0 / fps)), 20), loop=0, disposal=1)
    return len(frames)


def _write_mp4(images: Iterator[np.ndarray], path: str, fps: float) -> int:
    """H.264 through PyAV (`preprocessing.images.render.write_video`), odd sizes padded by one pixel."""
    from preprocessing.images.render import write_video

    count = 0

    def even(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal count
        for img in frames:
            count += 1
            yield np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0)), mode="edge")

    write_video(path, even(images), fps)
    if count == 0:
        raise DataError("no frames to write")
    return count


# --- static plots -----------------------------------------------------------------------------


def new_figure(width: float, height: float):
    """A standalone Agg figure (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_local_atomic(path, buf.getvalue())
