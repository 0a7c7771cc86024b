"""A user's video to 2D keypoints: PyAV decodes it, an ONNX RTMPose model the user gives finds the joints.

RTMPose (MMPose's real-time top-down model) exported to ONNX, as `rtmlib` and MMDeploy ship it,
takes person crops `input` (N, 3, H, W) (RGB, normalised with ImageNet's mean and std in 0-255
units) and returns SimCC vectors `simcc_x` (N, K, W * s) and `simcc_y` (N, K, H * s), `s` the split
ratio (2.0 for the released models): a keypoint lies at the argmax of each vector divided by `s`,
in crop pixels, with the smaller of the two maxima as its score (MMPose's `get_simcc_maximum`).

Crops are MMPose's top-down affine warps: a box, widened by 1.25 and padded to the model's aspect
ratio, mapped onto the model's input size. The boxes come from an ONNX person detector in
MMDeploy's end-to-end form (`dets` (1, N, 5) = x1, y1, x2, y2, score, and `labels` (1, N); RTMDet
and YOLOX export so), letterboxed to its input size; without one, the whole frame is the box (a
video of one person). The result is `detectors.Detections` (COCO-17 or COCO-WholeBody-133 by the
model's K), so one person is chosen and gaps are filled exactly as for a detector's file.

No model is downloaded: both files are the user's (`--pose-model`, `--det-model`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from preprocessing.errors import DataError
from preprocessing.sources.detectors import LAYOUT_BY_JOINTS, Detections, Person

MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BOX_PADDING = 1.25  # MMPose's top-down bbox padding
MIN_DET_SCORE = 0.3
PERSON_LABEL = 0


def decode_frames(path: str | Path, name: Optional[str] = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of the video's first video stream, in order (errors name `name`,
    else `path`)."""
    import av

    name = name or str(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{name}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise DataError(f"{name}: PyAV cannot decode this video ({e})") from None


def video_fps(path: str | Path) -> Optional[float]:
    """The video stream's average frame rate, None when the container does not say."""
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except av.FFmpegError as e:
        raise DataError(f"{path}: PyAV cannot decode this video ({e})") from None
    return float(rate) if rate else None


def _session(model: str | Path | bytes, name: str, what: str):
    """An ONNX Runtime session of a model file or its bytes (CUDA first where it is installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DataError("--pose-model needs onnxruntime (pip install 'raylift[export]')") from None
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise DataError(f"{name}: {what} not found")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise DataError(f"{name}: not an ONNX model ONNX Runtime can load ({str(e).splitlines()[0]})") from None


def affine_for_box(box: tuple[float, float, float, float], out_w: int, out_h: int) -> np.ndarray:
    """(2, 3) matrix mapping frame pixels to crop pixels for `box` (x1, y1, x2, y2), padded by
    BOX_PADDING and to the crop's aspect ratio, centred (MMPose's top-down affine)."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = out_w / out_h
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    scale = out_w / w
    return np.array([[scale, 0.0, out_w / 2 - scale * cx], [0.0, scale, out_h / 2 - scale * cy]], dtype=np.float64)


def warp(frame: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int, fill: float = 0.0) -> np.ndarray:
    """The crop of `frame` under `matrix` (frame -> crop), bilinear, `fill` outside the frame."""
    from PIL import Image

    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # crop -> frame, as PIL wants
    img = Image.fromarray(frame).transform((out_w, out_h), Image.Transform.AFFINE, inverse.reshape(-1).tolist(),
                                           resample=Image.Resampling.BILINEAR, fillcolor=(int(fill),) * 3)
    return np.asarray(img)


@dataclass
class OnnxImageModel:
    """An ONNX model (a file, or its bytes with a `name` for messages) with one image input of a
    fixed size (N, 3, H, W) and two outputs; `EXPECTED` says what a subclass's model must be."""

    model: str | bytes
    name: str = ""

    WHAT = "model"
    EXPECTED = ""

    def __post_init__(self) -> None:
        self.path = self.name or str(self.model)
        self.session = _session(self.model, self.path, self.WHAT)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]) or len(outputs) != 2:
            raise DataError(f"{self.path}: expected {self.EXPECTED}; got inputs {[i.shape for i in inputs]}, "
                            f"{len(outputs)} output(s)")
        self.input_name = inputs[0].name
        self.height, self.width = int(shape[2]), int(shape[3])


class PoseModel(OnnxImageModel):
    """An RTMPose-style ONNX model: crops in, SimCC vectors out."""

    WHAT = "pose model"
    EXPECTED = "an RTMPose-style model: one input (N, 3, H, W) with fixed H, W and two outputs (simcc_x, simcc_y)"

    def __call__(self, frame: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[np.ndarray]:
        """(K, 3) keypoints (x, y, score) in frame pixels for each box."""
        if not boxes:
            return []
        matrices = [affine_for_box(b, self.width, self.height) for b in boxes]
        crops = np.stack([warp(frame, m, self.width, self.height) for m in matrices]).astype(np.float32)
        batch = ((crops - MEAN) / STD).transpose(0, 3, 1, 2).copy()
        simcc_x, simcc_y = self.session.run(None, {self.input_name: batch})
        ratio = simcc_x.shape[-1] / self.width
        x, y = simcc_x.argmax(-1) / ratio, simcc_y.argmax(-1) / ratio  # (N, K) crop pixels
        score = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
        out = []
        for n, m in enumerate(matrices):
            inverse = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
            xy = np.stack([x[n], y[n], np.ones_like(x[n])], -1) @ inverse.T
            out.append(np.concatenate([xy, score[n][:, None]], -1))
        return out


class PersonDetector(OnnxImageModel):
    """An MMDeploy end-to-end ONNX detector: a letterboxed image in, `dets` and `labels` out."""

    WHAT = "person detector"
    EXPECTED = "an end-to-end detector: one input (1, 3, H, W) with fixed H, W and outputs (dets, labels)"

    def __call__(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Person boxes (x1, y1, x2, y2) in frame pixels scoring at least MIN_DET_SCORE."""
        h, w = frame.shape[:2]
        scale = min(self.width / w, self.height / h)
        matrix = np.array([[scale, 0, 0], [0, scale, 0]], dtype=np.float64)
        image = warp(frame, matrix, self.width, self.height, fill=114.0).astype(np.float32)
        dets, labels = self.session.run(None, {self.input_name: ((image - MEAN) / STD).transpose(2, 0, 1)[None].copy()})
        keep = (dets[0][:, 4] >= MIN_DET_SCORE) & (labels[0] == PERSON_LABEL)
        return [tuple(float(v) / scale for v in d[:4]) for d in dets[0][keep]]


def video_to_detections(video: str | Path, pose: PoseModel, detector: Optional[PersonDetector] = None,
                        name: Optional[str] = None) -> Detections:
    """Every frame of `video` through the detector (or the whole frame as the box) and the pose
    model; errors name `name` (e.g. the URI a temporary copy came from), else `video`."""
    frames: list[list[Person]] = []
    height = width = None
    source = name or str(video)
    for frame in decode_frames(video, source):
        height, width = frame.shape[:2]
        boxes = detector(frame) if detector is not None else [(0.0, 0.0, float(width), float(height))]
        frames.append([Person(kp, None, box) for kp, box in zip(pose(frame, boxes), boxes)])
    if not frames:
        raise DataError(f"{source}: PyAV decoded no frame from this video")
    joints = next((len(p.keypoints) for f in frames for p in f), None)
    if joints is None:
        raise DataError(f"{source}: the detector found no person in any frame")
    layout = LAYOUT_BY_JOINTS.get(joints)
    if layout not in ("coco17", "coco_wholebody133"):
        raise DataError(f"{pose.path}: {joints} keypoints per person; expected a COCO-17 or COCO-WholeBody-133 model")
    return Detections(frames, layout, float(width), float(height))
