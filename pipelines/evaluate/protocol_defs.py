"""Evaluation protocols of the papers raylift reproduces (`eval.protocol`), beside its own.

Each protocol is named after what it reproduces and says, in every result, which windows it cuts,
which frames it counts, how it averages and how it computes MPJVE:

- `raylift` (default): each real frame once (`pipelines/evaluate/protocols.py`).
- `mixste`: MixSTE's run.py `eval_data_prepare`: per camera sequence of N frames, windows of T from
  frame 0 (`i*T`), the last window flush with the sequence end (frames N-T..N-1; when N < T, the
  sequence replicate-padded at its end to T, padded frames scored). Every frame of every window is
  scored, so frames in the overlap of the last two windows count twice, as the code counts them.
  Activity value = frames-weighted mean over its sequences' window frames; table = mean of the
  activities. MPJVE (`common/loss.py mean_velocity_error`) = per sequence, the mean velocity error
  of the windows' frames concatenated in window order (across window joins, the overlap jump
  included), weighted by the number of window frames.
- `videopose3d_seq2frame` (PoseFormer, CrossFormer: VideoPose3D's evaluation): one window per
  frame, [i-p, i+p] edge-padded, scored at its centre; each frame once. MPJVE per sequence = mean of
  its N-1 velocity errors, weighted by N frames (VideoPose3D `evaluate`); activity-wise mean.
- `fusionformer` (Fusionformer run.py `step('test')` with `--refine`): stride-1 windows centred on
  every frame (edge-padded); the transformer's two flip passes are averaged, then the refinement
  runs once on the unflipped 2D with the real camera intrinsics and the GROUND-TRUTH root depth of
  the centre frame (for a model that reads them: `camera_inputs`); the centre frame of the refined
  output is scored with its root joint zeroed (`output_3D[:, :, 0, :] = 0`). MPJVE as VideoPose3D.

Every protocol scores the window frame its code scores: MixSTE every frame of its windows, the
stride-1 protocols the centre frame of the model's output, whatever its length (T for seq2seq and
refining models, 1 for seq2frame ones). Refining models are flipped between their two stages
(`pipelines/evaluate/prediction.py`); the stride-1 protocols pass them the centre frame's root
depth, MixSTE's every frame's.

Human3.6M-style tables only (MPJPE, P-MPJPE, N-MPJPE, MPJVE per activity); MPI-INF-3DHP keeps
raylift's protocol, whose summary is already the MATLAB "All".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pipelines.evaluate import metrics
from pipelines.evaluate.metrics import H36M_ACTIVITIES
from preprocessing.errors import DataError
from preprocessing.skeleton import MPI17, Skeleton, get_skeleton
from preprocessing.keypoints.windows import frame_indices

PROTOCOL_NAMES = ("raylift", "mixste", "videopose3d_seq2frame", "fusionformer")


@dataclass(frozen=True)
class ProtocolSpec:
    """What a results table was computed with (written into results.json and results.md)."""

    name: str
    reproduces: str
    windows: str
    frames_counted: str
    averaging: str
    mpjve: str


SPECS: dict[str, ProtocolSpec] = {
    "raylift": ProtocolSpec(
        "raylift", "raylift's own protocol",
        "seq2seq: non-overlapping centred windows, edge-padded; seq2frame: one window per frame",
        "each real (valid) frame exactly once",
        "frames within each activity/sequence, then the mean over activities (H36M) or pooled (3DHP All)",
        "mean over consecutive real frame pairs of one sequence"),
    "mixste": ProtocolSpec(
        "mixste", "MixSTE run.py eval_data_prepare + evaluate",
        "windows of T from frame 0, the last one flush with the sequence end (replicate-padded if N < T)",
        "every frame of every window: the overlap of the last two windows counts twice",
        "window frames within each activity, then the mean over activities",
        "per sequence over the concatenated window frames (window joins included), weighted by window frames"),
    "videopose3d_seq2frame": ProtocolSpec(
        "videopose3d_seq2frame", "VideoPose3D evaluate (PoseFormer, CrossFormer run_poseformer.py)",
        "one window per frame, [i-p, i+p] edge-padded, target = centre frame",
        "each frame once",
        "frames within each activity, then the mean over activities",
        "per sequence mean of its N-1 steps, weighted by its N frames"),
    "fusionformer": ProtocolSpec(
        "fusionformer", "Fusionformer run.py step('test') with --refine",
        "one window per frame, [i-p, i+p] edge-padded (stride 1); flip passes averaged before the refinement",
        "each frame once, the centre frame of its window after pose refinement, predicted root zeroed",
        "frames within each activity, then the mean over activities",
        "per sequence mean of its N-1 steps, weighted by its N frames"),
}

@dataclass
class TestSequence:
    """One whole camera sequence of the test split."""

    activity: str
    keypoints_2d: np.ndarray  # (N, J, 2)
    positions_3d: np.ndarray  # (N, J, 3) metres, root zeroed
    valid: np.ndarray  # (N,) bool
    # The camera columns when the split has them (models that read `camera_inputs` need them).
    trajectory: Optional[np.ndarray] = None  # (N, 3) the root's camera-space position, metres
    intrinsics: Optional[np.ndarray] = None  # (9,) pixels
    image_size: Optional[np.ndarray] = None  # (2,) width, height

    def camera_columns(self, idx: np.ndarray) -> Optional[dict[str, np.ndarray]]:
        """The camera columns of windows whose frames are `idx` (W, T), or None without them."""
        if self.trajectory is None:
            return None
        return {"trajectory": self.trajectory[idx], "intrinsics": np.broadcast_to(self.intrinsics, (len(idx), 9)),
                "image_size": np.broadcast_to(self.image_size, (len(idx), 2))}


def sequences_from_split(arrays: Mapping[str, np.ndarray], root: int) -> list[TestSequence]:
    """Rebuild whole sequences from raylift's test windows (non-flipped rows): seq2seq windows
    hold frames start + t, seq2frame windows hold frame start + p at their centre."""
    kp, pos, mask = (np.asarray(arrays[k]) for k in ("keypoints_2d", "positions_3d", "mask"))
    if kp.ndim != 4:
        raise DataError(f"protocols other than raylift need single-view windows, got keypoints {kp.shape}")
    start, length = np.asarray(arrays["start"], np.int64), np.asarray(arrays["sequence_length"], np.int64)
    keep = ~np.asarray(arrays.get("flipped", np.zeros(len(kp), bool)), bool)
    seq2frame = pos.shape[1] == 1 and kp.shape[1] > 1
    cameras = all(k in arrays for k in ("trajectory", "intrinsics", "image_size"))
    keys = [f"{a}\x1f{b}\x1f{c}" for a, b, c in zip(arrays["subject"], arrays["action"], arrays["camera"])]
    out: dict[str, TestSequence] = {}
    for r in np.nonzero(keep)[0]:
        n = int(length[r])
        seq = out.get(keys[r])
        if seq is None:
            j = kp.shape[-2]
            seq = out[keys[r]] = TestSequence(str(arrays["activity"][r]), np.zeros((n, j, 2), np.float32),
                                              np.zeros((n, j, 3), np.float32), np.zeros(n, bool))
            if cameras:
                seq.trajectory = np.zeros((n, 3), np.float32)
                seq.intrinsics = np.asarray(arrays["intrinsics"][r], np.float32)
                seq.image_size = np.asarray(arrays["image_size"][r], np.float32)
        if seq2frame:
            frames, k_pos, p_pos = np.array([start[r] + kp.shape[1] // 2]), np.array([kp.shape[1] // 2]), np.array([0])
        else:
            t = np.arange(kp.shape[1])
            inside = (start[r] + t >= 0) & (start[r] + t < n)
            frames, k_pos, p_pos = start[r] + t[inside], t[inside], t[inside]
        seq.keypoints_2d[frames] = kp[r, k_pos]
        seq.positions_3d[frames] = pos[r, p_pos]
        seq.valid[frames] = mask[r, p_pos] > 0.5
        if cameras:
            seq.trajectory[frames] = np.asarray(arrays["trajectory"][r])[p_pos]
    for seq in out.values():
        seq.positions_3d[:, root] = 0.0
    return [out[k] for k in sorted(out)]


def mixste_window_frames(num_frames: int, frames: int) -> np.ndarray:
    """(W, T) frame indices of MixSTE's test windows: i*T for the first W-1, the last flush with
    the end (replicate-padded at the end when N < T). W = ceil(N / T)."""
    count = -(-num_frames // frames)
    starts = np.arange(count, dtype=np.int64) * frames
    starts[-1] = max(num_frames - frames, 0)
    return frame_indices(starts, frames, num_frames)


def stride1_window_frames(num_frames: int, frames: int) -> np.ndarray:
    """(N, T) frame indices of one window per frame centred on it, edge-padded (T = 2p+1)."""
    return frame_indices(np.arange(num_frames, dtype=np.int64) - frames // 2, frames, num_frames)


def _predict(model: nn.Module, seq: TestSequence, idx: np.ndarray, skeleton: Skeleton, flip: bool, batch_size: int,
             device: torch.device, root_frame: Optional[int]) -> np.ndarray:
    """The model's (flip-averaged) outputs (W, T', J, 3) for the windows of `seq` whose frames are
    `idx` (W, T), with their camera inputs (root depth of window frame `root_frame`, or of every
    frame when None)."""
    from pipelines.evaluate.prediction import predict_windows

    return predict_windows(model, seq.keypoints_2d[idx], skeleton, flip=flip, batch_size=batch_size, device=device,
                           columns=seq.camera_columns(idx), root_frame=root_frame)


def evaluate_protocol(model: nn.Module, arrays: Mapping[str, np.ndarray], skeleton: Union[str, Skeleton],
                      protocol: str, frames: int, flip: bool = True, batch_size: int = 64,
                      device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Score `model` on the test split `arrays` with `protocol` (not `raylift`); returns a
    `metrics.summarise` summary (groups = activities, group mean = action-wise)."""
    skel = skeleton if isinstance(skeleton, Skeleton) else get_skeleton(skeleton)
    if protocol not in SPECS or protocol == "raylift":
        raise ValueError(f"evaluate_protocol: protocol {protocol!r} is not one of {', '.join(PROTOCOL_NAMES[1:])}")
    if skel.name == MPI17.name:
        raise DataError(f"eval.protocol {protocol!r} reproduces Human3.6M-style tables; MPI-INF-3DHP uses 'raylift'")
    device = torch.device(device)
    values: dict[str, list] = {k: [] for k in ("mpjpe", "p_mpjpe", "n_mpjpe")}
    groups, weights, vel, vel_groups, vel_weights = [], [], [], [], []
    for seq in sequences_from_split(arrays, skel.root):
        n = len(seq.valid)
        if protocol == "mixste":
            idx = mixste_window_frames(n, frames)  # (W, T)
            pred = _predict(model, seq, idx, skel, flip, batch_size, device, root_frame=None)  # (W, T, J, 3)
            pred, idx = pred.reshape(-1, *pred.shape[-2:]), idx.reshape(-1)
        else:
            idx = stride1_window_frames(n, frames)  # (N, T): window i centred on frame i
            out = _predict(model, seq, idx, skel, flip, batch_size, device, root_frame=frames // 2)
            pred = np.array(out[:, out.shape[1] // 2])  # the centre frame, whatever the output length
            if protocol == "fusionformer":
                pred[:, skel.root] = 0.0  # run.py: output_3D[:, :, 0, :] = 0
            idx = np.arange(n)
        gt, w = seq.positions_3d[idx], seq.valid[idx].astype(np.float64)
        values["mpjpe"].append(metrics.mpjpe_frames(pred, gt))
        values["p_mpjpe"].append(metrics.p_mpjpe_frames(pred, gt))
        values["n_mpjpe"].append(metrics.n_mpjpe_frames(pred, gt))
        groups.append(np.full(len(idx), seq.activity, dtype=object))
        weights.append(w)
        if len(idx) > 1 and w.all():
            vel.append(metrics.mpjve(pred, gt))
            vel_groups.append(seq.activity)
            vel_weights.append(float(len(idx)))
    if not weights:
        raise DataError("test split has no sequence to score")
    g, w = np.concatenate(groups).astype(str), np.concatenate(weights)
    per_frame = {k: (np.concatenate(v), g, w) for k, v in values.items()}
    per_frame["mpjve"] = (np.asarray(vel, float), np.asarray(vel_groups, str), np.asarray(vel_weights, float))
    return metrics.summarise(per_frame, H36M_ACTIVITIES)


def inputs_label(camera_inputs: Sequence[str], protocol: str) -> str:
    """What the scored model read besides the 2D keypoints (`camera_inputs`), in words: the
    ground-truth dependence a results header must name."""
    parts = ["2D keypoints"]
    if "intrinsics" in camera_inputs:
        parts.append("the real camera intrinsics")
    if "root_depth" in camera_inputs:
        which = ("the centre frame's" if protocol in ("videopose3d_seq2frame", "fusionformer")
                 else "each target frame's")
        parts.append(f"the GROUND-TRUTH root depth ({which}, as the authors' code; model.root_depth: gt)")
    return ", ".join(parts)


def spec_dict(protocol: str, flip: bool, labels: Optional[Mapping[str, str]] = None,
              camera_inputs: Sequence[str] = ()) -> dict[str, Any]:
    """The protocol's labels for results.json / results.md: the protocol, flip, what the model read
    and the run's labels (checkpoint rule, precision, training order: `protocols.run_labels`)."""
    return {**asdict(SPECS[protocol]), "flip": bool(flip), "model inputs": inputs_label(camera_inputs, protocol),
            "checkpoint": "given checkpoint", **dict(labels or {})}
