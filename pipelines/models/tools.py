"""`raylift models`: model summaries (parameters, FLOPs) and import of the authors' checkpoints.

    raylift models summary --model mixste --frames 243 [--joints 17] [--set model.dim=256] [--json]
    raylift models import --from mixste|poseformer|crossformer|fusionformer FILE --out CKPT_DIR
    raylift models import --from mpstr FILE [--backbone CFG.json|yaml] --out CKPT_DIR
                          [--frames T] [--heads H] [--refine REFINE_FILE (fusionformer)]

FLOPs are counted by `models/cost.py` (which says what counts) on one forward pass of batch 1 of a
model built on the meta device (no memory, no compute). MACs = FLOPs / 2. "Per frame" divides by
the frames the forward predicts: T for seq2seq models, 1 for seq2frame models.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from preprocessing.schema import ConfigError
from pipelines.config import add_location_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from models.registry import MODELS

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("summary", help="parameters and forward FLOPs/MACs of a model",
                       description="parameters and forward FLOPs/MACs (per predicted frame and in total)")
    s.add_argument("--model", required=True, choices=sorted(MODELS), help="registry name")
    s.add_argument("--frames", type=int, required=True, help="window length T")
    s.add_argument("--joints", type=int, default=17, help="joints J (default 17)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                   help="override a model config value, e.g. --set model.dim=256 (repeatable)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    i = sub.add_parser("import", help="convert an official MixSTE/PoseFormer/CrossFormer/Fusionformer checkpoint",
                       description="convert a checkpoint released by the MixSTE, PoseFormer, CrossFormer or "
                                   "Fusionformer authors "
                                   "into a raylift checkpoint (H36M joint layout)")
    i.add_argument("--from", dest="source", required=True, choices=["mixste", "poseformer", "crossformer", "fusionformer", "mpstr"],
                   help="whose checkpoint format FILE is in")
    add_location_argument(i, "file", role="input", help="official checkpoint (.bin/.pth with a 'model_pos' state dict)")
    add_location_argument(i, "--out", role="output", required=True, help="raylift checkpoint directory to write")
    i.add_argument("--frames", type=int, default=None,
                   help="expected window length T (checked against the checkpoint's Temporal_pos_embed)")
    i.add_argument("--heads", type=int, default=None,
                   help="attention heads (not visible in the weights; default: the paper's 8)")
    add_location_argument(i, "--refine", role="input", default=None, help="Fusionformer only: the refinement network's checkpoint")
    add_location_argument(i, "--backbone", role="input", default=None,
                   help="mpstr only: a JSON/YAML file with the authors' cfg.model['backbone'] mapping "
                        "(embed_dim, depths, num_heads, window_size, ...); default: their Swin-T")


def model_config(name: str, overrides: list[str]) -> Any:
    """The registry config of `name` with `model.KEY=VALUE` overrides applied and validated."""
    from models.registry import parse_model_config
    from preprocessing.schema import ConfigError, apply_overrides

    for text in overrides:
        if not text.startswith("model."):
            raise ConfigError(f"--set {text!r}: only model.* keys apply to a model summary")
    raw = apply_overrides({"model": {"name": name}}, overrides)
    if raw["model"].get("name") != name:
        raise ConfigError("--set model.name: use --model to choose the model")
    return parse_model_config(raw["model"], "model")


def summarize(name: str, frames: int, joints: int = 17, overrides: list[str] | None = None) -> dict[str, Any]:
    """Parameters and batch-1 forward FLOPs/MACs of a registry model (counted on the meta device)."""
    import torch

    from models.cost import forward_flops, frames_predicted
    from models.registry import build_model, count_parameters
    from preprocessing.schema import ConfigError

    if frames < 1 or joints < 1:
        raise ConfigError(f"--frames and --joints must be >= 1 (got {frames}, {joints})")
    cfg = model_config(name, overrides or [])
    with torch.device("meta"):
        model = build_model(cfg, frames=frames, joints=joints)
    flops, by_op = forward_flops(model, frames, joints)
    out_frames = frames_predicted(model, frames)
    return {
        "model": name,
        "config": asdict(cfg),
        "frames": frames,
        "joints": joints,
        "output_mode": model.output_mode,
        "parameters": count_parameters(model),
        "flops_total": flops,
        "macs_total": flops // 2,
        "frames_predicted": out_frames,
        "flops_per_frame": flops / out_frames,
        "macs_per_frame": flops / 2 / out_frames,
        "flops_by_op": by_op,
    }


def format_summary(s: dict[str, Any]) -> str:
    cfg = ", ".join(f"{k}={v}" for k, v in s["config"].items() if k != "name")
    lines = [
        f"model            {s['model']} ({s['output_mode']}, T={s['frames']}, J={s['joints']})",
        f"config           {cfg}",
        f"parameters       {s['parameters']:,}",
        f"MACs  per frame  {s['macs_per_frame'] / 1e6:,.2f} M    total {s['macs_total'] / 1e9:,.3f} G",
        f"FLOPs per frame  {s['flops_per_frame'] / 1e6:,.2f} M    total {s['flops_total'] / 1e9:,.3f} G",
        f"                 (batch-1 forward; per frame = total / {s['frames_predicted']} predicted frame(s); "
        "matmuls incl. attention and convolutions; FLOPs = 2 x MACs)",
    ]
    for op, n in sorted(s["flops_by_op"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {op:<28} {n / 2 / s['frames_predicted'] / 1e6:,.2f} M MACs per frame")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.action == "summary":
        s = summarize(args.model, args.frames, args.joints, args.overrides)
        print(json.dumps(s, indent=1) if args.json else format_summary(s))
        return 0
    from models.convert import import_official
    from models.checkpoint import read_meta

    if args.source == "mpstr":
        return import_mpstr(args.file, args.out, args.backbone)
    if args.backbone is not None:
        raise ConfigError(f"--backbone: only for --from mpstr, not {args.source}")
    out = import_official(args.source, args.file, args.out, frames=args.frames, heads=args.heads, refine=args.refine)
    meta = read_meta(out)
    if meta["imported_from"]["dropped_unused"]:
        print("dropped tensors the released code never uses: " + ", ".join(meta["imported_from"]["dropped_unused"]))
    print(f"imported {args.source} checkpoint {args.file} (epoch {meta['epoch']}, T={meta['frames']}, "
          f"J={meta['joints']}) -> {out}", file=sys.stdout)
    return 0


def import_mpstr(path: str, out: str, backbone_file: str | None = None) -> int:
    """`models import --from mpstr`: the authors' SwinPose checkpoint -> a raylift checkpoint of
    the `official` variant (models.convert.load_official_mpstr), with the conversion's dropped keys
    listed in meta.json."""
    from models.checkpoint import save_checkpoint
    from models.convert import load_official_mpstr
    from preprocessing.schema import load_yaml

    backbone = None
    if backbone_file is not None:
        backbone = load_yaml(backbone_file)  # JSON is YAML; ConfigError naming the file if unreadable
        if not isinstance(backbone, dict):
            raise ConfigError(f"{backbone_file}: expected a mapping (the authors' cfg.model['backbone'])")
    model, info = load_official_mpstr(path, backbone)
    meta = {
        "model": asdict(info["config"]),
        "frames": 1,  # the official variant's sequence is the batch of one call, not a window
        "joints": 17,
        "layout": "h36m",
        "epoch": info["epoch"],
        "dataset_id": None,
        "metrics": {},
        "config": None,
        "imported_from": {"format": "mpstr", "file": str(path), "backbone": backbone, "dropped": info["dropped"]},
    }
    directory = save_checkpoint(out, model.state_dict(), meta)
    print(f"imported mpstr (SwinPose) checkpoint {path} (epoch {info['epoch']}, variant official, "
          f"{len(info['dropped'])} unused or config-derived tensors dropped) -> {directory}")
    return 0
