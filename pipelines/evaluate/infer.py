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
from pipelines.config import add_location_argument

OUTPUT_FORMAT = "raylift-inference/1"
FRAMES_PER_FORWARD = 4096  # default batch: about this many input frames per forward pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--checkpoint", role="input", required=True, help="raylift checkpoint directory")
    src = parser.add_mutually_exclusive_group(required=True)
    add_location_argument(src, "--input", role="input", help="2D keypoints file (.npz or .json, pixels)")
    add_location_argument(src, "--dataset", role="input", help="experiment YAML or a VideoPose3D-format directory (e.g. cmu-dev)")
    add_location_argument(parser, "--output", role="output", required=True, help="P.npz, P.json, or P (writes P.npz and P.json)")
    parser.add_argument("--layout", choices=("coco", "h36m"), default="coco", help="joint layout of --input")
    parser.add_argument("--person", type=int, default=None, help="person index in a (P, F, 17, C) file")
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


def run(args: argparse.Namespace) -> int:
    from preprocessing.sources.keypoint_formats import load_keypoints, normalize_screen, screen_to_pixels
    from preprocessing.skeleton import H36M17, get_skeleton

    if args.batch_size is not None and args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    # A single file lifts in this process; a dataset sequence runs where Ray's resources are.
    device = resolve_device(args.device) if args.input is not None else "cpu"
    arrays: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {}
    if args.input is not None:
        track = load_keypoints(args.input, args.layout, args.person, args.width, args.height)
        model, meta = load_lifter(args.checkpoint, device)
        _check_layout(meta, "h36m", args.checkpoint)
        skeleton = H36M17
        keypoints_px = track.keypoints
        normalised = normalize_screen(track.keypoints, track.width, track.height)
        if track.scores is not None:
            arrays["scores"] = track.scores
        metadata["input"] = {
            "path": str(Path(track.path).resolve()), "layout": track.source_layout,
            "person": track.person, "width": track.width, "height": track.height,
        }
        fps = None
    else:
        if not (args.subject and args.action):
            raise DataError("--dataset needs --subject and --action")
        from preprocessing.sources import load_sequences

        data = load_sequences(dataset_source(args.dataset, args.subject, args.keypoints_2d))
        seq = find_sequence(data.sequences, args.subject, args.action, str(args.camera))
        model, meta = load_lifter(args.checkpoint, device)
        _check_layout(meta, seq.layout, args.checkpoint)
        skeleton = get_skeleton(seq.layout)
        w, h = seq.image_size
        normalised = seq.keypoints_2d.astype(np.float32)
        keypoints_px = screen_to_pixels(normalised, w, h)
        arrays["gt_3d"] = seq.positions_3d.astype(np.float32)
        arrays["valid"] = seq.valid.astype(bool)
        metadata["input"] = {"layout": seq.layout, "width": float(w), "height": float(h)}
        metadata["dataset"] = {
            "path": str(Path(args.dataset).resolve()), "subject": seq.subject, "action": seq.action,
            "activity": seq.activity, "camera": seq.camera, "camera_index": seq.camera_index,
        }
        fps = float(seq.fps)

    frames = int(meta["frames"])
    start = time.perf_counter()
    if args.input is not None:
        poses = lift_sequence(model, normalised, frames, skeleton, args.flip, args.batch_size, device)
    else:
        poses, device = _lift_on_ray(args, model, meta, normalised, skeleton)
    elapsed = time.perf_counter() - start
    n = poses.shape[0]
    arrays["poses_3d"] = poses
    arrays["keypoints_2d"] = keypoints_px
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
        "fps": fps,
        "device": device,
        "seconds": round(elapsed, 4),
    })
    if "gt_3d" in arrays:
        metadata["metrics"] = sequence_metrics(poses, arrays["gt_3d"], arrays["valid"])
    paths = write_outputs(args.output, arrays, metadata)
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
