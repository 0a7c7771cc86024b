"""`raylift bench model`: CPU forward+backward step time of every registered model.

A smoke benchmark, not a pass/fail test: for each model of `models.registry.MODELS` at its paper
configuration (optionally reduced with `--set model.KEY=VALUE`, applied to every model that has
the key), it times `--steps` training steps (forward, a squared-output loss, backward, zeroing
gradients) after `--warmup` untimed ones, on a random batch of `--batch` windows of `--frames`
frames, and prints a table: model, parameters, T, batch, ms/step and frames/s, where frames are the
3D frames the step predicts (batch x T for seq2seq models, batch for seq2frame ones, x views for
multiview).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=None,
                        help="comma-separated registry names (default: every registered model)")
    parser.add_argument("--frames", type=int, default=27, help="window length T (default 27)")
    parser.add_argument("--joints", type=int, default=17)
    parser.add_argument("--batch", type=int, default=2, help="windows per step (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                        help="config override applied to every model that has KEY (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def _config(name: str, overrides: list[str]) -> Any:
    """`name`'s config with the overrides whose key it has (so `model.depth=2` shrinks all models)."""
    from models.registry import config_class
    from pipelines.models.tools import model_config
    from preprocessing.schema import ConfigError, parse_override

    keys = {f.name for f in fields(config_class(name))}
    mine = []
    for text in overrides:
        parts, _ = parse_override(text)
        if len(parts) != 2 or parts[0] != "model":
            raise ConfigError(f"--set {text!r}: expected model.KEY=VALUE")
        if parts[1] in keys:
            mine.append(text)
    return model_config(name, mine)


def bench_one(name: str, frames: int, joints: int, batch: int, steps: int, warmup: int,
              overrides: list[str]) -> dict[str, Any]:
    """Time forward+backward steps of one model on the CPU; returns one table row."""
    import torch

    from models.registry import build_model, count_parameters
    from models.cost import example_input

    torch.manual_seed(0)
    model = build_model(_config(name, overrides), frames=frames, joints=joints).train()
    x = example_input(model, batch, frames, joints)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        model(x).square().mean().backward()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    per_step = sum(times) / len(times)
    predicted = batch * (frames if model.output_mode == "seq2seq" else 1) * (x.shape[2] if model.multiview else 1)
    return {
        "model": name,
        "parameters": count_parameters(model),
        "frames": frames,
        "batch": batch,
        "ms_per_step": per_step * 1e3,
        "frames_per_s": predicted / per_step,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    from pipelines.viz.tables import render_table

    return render_table(["model", "params", "T", "batch", "ms/step", "frames/s"],
                        [[r["model"], f"{r['parameters']:,}", r["frames"], r["batch"], f"{r['ms_per_step']:.1f}",
                          f"{r['frames_per_s']:.1f}"] for r in rows])


def run(args: argparse.Namespace) -> int:
    import torch

    from models.registry import MODELS
    from preprocessing.schema import ConfigError

    names = list(MODELS) if not args.models else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown model {unknown[0]!r} (expected some of {', '.join(MODELS)})")
    for key in ("frames", "joints", "batch", "steps"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in names:
        rows.append(bench_one(name, args.frames, args.joints, args.batch, args.steps, args.warmup, args.overrides))
        if not args.json:
            print(format_table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else format_table(rows), flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"(CPU, {torch.get_num_threads()} threads, {args.steps} timed steps after {args.warmup} warm-up)")
    return 0
