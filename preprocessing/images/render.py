"""Synthetic person images: a 17-joint skeleton rendered through a real camera, in numpy.

Why: the embedded default of the image-to-2D pipeline needs images whose labels are exact and
whose difficulty is real (self-occlusion, clutter, blur), without licensed video.

- Limbs are shaded solid capsules (cylinder shading across the limb, a distinct colour per limb,
  left and right different so a mirrored image is a different image).
- Painter's order: limbs are drawn far to near by their mean camera depth, so a near limb hides a
  far one and joints really occlude.
- Backgrounds: per sequence, a random mix of two oriented gratings, a checkerboard and a base
  colour, defined in full-image pixel coordinates (crops of one frame agree) and drifting with the
  frame index (they vary over time).
- Optional occluders (after Sarandi et al., "How robust is 3D human pose estimation to occlusion?",
  IROS-W 2018, which pastes random objects over training images): with probability
  `occluder_prob`, an image gets one textured ellipse centred near a random joint, its radii
  `occluder_size` x the person's keypoint-box side. Independent per image (seeded by sequence and
  frame), so a joint hidden in one frame or camera is usually visible in its neighbours: what the
  image-relations module of MPSTR is built to use. Defined in full-image pixels, so a crop and the
  whole frame show the same occluder.
- Optional Gaussian blur and pixel noise.
Rendering happens on a `PixelGrid`: any axis-aligned window of the full image at any scale, so a
64 px crop is rendered directly (cheap) and a whole frame (for MP4 files) the same way.
`write_video` encodes frames with PyAV (H.264), in Human3.6M's `<subject>/Videos/<action>.<camera>.mp4`
layout when used through `video_path`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.cameras import project_to_2d
from preprocessing.skeleton import H36M17

# Capsule radius (metres) of the bone ending at each H36M-17 joint (index = child joint).
BONE_RADIUS = np.array([
    0.0, 0.075, 0.06, 0.05, 0.075, 0.06, 0.05, 0.11, 0.11, 0.05, 0.10, 0.06, 0.045, 0.04, 0.06, 0.045, 0.04,
])
# One RGB colour per bone (by child joint): evenly spaced hues, left and right sides apart.
_HUES = np.linspace(0.0, 1.0, 17, endpoint=False)[[0, 1, 5, 9, 2, 6, 10, 13, 15, 3, 7, 11, 14, 16, 4, 8, 12]]


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)  # (n, 3) in [0, 1]


BONE_COLOURS = _hsv_to_rgb(_HUES, 0.75, 0.95) * 255.0  # (17, 3)


@dataclass(frozen=True)
class PixelGrid:
    """A `width` x `height` pixel window onto a full image: output pixel (u, v) covers full-image
    coordinates [x0 + u / scale, x0 + (u + 1) / scale) (same for y)."""

    x0: float
    y0: float
    scale: float
    width: int
    height: int

    def to_grid(self, points: np.ndarray) -> np.ndarray:
        """Full-image pixels (..., 2) -> grid pixels (..., 2) (pixel centres at k + 0.5)."""
        return (np.asarray(points, dtype=np.float64) - [self.x0, self.y0]) * self.scale


def sequence_seed(*parts: object) -> int:
    """A stable 64-bit seed from names and numbers (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class Background:
    """Random texture parameters of one sequence (see module doc)."""

    base: np.ndarray  # (3,)
    colours: np.ndarray  # (3, 3): grating 1, grating 2, checker
    freqs: np.ndarray  # (2,) cycles per full-image pixel
    angles: np.ndarray  # (2,)
    checker: float  # checker cell size in full-image pixels
    drift: np.ndarray  # (2,) phase change per frame

    @classmethod
    def random(cls, seed: int) -> "Background":
        rng = np.random.default_rng(seed)
        return cls(
            base=rng.uniform(40, 200, 3), colours=rng.uniform(-60, 60, (3, 3)),
            freqs=rng.uniform(0.004, 0.03, 2), angles=rng.uniform(0, np.pi, 2),
            checker=float(rng.uniform(30, 160)), drift=rng.uniform(-0.2, 0.2, 2),
        )

    def render(self, grid: PixelGrid, frame: int) -> np.ndarray:
        """(H, W, 3) float32 in [0, 255]."""
        x = grid.x0 + (np.arange(grid.width) + 0.5) / grid.scale  # (W,)
        y = grid.y0 + (np.arange(grid.height) + 0.5) / grid.scale  # (H,)
        xx, yy = np.meshgrid(x, y)  # (H, W)
        out = np.broadcast_to(self.base, xx.shape + (3,)).astype(np.float32)
        for i in range(2):
            along = xx * np.cos(self.angles[i]) + yy * np.sin(self.angles[i])
            wave = np.sin(2 * np.pi * self.freqs[i] * along + self.drift[i] * frame)
            out = out + wave[..., None] * self.colours[i]
        cells = (np.floor(xx / self.checker) + np.floor(yy / self.checker)) % 2
        out = out + (cells - 0.5)[..., None] * self.colours[2]
        return np.clip(out, 0, 255).astype(np.float32)


def draw_skeleton(image: np.ndarray, joints_cam: np.ndarray, intrinsics: np.ndarray, grid: PixelGrid,
                  parents: tuple[int, ...] = H36M17.parents) -> np.ndarray:
    """Draw the limbs of one person onto `image` (H, W, 3) float32, in place and returned.

    joints_cam: (J, 3) camera-space metres (z forward). Bones are drawn far to near (painter's
    order by the mean depth of their two joints). Inside a capsule of projected radius r at
    distance d from the bone's axis, the colour is scaled by 0.35 + 0.65 * sqrt(1 - (d / r)^2),
    the shading of a lit cylinder.
    """
    joints_cam = np.asarray(joints_cam, dtype=np.float64)
    uv = grid.to_grid(project_to_2d(joints_cam, intrinsics))  # (J, 2)
    focal = float(np.mean(np.asarray(intrinsics, dtype=np.float64)[:2])) * grid.scale
    bones = [j for j, p in enumerate(parents) if p >= 0]
    depth = {j: 0.5 * (joints_cam[j, 2] + joints_cam[parents[j], 2]) for j in bones}
    height, width = image.shape[:2]
    for j in sorted(bones, key=lambda b: -depth[b]):
        if depth[j] <= 0.05:
            continue  # behind (or at) the camera
        a, b = uv[parents[j]], uv[j]
        r = max(BONE_RADIUS[j] * focal / depth[j], 0.75)
        lo = np.floor(np.minimum(a, b) - r).astype(int)
        hi = np.ceil(np.maximum(a, b) + r).astype(int)
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], width), min(hi[1], height)
        if x1 <= x0 or y1 <= y0:
            continue
        px = np.arange(x0, x1) + 0.5
        py = np.arange(y0, y1) + 0.5
        qx, qy = np.meshgrid(px, py)  # (h, w)
        ab = b - a
        t = np.clip(((qx - a[0]) * ab[0] + (qy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        d2 = (qx - a[0] - t * ab[0]) ** 2 + (qy - a[1] - t * ab[1]) ** 2
        inside = d2 < r * r
        shade = 0.35 + 0.65 * np.sqrt(np.clip(1.0 - d2 / (r * r), 0.0, 1.0))
        patch = image[y0:y1, x0:x1]
        patch[inside] = (shade[inside, None] * BONE_COLOURS[j]).astype(np.float32)
    return image


@dataclass(frozen=True)
class Occluder:
    """One occluding object: a textured (striped) ellipse in full-image pixels (see module doc)."""

    centre: np.ndarray  # (2,) full-image pixels
    radii: np.ndarray  # (2,) semi-axes, full-image pixels
    angle: float  # rotation of the first semi-axis, radians
    colours: np.ndarray  # (2, 3): base colour and stripe colour offset
    stripe: float  # stripe frequency, cycles per semi-axis

    @classmethod
    def random(cls, rng: np.random.Generator, keypoints: np.ndarray, size: float) -> "Occluder":
        """An occluder near a random joint of `keypoints` (J, 2) full-image pixels, its radii
        `size` x (0.6..1.2) x the keypoint box's longer side."""
        keypoints = np.asarray(keypoints, dtype=np.float64)
        side = float(max(np.ptp(keypoints, axis=0).max(), 1.0))
        joint = keypoints[rng.integers(len(keypoints))]
        return cls(
            centre=joint + rng.uniform(-0.5, 0.5, 2) * size * side,
            radii=size * side * rng.uniform(0.6, 1.2, 2), angle=float(rng.uniform(0, np.pi)),
            colours=np.stack([rng.uniform(30, 225, 3), rng.uniform(-50, 50, 3)]), stripe=float(rng.uniform(0.5, 3.0)),
        )

    def draw(self, image: np.ndarray, grid: PixelGrid) -> np.ndarray:
        """Paint onto `image` (H, W, 3) float32 on `grid`, in place and returned."""
        height, width = image.shape[:2]
        reach = float(self.radii.max())
        lo = np.floor(grid.to_grid(self.centre - reach)).astype(int)
        hi = np.ceil(grid.to_grid(self.centre + reach)).astype(int)
        x0, y0, x1, y1 = max(lo[0], 0), max(lo[1], 0), min(hi[0], width), min(hi[1], height)
        if x1 <= x0 or y1 <= y0:
            return image
        qx, qy = np.meshgrid(grid.x0 + (np.arange(x0, x1) + 0.5) / grid.scale,
                             grid.y0 + (np.arange(y0, y1) + 0.5) / grid.scale)  # full-image pixels (h, w)
        dx, dy = qx - self.centre[0], qy - self.centre[1]
        c, s = np.cos(self.angle), np.sin(self.angle)
        a, b = (dx * c + dy * s) / self.radii[0], (-dx * s + dy * c) / self.radii[1]  # ellipse coordinates
        inside = a * a + b * b < 1.0
        colour = self.colours[0] + np.sin(2 * np.pi * self.stripe * a)[..., None] * self.colours[1]  # (h, w, 3)
        patch = image[y0:y1, x0:x1]
        patch[inside] = np.clip(colour[inside], 0, 255).astype(np.float32)
        return image


def render_frame(joints_cam: np.ndarray, intrinsics: np.ndarray, grid: PixelGrid, background: Background,
                 frame: int, blur_px: float = 0.0, noise_std: float = 0.0, seed: int = 0,
                 occluder_prob: float = 0.0, occluder_size: float = 0.25) -> np.ndarray:
    """One rendered image on `grid`: background, skeleton, an occluder with probability
    `occluder_prob`, optional blur then noise. (H, W, 3) uint8."""
    image = background.render(grid, frame)
    draw_skeleton(image, joints_cam, intrinsics, grid)
    if occluder_prob > 0:
        rng = np.random.default_rng(sequence_seed(seed, frame, "occluder"))
        if rng.random() < occluder_prob:
            keypoints = project_to_2d(np.asarray(joints_cam, dtype=np.float64), intrinsics)  # (J, 2) full image
            Occluder.random(rng, keypoints, occluder_size).draw(image, grid)
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if blur_px > 0:
        from PIL import Image, ImageFilter

        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur_px)))
    if noise_std > 0:
        rng = np.random.default_rng(sequence_seed(seed, frame, "noise"))
        out = np.clip(out + rng.normal(0.0, noise_std, out.shape) + 0.5, 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- video files


def video_path(root: str | os.PathLike, subject: str, action: str, camera: str) -> Path:
    """Human3.6M's layout: `<root>/<subject>/Videos/<action>.<camera id>.mp4`."""
    return Path(root) / subject / "Videos" / f"{action}.{camera}.mp4"


def write_video(path: str | os.PathLike, frames, fps: float, crf: int = 18) -> Path:
    """Encode an iterable of (H, W, 3) uint8 frames (H, W even) as H.264 MP4 with PyAV. Written to
    a temporary name beside `path` and renamed, so a half-written video never has the real name."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = None
            for frame in frames:
                if stream is None:
                    stream = container.add_stream("libx264", rate=int(round(fps)))
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                    stream.thread_count = 1
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
