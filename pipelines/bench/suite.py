"""`raylift bench suite --official-root DIR --out DIR [--tiny] [--budget-s S]`: the GPU table.

raylift next to the authors' code (`bench train --compare-official`), for MixSTE-243,
PoseFormer-81, CrossFormer-81 and Fusionformer-9: eager and compiled, bf16 and fp32, batch
4/16/64, in one process. Rows are appended to `<out>/bench.jsonl` as they finish (a run cut short
keeps what it measured) and the markdown table is rewritten to `<out>/bench.md` after each one.
Measurements run in priority order (the headline settings first) and stop starting new ones when
`--budget-s` is spent, so one device call of bounded length always returns a table.

`--tiny` shrinks every model and batch so the whole suite runs on a CPU (what
`pipelines/bench/gpu_suite.sh` is proven with before it goes to a GPU).
`<official-root>/<model>` is a checkout of each authors' repository (never vendored).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from pipelines.bench.train import bench_train, format_table
from pipelines.config import add_location_argument

# (raylift model, T, model overrides at full size, model overrides in tiny mode, tiny T)
MODELS: dict[str, tuple[int, list[str], list[str], int]] = {
    # the papers' settings are each model's config defaults (configs/*_h36m_*.yaml cite them)
    "mixste": (243, [], ["model.dim=16", "model.depth=1", "model.heads=2"], 9),
    "poseformer": (81, [], ["model.spatial_dim=16", "model.depth=1", "model.heads=2"], 9),
    # the released CrossFormer hard-wires 81 frames and 17*32 channels: tiny keeps T and width
    "crossformer": (81, [], ["model.depth=1"], 81),
    "fusionformer": (9, [], ["model.dim=16", "model.L_s=1", "model.L_c=1", "model.heads=2"], 9),
}


@dataclass(frozen=True)
class Setting:
    model: str
    batch: int
    bf16: bool
    compile_mode: Optional[str]  # None: eager


def settings(batches: tuple[int, ...], compile_modes: tuple[str, ...], bf16: bool = True) -> list[Setting]:
    """Every (model, batch, precision, compile) in priority order: bf16 eager at the middle batch
    first (the headline comparison), then the other batches, fp32, and the compiled runs.
    `bf16=False` leaves the bf16 rows out (a CPU, where training runs in fp32)."""
    middle = batches[len(batches) // 2]
    order = [middle] + [b for b in batches if b != middle]
    out: list[Setting] = []
    for mode in (None, *compile_modes):
        for precision in ((True, False) if bf16 else (False,)):
            for batch in order:
                out.extend(Setting(m, batch, precision, mode) for m in MODELS)
    return out


def run_suite(official_root: str, out_dir: str, tiny: bool = False, budget_s: float = 480.0,
              batches: tuple[int, ...] = (4, 16, 64), compile_modes: tuple[str, ...] = ("default",),
              steps: int = 10, warmup: int = 3, device: Optional[str] = None) -> list[dict[str, Any]]:
    """Run the table; returns every row (also written to `out_dir`)."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    jsonl, table = os.path.join(out_dir, "bench.jsonl"), os.path.join(out_dir, "bench.md")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    for s in settings(batches, compile_modes, bf16=on_cuda):
        frames, overrides, tiny_overrides, tiny_frames = MODELS[s.model]
        if tiny:
            frames, overrides = tiny_frames, tiny_overrides
        if time.perf_counter() - start > budget_s:
            result = [{"model": s.model, "implementation": impl, "frames": frames, "batch": s.batch,
                       "precision": "bf16 autocast" if s.bf16 else "fp32", "compile": s.compile_mode is not None,
                       "compile_mode": s.compile_mode, "device": "-", "error": "skipped: time budget spent"}
                      for impl in ("raylift", "official")]
        else:
            try:
                result = bench_train(s.model, frames, s.batch, steps=steps, warmup=warmup, device=device,
                                     bf16=s.bf16, overrides=overrides, compile_mode=s.compile_mode,
                                     official_dir=os.path.join(official_root, s.model))
            except Exception as e:  # one failing setting must not lose the rest of the table
                result = [{"model": s.model, "implementation": "raylift+official", "frames": frames,
                           "batch": s.batch, "precision": "bf16 autocast" if s.bf16 else "fp32",
                           "compile": s.compile_mode is not None, "compile_mode": s.compile_mode, "device": "-",
                           "error": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}]
            if s.compile_mode is not None:
                torch._dynamo.reset()  # drop compiled graphs before the next setting
        rows.extend(result)
        with open(jsonl, "a") as f:
            for r in result:
                f.write(json.dumps(r) + "\n")
        with open(table, "w") as f:
            f.write(format_table(rows) + "\n")
        print(format_table(result).split("\n\ndevice")[0].split("\n", 2)[-1], flush=True)
    return rows


# Human3.6M training camera-frames (S1, S5-S8, 4 cameras), the count VideoPose3D-style loaders
# report ("Training on 1559752 frames"); the MixSTE recipe trains 120 epochs on it plus flipped
# copies (configs/mixste_h36m_cpn.yaml). Seq2seq edge padding adds at most one window per sequence.
H36M_TRAIN_FRAMES = 1_559_752
RECIPE_EPOCHS = 120


def summarize(out_dir: str, train_metrics: Optional[str], train_frames: int = 243, train_batch: int = 16) -> str:
    """summary.md: Ray Train's overhead against the bare benchmark and the projected recipe hours.

    Bare: raylift MixSTE, eager, bf16 where measured (fp32 on CPU), at the Ray Train run's batch
    (16 in `configs/bench_mixste243_gpu.yaml`).
    Ray Train: mean windows/s of its epochs after the first (the first pays start-up) x T.
    Projection: 120 epochs x 2 (flips) x H36M training frames / raylift's frames/s at batch 4 (the
    recipe's batch) and at the fastest batch measured.
    """
    import csv

    rows = []
    with open(os.path.join(out_dir, "bench.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]

    precision = "bf16 autocast" if any(r.get("precision") == "bf16 autocast" and r.get("frames_per_s")
                                       for r in rows) else "fp32"

    def fps(batch: Optional[int] = None, compiled: Optional[bool] = None) -> list[dict]:
        return [r for r in rows if r.get("model") == "mixste" and r.get("implementation") == "raylift"
                and r.get("frames_per_s") and r.get("precision") == precision
                and (batch is None or r["batch"] == batch) and (compiled is None or r["compile"] == compiled)]

    lines = ["# GPU summary", ""]
    bare = fps(train_batch, False)
    train_fps = None
    if train_metrics and os.path.exists(train_metrics):
        with open(train_metrics) as f:
            epochs = [r for r in csv.DictReader(f)]
        later = epochs[1:] or epochs
        if later:
            train_fps = train_frames * sum(float(r["windows_per_s"]) for r in later) / len(later)
            lines.append(f"Ray Train (1 worker, epochs {later[0]['epoch']}-{later[-1]['epoch']}): "
                         f"{train_fps:,.0f} train frames/s")
    else:
        lines.append(f"Ray Train: no metrics file ({train_metrics})")
    if bare:
        lines.append(f"bare benchmark (raylift eager {precision}, batch {train_batch}, T={bare[0]['frames']}): "
                     f"{bare[0]['frames_per_s']:,.0f} train frames/s")
        if train_fps:
            lines.append(f"Ray Train overhead: {100 * (1 - train_fps / bare[0]['frames_per_s']):.1f}% "
                         "(epoch time includes data reading and the loss logging syncs)")
    recipe_frames = RECIPE_EPOCHS * 2 * H36M_TRAIN_FRAMES
    for label, candidates in (("batch 4 (the recipe's)", fps(4)), ("fastest batch", fps())):
        if candidates:
            best = max(candidates, key=lambda r: r["frames_per_s"])
            how = f"batch {best['batch']}, {best['compile_mode'] or 'eager'}"
            lines.append(f"projected full MixSTE-243 recipe at {label} ({how}): "
                         f"{recipe_frames / best['frames_per_s'] / 3600:.2f} h "
                         f"({RECIPE_EPOCHS} epochs x 2 x {H36M_TRAIN_FRAMES:,} frames)")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--official-root", role="input", required=True,
                        help="folder holding the authors' checkouts as mixste/, poseformer/, crossformer/, fusionformer/")
    add_location_argument(parser, "--out", role="output", required=True, help="folder for bench.jsonl and bench.md")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (a CPU proof run)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="start no new measurement after this many seconds (default 480)")
    parser.add_argument("--batches", default=None, help="comma-separated windows per step (default 4,16,64; tiny 2)")
    parser.add_argument("--compile-modes", default="default",
                        help="comma-separated torch.compile modes to run after eager (default 'default'; '' for none)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; tiny 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 on a shared, busy CPU, where 2 threads ran 20x slower)")
    parser.add_argument("--summarize", metavar="METRICS_CSV", default=None,
                        help="instead of measuring: write <out>/summary.md from <out>/bench.jsonl and this Ray "
                             "Train metrics.csv (Ray overhead, projected recipe hours)")
    parser.add_argument("--train-frames", type=int, default=243, help="T of the Ray Train run (default 243)")
    parser.add_argument("--train-batch", type=int, default=16, help="windows per step of the Ray Train run (default 16)")


def run(args: argparse.Namespace) -> int:
    import torch

    from preprocessing.schema import ConfigError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.summarize is not None:
        print(summarize(args.out, args.summarize, args.train_frames, args.train_batch), end="")
        return 0
    try:
        batches = tuple(int(b) for b in (args.batches or ("2" if args.tiny else "4,16,64")).split(","))
    except ValueError:
        raise ConfigError(f"--batches {args.batches!r}: expected comma-separated integers") from None
    modes = tuple(m for m in args.compile_modes.split(",") if m)
    steps = args.steps if args.steps is not None else (1 if args.tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    run_suite(args.official_root, args.out, tiny=args.tiny, budget_s=args.budget_s, batches=batches,
              compile_modes=modes, steps=steps, warmup=warmup, device=args.device)
    return 0
