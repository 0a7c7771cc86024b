"""`raylift bench infer`: a lifter's CPU inference speed in PyTorch, TorchScript and ONNX Runtime.

Two figures per runtime, for one checkpoint:

- **offline frames/s**: a whole sequence of `--frames` 2D frames lifted with `raylift infer`'s
  window plan (`pipelines.evaluate.windows`: ceil(N/T) windows for seq2seq models, one per frame
  for seq2frame ones), `--batch` windows per forward pass, no test-time flip; best of `--repeats`;
- **streaming latency**: frames arrive one at a time; each new frame runs one window of the last T
  frames (batch 1) and yields one 3D pose: the newest frame's for a seq2seq model, the window
  centre's for a seq2frame one, which therefore lags (T - 1) / 2 frames behind the input (printed).
  Median and 95th percentile over `--steps` frames after `--warmup`.

PyTorch eager is what a user runs without raylift's export; TorchScript and ONNX are the files
`raylift export` writes (made here in a temporary directory, with the same check against PyTorch).
The inputs are random windows in the normalised screen range: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.config import add_location_argument

RUNTIMES = ("pytorch", "torchscript", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--checkpoint", role="input", required=True, help="raylift checkpoint directory")
    parser.add_argument("--frames", type=int, default=2000, help="offline: frames in the lifted sequence (default 2000)")
    parser.add_argument("--batch", type=int, default=64, help="offline: windows per forward pass (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="offline: runs, the best is reported (default 3)")
    parser.add_argument("--steps", type=int, default=200, help="streaming: timed frames (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="streaming: untimed frames first (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: torch's)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, of {', '.join(RUNTIMES)}")


def runners(model, meta: dict, names: list[str], workdir: Path, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> a function of (B, T, J, 2) float32 windows to (B, K, J, 3)."""
    import torch

    from pipelines.models.export import check_export, example_windows, export_onnx, export_torchscript

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    example = example_windows(meta, 2)
    for name in names:
        if name == "pytorch":
            def eager(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return model(torch.from_numpy(x)).numpy()
            out[name] = eager
        elif name == "torchscript":
            out[name] = export_torchscript(model, example, workdir / "model.pt")
        else:
            out[name] = export_onnx(model, example, workdir / "model.onnx", threads=threads)
        if name != "pytorch":
            check_export(model, meta, out[name], name, "bench")
    return out


def offline_fps(run: Callable[[np.ndarray], np.ndarray], meta: dict, mode: str, frames: int, batch: int,
                repeats: int) -> float:
    """Frames per second lifting a `frames`-frame sequence through the window plan; best of `repeats`."""
    from pipelines.evaluate.windows import iter_batches, plan_windows

    plan = plan_windows(frames, int(meta["frames"]), mode)
    seq = np.random.default_rng(0).uniform(-1, 1, (frames, int(meta["joints"]), 2)).astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for window in iter_batches(plan, batch):
            run(np.ascontiguousarray(seq[plan.indices(window)]))
        best = min(best, time.perf_counter() - start)
    return frames / best


def streaming_ms(run: Callable[[np.ndarray], np.ndarray], meta: dict, steps: int, warmup: int) -> tuple[float, float]:
    """(median, p95) milliseconds from a new frame to its pose, one window of the last T frames each."""
    t, j = int(meta["frames"]), int(meta["joints"])
    rng = np.random.default_rng(0)
    window = rng.uniform(-1, 1, (1, t, j, 2)).astype(np.float32)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        window = np.concatenate([window[:, 1:], rng.uniform(-1, 1, (1, 1, j, 2)).astype(np.float32)], axis=1)
        run(window)
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.models.export import load_for_export
    from pipelines.viz.tables import render_table
    from preprocessing.errors import DataError

    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNTIMES))
    if unknown or not names:
        raise DataError(f"--runtimes {args.runtimes!r}: expected some of {', '.join(RUNTIMES)}")
    for flag in ("frames", "batch", "repeats", "steps"):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model, meta = load_for_export(args.checkpoint)
    mode, t = model.output_mode, int(meta["frames"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="raylift-bench-infer-") as workdir:
        for name, fn in runners(model, meta, names, Path(workdir), threads).items():
            fps = offline_fps(fn, meta, mode, args.frames, args.batch, args.repeats)
            median, p95 = streaming_ms(fn, meta, args.steps, args.warmup)
            rows.append([name, f"{fps:,.0f}", f"{median:.2f}", f"{p95:.2f}"])
    lag = 0 if mode == "seq2seq" else (t - 1) // 2
    print(f"{meta['model'].get('name')} (T={t}, {mode}) on CPU, {threads} thread(s); offline: {args.frames} frames, "
          f"{args.batch} windows per pass, no flip, best of {args.repeats}; streaming: batch 1, "
          f"{args.steps} frames, pose lag {lag} frame(s)")
    print(render_table(["runtime", "offline frames/s", "streaming median ms", "streaming p95 ms"], rows))
    return 0
