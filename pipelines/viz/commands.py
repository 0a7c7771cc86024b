"""`raylift viz`: pictures people want to look at.

- `viz anim --input R [--gt G] --output out.gif|.mp4`: input 2D keypoints beside the predicted 3D
  skeleton (and the ground truth when R holds `gt_3d`, as dataset-mode `raylift infer` outputs do,
  or from `--gt G`: another infer output's `gt_3d`, else its `poses_3d`).
- `viz curves --run DIR`: training curves (PNG) from the run's `metrics.csv`, drawn by
  `pipelines.viz.plots.training_curves_png` (the same figure training writes).
- `viz results --results results.json`: per-group (H36M activity, 3DHP sequence) bars of every
  metric (PNG) from `raylift evaluate`'s JSON (`results` = {"model", "baseline"} summaries).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from preprocessing.errors import DataError
from pipelines.config import add_location_argument

DEFAULT_FPS = 25.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="viz", metavar="WHAT", required=True)
    a = sub.add_parser("anim", help="animate input 2D and predicted (and ground-truth) 3D skeletons")
    add_location_argument(a, "--input", role="input", required=True, help="a raylift infer output (.npz or .json)")
    add_location_argument(a, "--gt", role="input", help="another infer output whose gt_3d (else poses_3d) is drawn as a third panel")
    add_location_argument(a, "--output", role="output", required=True, help="out.gif or out.mp4")
    add_location_argument(a, "--video", role="input",
                          help="the video the 2D came from: the 2D skeleton is drawn over its frames")
    a.add_argument("--fps", type=float, default=None, help="frames per second (default: the input's fps / stride, else 25)")
    a.add_argument("--max-frames", type=int, default=None, help="render at most this many frames")
    a.add_argument("--stride", type=int, default=1, help="render every n-th frame")
    c = sub.add_parser("curves", help="training curves PNG from a run's metrics.csv")
    add_location_argument(c, "--run", role="input", required=True, help="run directory holding metrics.csv (local or s3://)")
    add_location_argument(c, "--output", role="output", help="PNG path (default <run>/curves.png)")
    r = sub.add_parser("results", help="per-activity error bars PNG from an evaluation results.json")
    add_location_argument(r, "--results", role="input", required=True, help="results.json written by raylift evaluate")
    add_location_argument(r, "--output", role="output", help="PNG path (default: beside the JSON, <name>.png)")


def run(args: argparse.Namespace) -> int:
    return {"anim": run_anim, "curves": run_curves, "results": run_results}[args.viz](args)


# --- anim -------------------------------------------------------------------------------------


def animation_panels(arrays: dict[str, np.ndarray], gt: Optional[np.ndarray], gt_title: str,
                     video: Optional[str] = None, frame_size: Optional[tuple[float, float]] = None) -> list:
    """The input 2D (over `video`'s frames, stretched to `frame_size`, the size of the image the
    2D is measured in), the predicted 3D and the ground truth 3D when there is one."""
    from pipelines.viz.render import Panel, VideoFrames

    panels = []
    if video is not None and "keypoints_2d" not in arrays:
        raise DataError(f"--video {video}: the input has no keypoints_2d to draw over it")
    if "keypoints_2d" in arrays:
        panels.append(Panel("input 2D", np.asarray(arrays["keypoints_2d"], np.float32), "2d",
                            VideoFrames(video) if video is not None else None, frame_size))
    panels.append(Panel("predicted 3D", np.asarray(arrays["poses_3d"], np.float32), "3d"))
    if gt is not None:
        panels.append(Panel(gt_title, np.asarray(gt, np.float32), "3d"))
    return panels


def frame_indices(num_frames: int, stride: int, max_frames: Optional[int]) -> list[int]:
    if stride < 1:
        raise DataError(f"--stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise DataError(f"--max-frames must be >= 1, got {max_frames}")
    return list(range(0, num_frames, stride))[:max_frames]


def run_anim(args: argparse.Namespace) -> int:
    from pipelines.evaluate.infer import load_inference_output
    from pipelines.viz.render import SkeletonAnimator, iter_frames, write_animation
    from preprocessing.skeleton import get_skeleton

    arrays, meta = load_inference_output(args.input)
    skeleton = get_skeleton(meta.get("layout", "h36m"))
    gt, gt_title = arrays.get("gt_3d"), "ground truth 3D"
    if args.gt:
        other, _ = load_inference_output(args.gt)
        gt, gt_title = (other["gt_3d"], "ground truth 3D") if "gt_3d" in other else (other["poses_3d"], Path(args.gt).stem)
        if gt.shape != arrays["poses_3d"].shape:
            raise DataError(f"{args.gt}: poses {gt.shape} do not match {args.input} {arrays['poses_3d'].shape}")
    frames = frame_indices(arrays["poses_3d"].shape[0], args.stride, args.max_frames)
    fps = args.fps or (meta["fps"] / args.stride if meta.get("fps") else DEFAULT_FPS)
    source = meta.get("input") or {}
    frame_size = (float(source["width"]), float(source["height"])) if source.get("width") and source.get("height") else None
    animator = SkeletonAnimator(animation_panels(arrays, gt, gt_title, args.video, frame_size), skeleton)
    start = time.perf_counter()
    count = write_animation(iter_frames(animator, frames), args.output, fps)
    elapsed = time.perf_counter() - start
    print(f"wrote {args.output}: {count} frames at {fps:g} fps, rendered in {elapsed:.1f} s "
          f"({count / max(elapsed, 1e-9):.1f} frames/s)")
    return 0


# --- curves ---------------------------------------------------------------------------------


def run_curves(args: argparse.Namespace) -> int:
    """The training engineer's figure (`pipelines.viz.plots`) from the run's `metrics.csv` (local or S3)."""
    from pipelines.viz.plots import training_curves_png
    from preprocessing.store.storage import write_local_atomic
    from pipelines.train.logs import CSV_NAME, read_csv
    from preprocessing.store import storage

    run_uri = args.run.rstrip("/")
    if storage.is_local(run_uri) and not Path(storage.open_location(run_uri).path).is_dir():
        raise DataError(f"{run_uri}: run directory not found")
    try:
        history = read_csv(run_uri)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{storage.join(run_uri, CSV_NAME)}: unreadable metrics ({e})") from None
    if not history:
        raise DataError(f"{storage.join(run_uri, CSV_NAME)}: no epochs logged (file missing or empty)")
    missing = [k for k in ("epoch", "loss") if any(k not in row for row in history)]
    if missing:
        raise DataError(f"{storage.join(run_uri, CSV_NAME)}: rows lack column(s) {missing}")
    if args.output:
        out = Path(args.output)
    elif not storage.is_local(run_uri):
        out = Path(f"{run_uri.rsplit('/', 1)[-1]}_curves.png")
    else:
        out = Path(run_uri) / "curves.png"
    write_local_atomic(out, training_curves_png(history, title=run_uri.rsplit("/", 1)[-1]))
    print(f"wrote {out} ({len(history)} epochs)")
    return 0


# --- results ----------------------------------------------------------------------------------


def results_summaries(doc: Any, where: str) -> dict[str, dict]:
    """`raylift evaluate`'s `results`: {name ("model", "baseline"): `metrics.summarise` output}."""
    res = doc.get("results") if isinstance(doc, dict) else None
    if not (isinstance(res, dict) and res and all(isinstance(v, dict) and isinstance(v.get("groups"), dict) for v in res.values())):
        raise DataError(f"{where}: no 'results' of per-group tables (expected raylift evaluate's results.json)")
    return res


def plot_results(doc: Any, title: str, output: Path) -> Path:
    """One bar panel per metric: each group (activity / sequence) and the mean over groups, one bar
    colour per summary (the model, the mean-pose baseline)."""
    from pipelines.evaluate.metrics import METRIC_LABELS
    from pipelines.viz.render import new_figure, save_figure

    summaries = results_summaries(doc, title)
    metrics: list[str] = [m for m in doc.get("metrics") or [] if isinstance(m, str)]
    for s in summaries.values():
        for row in s["groups"].values():
            metrics += [m for m, v in row.items() if m != "frames" and isinstance(v, (int, float)) and m not in metrics]
    if not metrics:
        raise DataError(f"{title}: the results' groups hold no numeric metrics")
    # The summary bar is what the field reports: H36M's action-wise mean, 3DHP's pooled "All".
    summary_key = "frame_wise" if doc.get("summary_key") == "frame_wise" else "group_mean"
    mean_label = str(doc.get("frame_wise_label" if summary_key == "frame_wise" else "group_mean_label", "mean"))
    if doc.get("protocol"):
        title = f"{title}\n{doc['protocol']}"
    groups = list(next(iter(summaries.values()))["groups"])
    fig = new_figure(max(6.0, 0.55 * (len(groups) + 1) * max(1, len(summaries)) + 2), 3.2 * len(metrics))
    width = 0.8 / len(summaries)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, i + 1)
        labels = groups + [mean_label]
        for k, (name, s) in enumerate(summaries.items()):
            values = [s["groups"].get(g, {}).get(metric) for g in groups]
            values.append(s.get(summary_key, {}).get(metric))
            y = np.array([np.nan if v is None else v for v in values], dtype=float)
            pos = np.arange(len(labels)) + (k - (len(summaries) - 1) / 2) * width
            bars = ax.bar(pos, y, width=width, label=name)
            for b, v in zip(bars, y):
                if np.isfinite(v):
                    ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
        if len(summaries) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, output)


def run_results(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not path.is_file():
        raise DataError(f"{path}: results file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    out = plot_results(doc, path.stem, Path(args.output) if args.output else path.with_suffix(".png"))
    print(f"wrote {out}")
    return 0
