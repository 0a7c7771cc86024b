"""Scoring a lifter on a prepared dataset's test split with the field's protocols (the maths of
`raylift evaluate`, `raylift train`'s final evaluation and the papers' protocols).

Protocol (stated in every result):
- seq2seq models: the test split holds non-overlapping windows in which every real frame has
  mask 1 exactly once; each real frame is scored once. seq2frame models: one window per frame,
  scored at its centre frame. Frames with mask 0 (padding, 3DHP invalid frames) never count.
- Windows are put back into their sequences ((subject, action, camera), frame = `start` + offset)
  so MPJVE differences only join two real consecutive frames of one sequence.
- Targets have their root joint zeroed; predictions are scored as the model made them, except on
  MPI-INF-3DHP, where the predicted pelvis is zeroed too before scoring, as P-STMO's and
  MotionAGFormer's test code do (`output_3D[:, :, 14] = 0`).
- Human3.6M layout: MPJPE, P-MPJPE, N-MPJPE, MPJVE per activity, the mean of the activities
  ("action-wise", the summary papers report) and frame-wise. MPI-INF-3DHP layout: PCK@150, AUC,
  MPJPE per test sequence (TS1..TS6), and the summary the field reports: "All", pooled over every
  valid frame (the MATLAB evaluation's "All" row), beside the plain mean of TS1-TS6.
- `eval.protocol` other than `raylift` (MixSTE's test windows, Fusionformer's centre frames,
  VideoPose3D's seq2frame) is computed in `pipelines/evaluate/protocol_defs.py`.
- A mean-pose baseline (the mean training pose for every frame) is scored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pipelines.evaluate import metrics, protocol_defs
from pipelines.evaluate.metrics import H36M_ACTIVITIES, H36M_METRICS, MPI_METRICS
from preprocessing.errors import DataError
from preprocessing.skeleton import MPI17, Skeleton, get_skeleton
from preprocessing.store.dataset import Dataset

CHUNK_FRAMES = 65536  # frames per vectorised metric call (bounds float64 temporaries)
# The windows' camera columns, read by models that declare `camera_inputs` (models.losses.camera_kwargs).

CAMERA_COLUMNS = ("trajectory", "intrinsics", "image_size")
# Columns of the test split that evaluation reads.

TEST_COLUMNS = ("keypoints_2d", "positions_3d", "mask", "subject", "action", "activity", "camera", "start",
                "sequence_length", "flipped") + CAMERA_COLUMNS

PROTOCOL_SEQ2SEQ = "seq2seq: non-overlapping windows, each real frame counted once"
PROTOCOL_SEQ2FRAME = "seq2frame: one window per frame, scored at its centre frame, each real frame counted once"


@dataclass


class ScoredFrames:
    """Every real test frame once, in sequence order: prediction, target and labels."""

    pred: np.ndarray  # (F, J, 3) metres
    gt: np.ndarray  # (F, J, 3) metres, root zeroed
    sequence: np.ndarray  # (F,) int id of (subject, action, camera)
    index: np.ndarray  # (F,) frame index within the sequence
    activity: np.ndarray  # (F,) str
    subject: np.ndarray  # (F,) str

    @property
    def num_frames(self) -> int:
        return int(self.pred.shape[0])

    def steps(self) -> np.ndarray:
        """Indices k where frames k and k+1 are consecutive real frames of one sequence."""
        same = (self.sequence[1:] == self.sequence[:-1]) & (self.index[1:] == self.index[:-1] + 1)
        return np.nonzero(same)[0]


def _skeleton(skeleton: Union[str, Skeleton]) -> Skeleton:
    return skeleton if isinstance(skeleton, Skeleton) else get_skeleton(skeleton)


def _column(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in arrays:
        raise DataError(f"test split has no column {name!r} (columns: {', '.join(sorted(arrays))})")
    return np.asarray(arrays[name])


def _real_rows(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Rows that are not flip-augmented copies (test-time flip is done by the predictor)."""
    flipped = arrays.get("flipped")
    n = len(_column(arrays, "positions_3d"))
    return np.ones(n, bool) if flipped is None else ~np.asarray(flipped, bool)


def window_mode(arrays: dict[str, np.ndarray]) -> str:
    """'seq2frame' when windows carry one target frame for a longer input, else 'seq2seq'."""
    t_in = _column(arrays, "keypoints_2d").shape[1]
    t_out = _column(arrays, "positions_3d").shape[1]
    return "seq2frame" if t_out == 1 and t_in > 1 else "seq2seq"


def collect_frames(pred: np.ndarray, arrays: dict[str, np.ndarray], skeleton: Union[str, Skeleton]) -> ScoredFrames:
    """Turn window predictions (N, T', [V,] J, 3) into one row per real frame, sorted by sequence
    and frame. Raises DataError if a real frame appears twice (a test split must count each
    real frame once) or shapes disagree."""
    skel = _skeleton(skeleton)
    gt = _column(arrays, "positions_3d")
    mask = _column(arrays, "mask")
    if pred.shape != gt.shape:
        raise DataError(f"predictions {pred.shape} do not match test targets {gt.shape}")
    if gt.shape[-2] != skel.num_joints:
        raise DataError(f"test split has {gt.shape[-2]} joints, layout {skel.name!r} has {skel.num_joints}")
    if mask.shape != gt.shape[:2]:
        raise DataError(f"test mask shape {mask.shape} does not match windows {gt.shape[:2]}")
    t_in = _column(arrays, "keypoints_2d").shape[1]
    offset = (t_in - gt.shape[1]) // 2  # seq2frame: target = centre of the receptive field
    start = _column(arrays, "start").astype(np.int64)
    subject = _column(arrays, "subject").astype(str)
    action = _column(arrays, "action").astype(str)
    activity = _column(arrays, "activity").astype(str)
    camera = _column(arrays, "camera").astype(str)
    keep = _real_rows(arrays)
    multiview = gt.ndim == 5

    rows, ts = np.nonzero((mask > 0.5) & keep[:, None])
    if multiview:
        views = gt.shape[2]
        cams = np.array([c.split(",") for c in camera[rows]]) if len(rows) else np.zeros((0, views), str)
        if cams.shape[1:] != (views,):
            raise DataError(f"multiview camera column must list {views} ids per row, got {camera[:1]}")
        f_pred = pred[rows, ts].reshape(-1, *gt.shape[-2:])  # (F*V, J, 3), views fastest
        f_gt = gt[rows, ts].reshape(-1, *gt.shape[-2:])
        rows_v = np.repeat(rows, views)
        ts_v = np.repeat(ts, views)
        cam_v = cams.reshape(-1)
    else:
        f_pred, f_gt = pred[rows, ts], gt[rows, ts]
        rows_v, ts_v, cam_v = rows, ts, camera[rows]
    keys = np.char.add(np.char.add(np.char.add(subject[rows_v], "\x1f"), np.char.add(action[rows_v], "\x1f")), cam_v)
    _, seq_id = np.unique(keys, return_inverse=True)
    index = start[rows_v] + offset + ts_v
    order = np.lexsort((index, seq_id))
    seq_id, index = seq_id[order], index[order]
    dup = np.nonzero((seq_id[1:] == seq_id[:-1]) & (index[1:] == index[:-1]))[0]
    if len(dup):
        k = order[dup[0]]
        raise DataError(
            f"test split counts frame {index[dup[0]]} of {keys[k].replace(chr(31), '/')} more than once "
            "(mask must be 1 in exactly one window per real frame)"
        )
    f_gt = np.array(f_gt[order], dtype=np.float32)
    f_gt[:, skel.root] = 0.0
    f_pred = np.array(f_pred[order], dtype=np.float32)
    if skel.name == MPI17.name:
        f_pred[:, skel.root] = 0.0  # P-STMO / MotionAGFormer zero the predicted pelvis
    return ScoredFrames(
        pred=f_pred, gt=f_gt, sequence=seq_id, index=index,
        activity=activity[rows_v][order], subject=subject[rows_v][order],
    )


def _chunked(fn, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    if len(pred) == 0:
        return np.zeros(0)
    return np.concatenate([fn(pred[i : i + CHUNK_FRAMES], gt[i : i + CHUNK_FRAMES]) for i in range(0, len(pred), CHUNK_FRAMES)])


def score_frames(frames: ScoredFrames, skeleton: Union[str, Skeleton]) -> dict[str, Any]:
    """The layout's metrics per group, mean over groups and frame-wise (see `metrics.summarise`)."""
    skel = _skeleton(skeleton)
    if skel.name == MPI17.name:
        groups = frames.subject
        per_frame = {
            "pck": (_chunked(metrics.pck_frames, frames.pred, frames.gt), groups, None),
            "auc": (_chunked(metrics.auc_frames, frames.pred, frames.gt), groups, None),
            "mpjpe": (_chunked(metrics.mpjpe_frames, frames.pred, frames.gt), groups, None),
        }
        return metrics.summarise(per_frame, sorted(set(groups.tolist())))
    groups = frames.activity
    steps = frames.steps()
    vel_pred = frames.pred[steps + 1] - frames.pred[steps]
    vel_gt = frames.gt[steps + 1] - frames.gt[steps]
    per_frame = {
        "mpjpe": (_chunked(metrics.mpjpe_frames, frames.pred, frames.gt), groups, None),
        "p_mpjpe": (_chunked(metrics.p_mpjpe_frames, frames.pred, frames.gt), groups, None),
        "n_mpjpe": (_chunked(metrics.n_mpjpe_frames, frames.pred, frames.gt), groups, None),
        "mpjve": (_chunked(metrics.mpjpe_frames, vel_pred, vel_gt), groups[steps], None),
    }
    return metrics.summarise(per_frame, H36M_ACTIVITIES)


def layout_metrics(skeleton: Union[str, Skeleton]) -> tuple[tuple[str, ...], str, str]:
    """(metric names, group key, label of the mean over groups) for a layout."""
    if _skeleton(skeleton).name == MPI17.name:
        return MPI_METRICS, "sequence", "mean of TS1-TS6 (not the field's summary)"
    return H36M_METRICS, "activity", "action-wise"


def summary_rows(skeleton: Union[str, Skeleton]) -> tuple[str, str]:
    """(the summary key papers report, label of the pooled frame-wise row) for a layout: H36M
    reports the action-wise mean; MPI-INF-3DHP the MATLAB "All", pooled over every valid frame."""
    if _skeleton(skeleton).name == MPI17.name:
        return "frame_wise", "All (pooled over valid frames, as MATLAB)"
    return "group_mean", "frame-wise"


def baseline_mean_pose(train_arrays: dict[str, np.ndarray], test_arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Predictions of the mean-pose baseline: the mean of every real training frame's 3D pose
    (all views, flipped copies included), repeated for every test window frame (a read-only view
    shaped like the test `positions_3d`)."""
    pos = _column(train_arrays, "positions_3d")
    mask = _column(train_arrays, "mask")
    if mask.shape != pos.shape[:2]:
        raise DataError(f"train mask shape {mask.shape} does not match windows {pos.shape[:2]}")
    # Frames (and views) flattened; accumulate in float64 chunk by chunk so a large train split
    # never gets a full float64 copy.
    weights = np.broadcast_to((mask > 0.5).reshape(mask.shape + (1,) * (pos.ndim - 4)), pos.shape[:-2]).reshape(-1)
    flat = pos.reshape(-1, pos.shape[-2] * pos.shape[-1])
    total = float(weights.sum())
    if total == 0:
        raise DataError("train split has no real frame to average for the mean-pose baseline")
    acc = np.zeros(flat.shape[1])
    for i in range(0, len(flat), CHUNK_FRAMES):
        acc += weights[i : i + CHUNK_FRAMES].astype(np.float64) @ flat[i : i + CHUNK_FRAMES].astype(np.float64)
    mean_pose = (acc / total).reshape(pos.shape[-2:])  # (J, 3)
    test_pos = _column(test_arrays, "positions_3d")
    if mean_pose.shape != test_pos.shape[-2:]:
        raise DataError(f"train poses {mean_pose.shape} and test poses {test_pos.shape[-2:]} differ in joints")
    return np.broadcast_to(mean_pose.astype(np.float32), test_pos.shape)


def camera_columns(arrays: dict[str, np.ndarray]) -> Optional[dict[str, np.ndarray]]:
    """The windows' camera columns (`CAMERA_COLUMNS`), or None when the split lacks one."""
    if not all(k in arrays for k in CAMERA_COLUMNS):
        return None
    return {k: arrays[k] for k in CAMERA_COLUMNS}


def protocol_text(mode: str, flip: bool, multiview: bool) -> str:
    text = PROTOCOL_SEQ2SEQ if mode == "seq2seq" else PROTOCOL_SEQ2FRAME
    if multiview:
        text += "; every view scored as its own camera sequence"
    return text + ("; test-time flip averaged" if flip else "; no test-time flip")


def evaluate_model(
    model,
    dataset: Dataset,
    flip: bool = True,
    batch_size: int = 64,
    device: Optional[str] = None,
    baseline: bool = True,
    bf16: bool = False,
    protocol: str = "raylift",
    labels: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """Predict the test split of `dataset` and score it; also the mean-pose baseline.
    `protocol`: `eval.protocol`; `labels`: how the checkpoint was made and chosen (`run_labels`).

    Returns a JSON-ready dict: `dataset`, `layout`, `protocol`, `metrics`, `group_by`,
    `group_mean_label`, `windows`, `frames`, `results` ({"model": summary, "baseline": summary}
    per `metrics.summarise`) and `notes`.
    """
    from preprocessing.keypoints.readers import load_split_arrays

    test = load_split_arrays(dataset, "test", columns=list(TEST_COLUMNS))
    train, notes = load_train_for_baseline(dataset) if baseline else (None, [])
    return evaluate_arrays(model, test, dataset.uri, dataset.layout, flip=flip, batch_size=batch_size, device=device,
                           train=train, bf16=bf16, notes=notes, protocol=protocol, labels=labels)


def load_train_for_baseline(dataset: Dataset) -> tuple[Optional[dict[str, np.ndarray]], list[str]]:
    """The train split for the mean-pose baseline, or None and a note saying why it is skipped."""
    from preprocessing.keypoints.readers import load_split_arrays

    try:
        return load_split_arrays(dataset, "train", columns=["positions_3d", "mask"]), []
    except DataError as e:
        return None, [f"mean-pose baseline skipped: {e}"]


def evaluate_arrays(
    model,
    test: dict[str, np.ndarray],
    dataset_uri: str,
    skeleton: Union[str, Skeleton],
    flip: bool = True,
    batch_size: int = 64,
    device: Optional[str] = None,
    train: Optional[dict[str, np.ndarray]] = None,
    bf16: bool = False,
    notes: Sequence[str] = (),
    pred: Optional[np.ndarray] = None,
    protocol: str = "raylift",
    labels: Optional[Mapping[str, str]] = None,
    camera_inputs: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """`evaluate_model` on an already loaded test split (`load_split_arrays(uri, "test")`); the
    mean-pose baseline is scored too when the `train` split's arrays are given. `notes` are
    carried into the result (e.g. why the baseline is missing). `pred`: the model's predictions
    for every row of `test`, made elsewhere (Ray Data, `pipelines/evaluate/batch.py`); `model` is
    then not used, and `camera_inputs` says what it read (default: the model's own)."""
    from models.losses import unwrap
    from pipelines.evaluate.prediction import default_device, predict_windows

    skel = _skeleton(skeleton)
    keep = _real_rows(test)
    if not keep.any():
        raise DataError(f"{dataset_uri}: test split has no windows")
    test = {k: np.asarray(v)[keep] for k, v in test.items()}
    kp = _column(test, "keypoints_2d")
    if kp.shape[-2] != skel.num_joints:
        raise DataError(f"{dataset_uri}: test keypoints have {kp.shape[-2]} joints, layout {skel.name!r} has {skel.num_joints}")
    if camera_inputs is None:
        camera_inputs = tuple(getattr(unwrap(model), "camera_inputs", ())) if model is not None else ()
    spec = protocol_defs.spec_dict(protocol, flip, labels, camera_inputs)
    if protocol != "raylift":
        return _paper_protocol(model, test, dataset_uri, skel, protocol, flip, batch_size, device, train, notes, spec)
    if pred is None:
        pred = predict_windows(model, kp, skel, flip=flip, batch_size=batch_size, device=default_device(device), bf16=bf16,
                               columns=camera_columns(test))
    else:
        pred = np.asarray(pred)[keep]
    frames = collect_frames(pred, test, skel)
    if frames.num_frames == 0:
        raise DataError(f"{dataset_uri}: test split has no real (mask 1) frame to score")
    names, group_by, mean_label = layout_metrics(skel)
    summary_key, frame_wise_label = summary_rows(skel)
    results = {"model": score_frames(frames, skel)}
    if train is not None:
        base = collect_frames(np.asarray(baseline_mean_pose(train, test)), test, skel)
        results["baseline"] = score_frames(base, skel)
    mode = window_mode(test)
    return {
        "dataset": str(dataset_uri),
        "layout": skel.name,
        "protocol": protocol_text(mode, flip, kp.ndim == 5),
        "mode": mode,
        "flip": bool(flip),
        "metrics": list(names),
        "group_by": group_by,
        "group_mean_label": mean_label,
        "frame_wise_label": frame_wise_label,
        "summary_key": summary_key,
        "windows": int(len(kp)),
        "frames": frames.num_frames,
        "protocol_spec": spec,
        "results": results,
        "notes": list(notes),
    }


class MeanPose(nn.Module):
    """The mean-pose baseline as a model: the mean training pose (J, 3) for every output frame
    (`frames_out`: T for seq2seq windows, 1 for seq2frame), whatever the 2D says."""

    def __init__(self, mean_pose: np.ndarray, frames_out: Optional[int]) -> None:
        super().__init__()
        self.register_buffer("pose", torch.as_tensor(np.asarray(mean_pose, np.float32)))
        self.frames_out = frames_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, J, 2) -> (B, T' , J, 3)
        t = x.shape[1] if self.frames_out is None else self.frames_out
        return self.pose.expand(x.shape[0], t, *self.pose.shape).clone()


def _paper_protocol(model, test: dict[str, np.ndarray], dataset_uri: str, skel: Skeleton, protocol: str, flip: bool,
                    batch_size: int, device: Optional[str], train: Optional[dict[str, np.ndarray]],
                    notes: Sequence[str], spec: dict[str, Any]) -> dict[str, Any]:
    """`evaluate_arrays` under a paper's protocol (protocol_defs), the mean-pose baseline scored
    by the same protocol (no flip: a constant pose needs none)."""
    from pipelines.evaluate.prediction import default_device

    kp = _column(test, "keypoints_2d")
    frames = int(kp.shape[1])
    results = {"model": protocol_defs.evaluate_protocol(model, test, skel, protocol, frames=frames, flip=flip,
                                                        batch_size=batch_size, device=default_device(device))}
    if train is not None:
        mean_pose = np.asarray(baseline_mean_pose(train, test))[0, 0]
        baseline = MeanPose(mean_pose, 1 if window_mode(test) == "seq2frame" else None)
        results["baseline"] = protocol_defs.evaluate_protocol(baseline, test, skel, protocol, frames=frames, flip=False,
                                                              batch_size=batch_size)
    return {
        "dataset": str(dataset_uri), "layout": skel.name,
        "protocol": f"{protocol}: {spec['reproduces']}; {spec['frames_counted']}"
                    + ("; test-time flip averaged" if flip else "; no test-time flip"),
        "mode": window_mode(test), "flip": bool(flip), "metrics": list(H36M_METRICS), "group_by": "activity",
        "group_mean_label": "action-wise", "frame_wise_label": "frame-wise", "summary_key": "group_mean",
        "windows": int(len(kp)), "frames": results["model"]["frames"], "protocol_spec": spec,
        "results": results, "notes": list(notes),
    }


def describe_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Window length, joints, mode and views of a loaded split (layout unknown: None)."""
    kp = _column(arrays, "keypoints_2d")
    return {"frames": int(kp.shape[1]), "joints": int(kp.shape[-2]), "mode": window_mode(arrays),
            "multiview": kp.ndim == 5, "layout": None}


def describe_dataset(dataset: Dataset) -> dict[str, Any]:
    """The same description from a dataset's manifest, layout included."""
    try:
        windows = dataset.windows
        return {"frames": int(windows["frames"]), "joints": dataset.joints, "mode": windows["mode"],
                "multiview": bool(windows["multiview"]), "layout": dataset.layout}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"dataset manifest {dataset.id}: missing window/source description ({e})") from None


def check_compatible(meta: dict[str, Any], data: dict[str, Any], checkpoint: str, dataset: str) -> None:
    """Refuse (CheckpointError) a checkpoint whose window length, joints, layout, view layout or
    output mode does not fit the dataset (`data` from `describe_dataset`/`describe_arrays`)."""
    from models.checkpoint import CheckpointError
    from models.registry import model_class

    name = meta["model"].get("name")
    problems = []
    if int(meta["frames"]) != data["frames"]:
        problems.append(f"it was trained for T={meta['frames']} frames but the dataset's windows have T={data['frames']}")
    if int(meta["joints"]) != data["joints"]:
        problems.append(f"it predicts {meta['joints']} joints but the dataset has {data['joints']}")
    if data.get("layout") and meta.get("layout") and meta["layout"] != data["layout"]:
        problems.append(f"it was trained on layout {meta['layout']!r} but the dataset is {data['layout']!r}")
    try:
        cls = model_class(name)
    except ValueError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from None
    if bool(getattr(cls, "multiview", False)) != data["multiview"]:
        problems.append(f"model {name!r} is {'' if cls.multiview else 'not '}multi-view but the dataset is "
                        f"{'' if data['multiview'] else 'not '}multi-view")
    if getattr(cls, "output_mode", data["mode"]) != data["mode"]:
        problems.append(f"model {name!r} is {cls.output_mode} but the dataset's windows are {data['mode']}")
    if problems:
        raise CheckpointError(f"{checkpoint} does not match dataset {dataset}: " + "; ".join(problems))
