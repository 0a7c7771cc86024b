"""`raylift bench relations --config C [--seeds 0,1,2]`: does the image-relations module help?

MPSTR's full model has more parameters than its no-relations baseline, so "full beats baseline"
may only mean "the bigger model learns first". This ablation adds the control that separates the
two: the same module, every parameter kept, with its attention masked so each image attends only
to itself (`model.masked_relations`). For every seed it trains, from the config as given:

- `full`: the relations module (temporal and cross-view attention);
- `masked`: the same parameters, no image sees another;
- `none`: the paper's baseline (`model.baseline`), no relations module;

each with `train.select: val` (the checkpoint is the epoch with the lowest 2D error on the
validation subjects, `data.source.val_subjects`, so the test subjects never choose it) and the
same data, steps, schedule and seed. Each chosen checkpoint is scored on the held-out test split
with `raylift evaluate`'s 2D protocol; the table gives mean ± sample standard deviation over the
seeds, each seed's pixel error, and the constant mean pose in the same boxes.
Figures, never pass/fail (`tests/test_relations.py` asserts the mechanism).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from pipelines.config import add_location_argument

VARIANTS: dict[str, dict[str, bool]] = {
    "full": {"model.masked_relations": False, "model.baseline": False},
    "masked": {"model.masked_relations": True, "model.baseline": False},
    "none": {"model.masked_relations": False, "model.baseline": True},
}
METRICS = (("pixel_error", "px error", 1.0, ".2f"), ("PCK@0.05", "PCK@0.05 %", 100.0, ".1f"), ("AP", "AP", 100.0, ".1f"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    add_location_argument(parser, "--out", role="output", default=None, help="directory for relations.md/json (default: the runs' storage)")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; at least one integer, no repeats (a ValueError naming --seeds)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct integers, got {text!r}")
    return seeds


def variant_config(path: str, overrides: list[str], name: str, variant: str, seed: int):
    """The experiment of one (variant, seed): the config with the variant's switches, the seed,
    validation-chosen checkpoints and a run name of its own (`<name>_<variant>_s<seed>`)."""
    from pipelines.config import load_config

    sets = [f"{k}={str(v).lower()}" for k, v in VARIANTS[variant].items()]
    sets += [f"train.seed={seed}", "train.select=val", "train.evaluate=false", f"name={name}_{variant}_s{seed}"]
    return load_config(path, [*overrides, *sets])


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: the seeds, parameters, and for each metric the per-seed values, mean and sample sd."""
    out: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine], "parameters": mine[0]["parameters"]}
        for key, _, scale, _ in METRICS:
            values = np.array([r["overall"][key] * scale for r in mine], dtype=np.float64)
            entry[key] = {"values": values.tolist(), "mean": float(values.mean()),
                          "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        out[variant] = entry
    return out


def table(summary: dict[str, dict[str, Any]], mean_pose: dict[str, float], markdown: bool = False) -> str:
    """One row per variant (mean ± sd over seeds, then each seed's px error), and the mean pose."""
    from pipelines.viz.tables import render_table

    head = ["variant", "parameters", *[label + " (mean ± sd)" for _, label, _, _ in METRICS], "px error per seed"]
    rows = []
    for variant, entry in summary.items():
        cells = [f"{entry[k]['mean']:{fmt}} ± {entry[k]['sd']:{fmt}}" for k, _, _, fmt in METRICS]
        rows.append([variant, f"{entry['parameters']:,}", *cells,
                     ", ".join(f"{v:.2f}" for v in entry["pixel_error"]["values"])])
    rows.append(["mean pose (training mean in the crop box)", "0",
                 *[f"{mean_pose[k] * scale:{fmt}}" for k, _, scale, fmt in METRICS], ""])
    return render_table(head, rows, markdown, left=1)


def run(args: argparse.Namespace) -> int:
    from models.registry import build_model, count_parameters
    from pipelines.config import load_config
    from pipelines.evaluate.batch import placement_for
    from pipelines.evaluate.images2d import evaluate_image_checkpoint
    from pipelines.train.driver import is_image_config, run_training
    from preprocessing.errors import DataError
    from preprocessing.store import storage

    seeds = parse_seeds(args.seeds)
    base = load_config(args.config, args.overrides)
    if not is_image_config(base) or base.model.name != "mpstr":
        raise ValueError(f"{args.config}: model.name {base.model.name!r}: the relations ablation is for mpstr")
    if not base.data.source.val_subjects:
        raise ValueError(f"{args.config}: data.source.val_subjects is empty: checkpoints are chosen on validation "
                         "subjects, never on the test split")
    runs, dataset, result = [], None, None
    for seed in seeds:
        for variant in VARIANTS:
            cfg = variant_config(args.config, args.overrides, base.name, variant, seed)
            outcome = run_training(cfg, dataset=dataset, evaluate_after=False)
            dataset = outcome.dataset
            if outcome.selected_checkpoint is None:
                raise DataError(f"{cfg.name}: training produced no checkpoint")
            result = evaluate_image_checkpoint(outcome.selected_checkpoint, dataset, placement_for(cfg.train),
                                               batch_size=cfg.eval.batch_size, ship=False, progress=lambda _: None)
            (label, scored), = result["models"].items()
            params = count_parameters(build_model(cfg.model, frames=cfg.data.images.frames,
                                                  joints=dataset.joints))
            runs.append({"variant": variant, "seed": seed, "run": outcome.run_uri, "checkpoint": outcome.selected_checkpoint,
                         "epoch": scored["epoch"], "parameters": params, "overall": scored["results"]["overall"]})
            print(f"{variant} seed {seed}: {label}, epoch {scored['epoch']} (best on validation): "
                  f"{scored['results']['overall']['pixel_error']:.2f} px", flush=True)
    summary = summarise(runs)
    mean_pose = result["mean_pose"]["results"]["overall"]
    protocol = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); every variant at equal data, steps and schedule "
                f"({base.train.epochs} epochs); checkpoint: lowest validation px error on "
                f"{', '.join(base.data.source.val_subjects)}; scored on the test subjects "
                f"{', '.join(sorted(dataset.splits['test']['subjects']))}; {result['protocol']}; "
                f"sd: sample standard deviation over seeds")
    print(table(summary, mean_pose))
    print(f"protocol: {protocol}")
    out = storage.open_location(args.out or f"{base.train.storage_path.rstrip('/')}/{base.name}_relations")
    body = {"config": args.config, "overrides": args.overrides, "protocol": protocol, "runs": runs,
            "summary": summary, "mean_pose": mean_pose}
    storage.write_bytes(out.child("relations.json"), (json.dumps(body, indent=1) + "\n").encode())
    md = ["# raylift bench relations", "", table(summary, mean_pose, markdown=True), "", f"protocol: {protocol}", ""]
    storage.write_bytes(out.child("relations.md"), "\n".join(md).encode())
    print(f"results: {out.uri}/relations.md")
    return 0
