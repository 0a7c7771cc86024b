"""`raylift infer`: lift 2D keypoint tracks (from any detector) or a dataset sequence to 3D.

Two inputs:
- `--input K`: a COCO-17 (default) or H36M-17 (`--layout h36m`) keypoint file in pixels (formats:
  `preprocessing/sources/keypoint_formats.py`), with the image size from `--width/--height` or the file.
- `--dataset D --subject S --action A --camera I`: one sequence of a dataset (an experiment YAML, or
  a directory in VideoPose3D's formats such as cmu-dev), lifted and compared with its ground truth
  (MPJPE / P-MPJPE printed and stored).

Lifting (`lift_sequence`): keypoints normalised as `x / w * 2 - [1, h / w]`, cut into the model's
windows so that every frame is predicted exactly once (`pipelines/evaluate/windows.py`), test-time
flip averaging (default on) through `pipelines.evaluate.prediction.predict`, batched, on CPU or GPU.
A `--input` file is lifted in this process; a `--dataset` sequence runs the same windows as Ray Data
batch inference (`pipelines.evaluate.batch.lift_sequence_on_ray`: GPU or custom-resource actors, or
CPU tasks), so a job driver on a GPU-less head never runs the model.

Output (`--output P`): `P.npz` or `P.json` by suffix; any other suffix (or none) writes both
`P.npz` and `P.json` (P + ".npz" / ".json"). Contents: `poses_3d` (F, 17, 3) camera-space metres,
root-relative with the pelvis at 0; `keypoints_2d` (F, 17, 2) the input in pixels and H36M order;
`scores` (F, 17) when the detector gave them; in dataset mode `gt_3d` (F, 17, 3) and `valid` (F,);
`metadata` (a JSON object; in the npz a JSON string). Files are written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np

from preprocessing.store import storage
from preprocessing.errors import DataError
from preprocessing.sources.detectors import FORMATS as DETECTOR_FORMATS
from pipelines.config import add_location_argument

OUTPUT_FORMAT = "raylift-inference/1"
RAYLIFT_FORMAT = "raylift"  # --input as COCO-17/H36M-17 arrays (preprocessing/sources/keypoint_formats.py)

FRAMES_PER_FORWARD = 4096  # default batch: about this many input frames per forward pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--checkpoint", role="input", required=True, help="raylift checkpoint directory")
    src = parser.add_mutually_exclusive_group(required=True)
    add_location_argument(src, "--input", role="input", help="2D keypoints file (.npz or .json, pixels)")
    add_location_argument(src, "--dataset", role="input", help="experiment YAML or a VideoPose3D-format directory (e.g. cmu-dev)")
    add_location_argument(src, "--video", role="input", nargs="+",
                          help="video file(s): 2D by --pose-model (an RTMPose ONNX file), then 3D; several run "
                               "as Ray Data batch inference and --output is then a directory")
    add_location_argument(parser, "--output", role="output", required=True, help="P.npz, P.json, or P (writes P.npz and P.json)")
    parser.add_argument("--format", default="auto", choices=("auto", RAYLIFT_FORMAT, *DETECTOR_FORMATS),
                        help="who wrote --input: a detector (preprocessing/sources/detectors.py), raylift's "
                             "own npz/json arrays, or auto (default: from the file's content)")
    parser.add_argument("--layout", choices=("coco", "h36m"), default="coco", help="joint layout of a raylift-format --input")
    parser.add_argument("--person", type=int, default=None, help="person index in a raylift-format (P, F, 17, C) file")
    parser.add_argument("--track", type=int, default=None,
                        help="detector files: the track id to lift (default: the largest person)")
    parser.add_argument("--video-name", default=None, help="videopose3d files: the video to lift when it holds several")
    add_location_argument(parser, "--pose-model", role="input", help="--video: an RTMPose-style ONNX 2D pose model")
    add_location_argument(parser, "--det-model", role="input",
                          help="--video: an end-to-end ONNX person detector (RTMDet/YOLOX via MMDeploy); "
                               "default: the whole frame is the person's box")
    parser.add_argument("--width", type=float, default=None, help="image width in pixels (else from the file)")
    parser.add_argument("--height", type=float, default=None, help="image height in pixels (else from the file)")
    parser.add_argument("--subject", help="dataset mode: subject, e.g. S9 or C01")
    parser.add_argument("--action", help="dataset mode: action, e.g. 'Walking 1'")
    parser.add_argument("--camera", default="0", help="dataset mode: camera index or id (default 0)")
    parser.add_argument(
        "--keypoints-2d", default="gt",
        help="dataset directory mode: which data_2d_*_<name>.npz to read (default gt; e.g. noisy)",
    )
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="disable test-time flip")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    parser.add_argument("--device", default="auto",
                        help="--input: cpu, cuda, cuda:N or auto (default) in this process; --dataset: cpu "
                             "(Ray CPU tasks), cuda (Ray actors with one GPU each) or auto (cuda when the Ray "
                             "cluster has GPUs)")
    parser.add_argument("--resources", metavar="NAME=N[,NAME=N]", default=None,
                        help="--dataset: custom Ray resources each inference actor asks for")
    parser.add_argument("--actors", type=int, default=1, help="--dataset: inference actors (GPU or --resources)")


# --- lifting ----------------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    return name


def default_batch_size(frames: int) -> int:
    return max(1, FRAMES_PER_FORWARD // frames)


def lift_sequence(
    model: Any,
    keypoints_2d: np.ndarray,
    frames: int,
    skeleton: Any,
    flip: bool = True,
    batch_size: Optional[int] = None,
    device: str = "cpu",
) -> np.ndarray:
    """(N, J, 2) normalised keypoints -> (N, J, 3) root-relative 3D (root joint zeroed), metres.

    `model.output_mode` picks the window plan; each frame is predicted exactly once.
    """
    import torch

    from pipelines.evaluate.windows import iter_batches, plan_windows, stitch_into
    from pipelines.evaluate.prediction import predict

    kp = np.asarray(keypoints_2d, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise DataError(f"keypoints must be (frames, joints, 2), got {kp.shape}")
    plan = plan_windows(kp.shape[0], frames, model.output_mode)
    out = np.zeros(kp.shape[:2] + (3,), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for window in iter_batches(plan, batch_size or default_batch_size(frames)):
            x = torch.from_numpy(kp[plan.indices(window)]).to(device)  # (B, T, J, 2)
            y = predict(model, x, skeleton, flip=flip)  # (B, T|1, J, 3)
            stitch_into(out, y.float().cpu().numpy(), plan, window)
    return out - out[:, skeleton.root : skeleton.root + 1]


def load_lifter(checkpoint: str, device: str) -> tuple[Any, dict]:
    """The checkpoint's model on `device`, refusing multi-view models (infer lifts one view)."""
    from models.checkpoint import CheckpointError, load_model

    model, meta = load_model(checkpoint)
    if getattr(model, "multiview", False):
        raise CheckpointError(f"{checkpoint}: multi-view model {meta['model'].get('name')!r}; infer lifts single views")
    return model.to(device), meta


# --- dataset mode -----------------------------------------------------------------------------


def dataset_source(dataset: str, subject: str, keypoints_2d: str) -> Any:
    """SourceConfig for `--dataset`: an experiment YAML's source, or a VideoPose3D-format directory."""
    from pipelines.config import load_config
    from preprocessing.config import SourceConfig

    path = Path(dataset)
    if path.is_file():
        return load_config(str(path)).data.source
    if not path.is_dir():
        raise DataError(f"{path}: --dataset is neither an experiment YAML nor a directory")

    def one(pattern: str, what: str) -> str:
        found = sorted(path.glob(pattern))
        if len(found) != 1:
            names = [f.name for f in found]
            raise DataError(f"{path}: expected exactly one {what} ({pattern}), found {names or 'none'}")
        return str(found[0])

    source = SourceConfig(
        kind="generic",
        data_3d=one("data_3d_*.npz", "3D file"),
        data_2d=one(f"data_2d_*_{keypoints_2d}.npz", f"2D file for --keypoints-2d {keypoints_2d}"),
        cameras=one("cameras*.json", "cameras JSON"),
        test_subjects=[subject],
    )
    source.validate()
    return source


def find_sequence(sequences: list, subject: str, action: str, camera: str) -> Any:
    """The sequence of (subject, action, camera); `camera` is an index or a camera id."""
    same = [s for s in sequences if s.subject == subject and s.action == action]
    if not same:
        available = sorted({f"{s.subject}/{s.action}" for s in sequences if s.subject == subject})
        hint = f"; actions of {subject}: {available[:12]}" if available else f"; subjects: {sorted({s.subject for s in sequences})}"
        raise DataError(f"no sequence {subject!r} / {action!r} in the dataset{hint}")
    for s in same:
        if s.camera == camera or (camera.isdigit() and s.camera_index == int(camera)):
            return s
    cams = [f"{s.camera_index}:{s.camera}" for s in same]
    raise DataError(f"{subject}/{action}: no camera {camera!r} (index:id available {cams})")


def sequence_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, Optional[float]]:
    """MPJPE / P-MPJPE (mm) over the sequence's valid frames, as `pipelines.evaluate.metrics` computes them."""
    from pipelines.evaluate import metrics

    w = valid.astype(np.float64)
    values = {
        "mpjpe": metrics.mpjpe(pred, gt, w),
        "p_mpjpe": metrics.p_mpjpe(pred, gt, w),
        "n_mpjpe": metrics.n_mpjpe(pred, gt, w),
        "mpjve": metrics.mpjve(pred, gt, valid),
    }
    # NaN (no valid frame) becomes None so the JSON stays valid.
    return {k: float(v) if np.isfinite(v) else None for k, v in values.items()}


# --- outputs ----------------------------------------------------------------------------------


def output_paths(output: str) -> list[Path]:
    """`P.npz` / `P.json` -> that file; anything else -> both `P.npz` and `P.json`."""
    p = Path(output)
    if p.suffix.lower() in (".npz", ".json"):
        return [p]
    return [Path(f"{output}.npz"), Path(f"{output}.json")]


def _stage(path: Path, write: Any) -> Path:
    """Run `write(tmp)` on a temporary sibling of `path` and return it (renamed into place later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, storage.new_file_mode())  # 0644 like any new file, not mkstemp's 0600
        return Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_npz(tmp: str, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, metadata=np.array(json.dumps(metadata)))


def _write_json(tmp: str, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    doc = {"metadata": metadata}
    for k, v in arrays.items():
        doc[k] = np.round(v, 6).tolist() if v.dtype.kind == "f" else v.tolist()
    Path(tmp).write_text(json.dumps(doc))


def write_outputs(output: str, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> list[Path]:
    """Write the npz and/or JSON result (see the module docstring); returns the paths written.

    Every file is staged first and renamed only when all are written, so a failure leaves none.
    """
    paths = output_paths(output)
    staged: list[tuple[Path, Path]] = []
    try:
        for path in paths:
            writer = _write_npz if path.suffix.lower() == ".npz" else _write_json
            staged.append((_stage(path, partial(writer, arrays=arrays, metadata=metadata)), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return paths


def load_inference_output(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an `infer` result (.npz or .json) -> (arrays, metadata). Raises DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: inference output not found")
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k != "metadata"}
                metadata = json.loads(str(z["metadata"])) if "metadata" in z.files else {}
        elif p.suffix.lower() == ".json":
            doc = json.loads(p.read_text())
            metadata = doc.pop("metadata", {})
            arrays = {k: np.asarray(v, dtype=np.float32 if k != "valid" else bool) for k, v in doc.items()}
        else:
            raise DataError(f"{p}: expected an .npz or .json written by raylift infer")
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{p}: cannot be read as a raylift infer output ({e})") from None
    if "poses_3d" not in arrays:
        raise DataError(f"{p}: no 'poses_3d' (not a raylift infer output)")
    return arrays, metadata


# --- command ----------------------------------------------------------------------------------


def _check_layout(meta: dict, layout: str, checkpoint: str) -> None:
    from models.checkpoint import CheckpointError

    trained = meta.get("layout", "h36m")
    if trained != layout:
        raise CheckpointError(f"{checkpoint}: trained on layout {trained!r}, input is {layout!r}")
    if int(meta["joints"]) != 17:
        raise CheckpointError(f"{checkpoint}: model has {meta['joints']} joints, inference inputs have 17")


def _lift_on_ray(args: argparse.Namespace, model: Any, meta: dict, keypoints: np.ndarray,
                 skeleton: Any) -> tuple[np.ndarray, str]:
    """`lift_sequence` as Ray Data batch inference on `--device/--resources/--actors`:
    (poses (N, J, 3), where they ran)."""
    from pipelines.evaluate.batch import ensure_ray, lift_sequence_on_ray, placement_for_cli, ship_model, where_text
    from pipelines.evaluate.batch import parse_placement_resources

    ensure_ray()
    placement = placement_for_cli(args.device, parse_placement_resources(args.resources), args.actors)
    frames = int(meta["frames"])
    poses = lift_sequence_on_ray(ship_model(model, meta, args.checkpoint), keypoints, frames, model.output_mode,
                                 skeleton, placement, flip=args.flip,
                                 batch_size=args.batch_size or default_batch_size(frames))
    return poses, f"Ray Data {where_text(placement)}"


def need_pose_model(args: argparse.Namespace) -> str:
    """--pose-model, which --video cannot do without."""
    if args.pose_model is None:
        raise DataError("--video needs --pose-model (an RTMPose-style ONNX file; nothing is downloaded)")
    return args.pose_model


def video_track(args: argparse.Namespace, video: str, det: Any, fps: Optional[float]) -> tuple[Any, Any, dict[str, Any]]:
    """One video's detections as the person to lift: (the track, what reading it did, the
    metadata's input fields)."""
    from preprocessing.sources.detectors import one_person

    def where(path: Optional[str]) -> Optional[str]:
        return str(Path(path).resolve()) if path and storage.is_local(path) else path

    read = one_person(det, video, "video", args.track, args.width, args.height)
    return read.track, read, {"format": "video", "source_layout": read.layout, "pose_model": where(args.pose_model),
                              "det_model": where(args.det_model), "interpolated_frames": read.interpolated, "fps": fps}


def read_video(args: argparse.Namespace, video: str) -> tuple[Any, dict[str, Any]]:
    """One --video through the ONNX detector and pose model (preprocessing/sources/video_pose.py)."""
    from preprocessing.sources.video_pose import PersonDetector, PoseModel, video_fps, video_to_detections

    pose_model = need_pose_model(args)
    start = time.perf_counter()
    det = video_to_detections(video, PoseModel(pose_model), PersonDetector(args.det_model) if args.det_model else None)
    track, read, info = video_track(args, video, det, video_fps(video))
    print(f"2D: {read.frames} frames of {video} through {Path(pose_model).name} ({read.layout}) in "
          f"{time.perf_counter() - start:.1f} s; the person was missing in {read.interpolated} frame(s), interpolated")
    return track, info


def read_input(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The --input track (H36M-17, pixels) and what reading it did, printed and kept in the metadata."""
    from preprocessing.sources.detectors import detect_format, load_detections
    from preprocessing.sources.keypoint_formats import load_keypoints

    fmt = args.format
    if fmt == "auto":
        fmt = detect_format(Path(args.input)) or RAYLIFT_FORMAT
    if fmt == RAYLIFT_FORMAT:
        return load_keypoints(args.input, args.layout, args.person, args.width, args.height), {"format": fmt}
    read = load_detections(args.input, fmt, args.track, args.width, args.height, video=args.video_name)
    print(f"read {read.frames} frames of {fmt} keypoints ({read.layout} -> H36M-17, at most {read.people_max} "
          f"people in a frame" + (f", track {read.chosen_track}" if read.chosen_track is not None else "")
          + f"); the person was missing in {read.interpolated} frame(s), interpolated")
    return read.track, {"format": fmt, "source_layout": read.layout, "track": read.chosen_track,
                        "interpolated_frames": read.interpolated}


def run(args: argparse.Namespace) -> int:
    from preprocessing.sources.keypoint_formats import screen_to_pixels
    from preprocessing.skeleton import get_skeleton

    if args.batch_size is not None and args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.video is not None and len(args.video) > 1:
        return run_videos(args)
    # A single file lifts in this process; a dataset sequence runs where Ray's resources are.
    single = args.input is not None or args.video is not None
    device = resolve_device(args.device) if single else "cpu"
    if single:
        track, read = read_video(args, args.video[0]) if args.video else read_input(args)
        model, meta = load_lifter(args.checkpoint, device)
        _check_layout(meta, "h36m", args.checkpoint)
        return lift_and_write(args, model, meta, *track_arrays(track, read), device, args.output)
    if not (args.subject and args.action):
        raise DataError("--dataset needs --subject and --action")
    from preprocessing.sources import load_sequences

    data = load_sequences(dataset_source(args.dataset, args.subject, args.keypoints_2d))
    seq = find_sequence(data.sequences, args.subject, args.action, str(args.camera))
    model, meta = load_lifter(args.checkpoint, device)
    _check_layout(meta, seq.layout, args.checkpoint)
    w, h = seq.image_size
    normalised = seq.keypoints_2d.astype(np.float32)
    arrays = {"keypoints_2d": screen_to_pixels(normalised, w, h), "gt_3d": seq.positions_3d.astype(np.float32),
              "valid": seq.valid.astype(bool)}
    metadata: dict[str, Any] = {
        "input": {"layout": seq.layout, "width": float(w), "height": float(h)},
        "dataset": {"path": str(Path(args.dataset).resolve()), "subject": seq.subject, "action": seq.action,
                    "activity": seq.activity, "camera": seq.camera, "camera_index": seq.camera_index},
        "fps": float(seq.fps),
    }
    return lift_and_write(args, model, meta, get_skeleton(seq.layout), normalised, arrays, metadata, device,
                          args.output, on_ray=True)


def track_arrays(track: Any, read: dict[str, Any]) -> tuple[Any, np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """(skeleton, normalised keypoints, output arrays, metadata) of one H36M-17 pixel track."""
    from preprocessing.skeleton import H36M17
    from preprocessing.sources.keypoint_formats import normalize_screen

    arrays = {"keypoints_2d": track.keypoints}
    if track.scores is not None:
        arrays["scores"] = track.scores
    metadata = {
        "input": {"path": str(Path(track.path).resolve()), "layout": track.source_layout, "person": track.person,
                  "width": track.width, "height": track.height, **read},
        "fps": read.get("fps"),
    }
    return H36M17, normalize_screen(track.keypoints, track.width, track.height), arrays, metadata


def run_videos(args: argparse.Namespace) -> int:
    """Several --video files: their 2D as Ray Data batch inference (pipelines/evaluate/videos.py),
    then each lifted here into `--output DIR/<video name>.npz/.json`."""
    from pipelines.evaluate.batch import parse_placement_resources, placement_for_cli, where_text
    from pipelines.evaluate.videos import videos_to_detections_on_ray

    pose_model = need_pose_model(args)
    names = [Path(v).stem for v in args.video]
    if len(set(names)) != len(names):
        raise DataError(f"--video: two videos share a name ({', '.join(sorted(n for n in names if names.count(n) > 1))}); "
                        "their outputs would collide in --output")
    device = resolve_device(args.device)
    model, meta = load_lifter(args.checkpoint, device)
    _check_layout(meta, "h36m", args.checkpoint)
    placement = placement_for_cli("cpu" if args.device == "auto" else args.device,
                                  parse_placement_resources(args.resources), args.actors)
    start = time.perf_counter()
    found = videos_to_detections_on_ray(args.video, pose_model, args.det_model, placement)
    print(f"2D: {len(args.video)} videos through {Path(pose_model).name} in {time.perf_counter() - start:.1f} s "
          f"(Ray Data {where_text(placement)})")
    for video, (det, fps) in zip(args.video, found):
        track, read, info = video_track(args, video, det, fps)
        print(f"{video}: {read.frames} frames ({read.layout}); the person was missing in {read.interpolated} "
              "frame(s), interpolated")
        lift_and_write(args, model, meta, *track_arrays(track, info), device,
                       str(Path(args.output) / Path(video).stem))
    return 0


def lift_and_write(args: argparse.Namespace, model: Any, meta: dict, skeleton: Any, normalised: np.ndarray,
                   arrays: dict[str, np.ndarray], metadata: dict[str, Any], device: str, output: str,
                   on_ray: bool = False) -> int:
    """Lift one sequence (here, or as Ray Data batch inference), write `output` and say so."""
    frames = int(meta["frames"])
    start = time.perf_counter()
    if on_ray:
        poses, device = _lift_on_ray(args, model, meta, normalised, skeleton)
    else:
        poses = lift_sequence(model, normalised, frames, skeleton, args.flip, args.batch_size, device)
    elapsed = time.perf_counter() - start
    n = poses.shape[0]
    arrays["poses_3d"] = poses
    metadata.update({
        "format": OUTPUT_FORMAT,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "model": meta["model"],
        "frames": frames,
        "output_mode": model.output_mode,
        "flip": bool(args.flip),
        "layout": skeleton.name,
        "joint_names": list(skeleton.joint_names),
        "parents": list(skeleton.parents),
        "units": "metres",
        "coordinates": "camera space (x right, y down, z forward), root-relative, root joint at 0",
        "num_frames": n,
        "device": device,
        "seconds": round(elapsed, 4),
    })
    if "gt_3d" in arrays:
        metadata["metrics"] = sequence_metrics(poses, arrays["gt_3d"], arrays["valid"])
    paths = write_outputs(output, arrays, metadata)
    print(f"lifted {n} frames with {meta['model'].get('name')} (T={frames}, flip={'on' if args.flip else 'off'}) "
          f"on {device} in {elapsed:.2f} s ({n / max(elapsed, 1e-9):.0f} frames/s)")
    if "metrics" in metadata:
        m = metadata["metrics"]
        fmt = lambda v: "-" if v is None else f"{v:.1f} mm"  # noqa: E731
        print(f"{metadata['dataset']['subject']} / {metadata['dataset']['action']} / camera "
              f"{metadata['dataset']['camera']}: MPJPE {fmt(m['mpjpe'])}, P-MPJPE {fmt(m['p_mpjpe'])}, "
              f"N-MPJPE {fmt(m['n_mpjpe'])}, MPJVE {fmt(m['mpjve'])}")
    for p in paths:
        print(f"wrote {p}")
    return 0
