"""`raylift preprocess --config FILE [--set k=v]`: build (or find) the dataset of `data:` with Ray Data.

With a tune config, every data.* variant its `tune.space` searches (e.g. each frame count) is
prepared, so a cluster holding only the Parquet windows can run the search.

Prints progress while it loads the source and writes shards, then a summary: windows per split,
bytes, time, dataset id and URI. A dataset that already exists (same id, manifest present) is
reported without doing any work.
"""
from __future__ import annotations

import argparse
import time

from pipelines.config import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, sections=("data",), staged=False)


def _framed(info, seconds: float, source: str, windows: str, splits: list[str], total: str) -> list[str]:
    """The lines every dataset summary shares (id, uri, source, windows, one line per split, total,
    time) around the kind-specific parts."""
    return [
        f"dataset   {info.id}{'  (cache hit: already built)' if info.cached else ''}",
        f"uri       {info.uri}",
        f"source    {source}",
        f"windows   {windows}",
        *splits,
        f"total     {info.manifest['total_bytes'] / 1e6:.1f} MB, {total}",
        f"time      {seconds:.1f} s" + ("" if info.cached else f" (build {info.manifest['build_seconds']:.1f} s)"),
    ]


def _splits_train_first(m: dict) -> list[tuple[str, dict]]:
    return sorted(m["splits"].items(), key=lambda kv: kv[0] != "train")


def summary_lines(info, seconds: float) -> list[str]:
    """Human-readable summary of a built (or found) keypoint dataset."""
    m = info.manifest
    w = m["windows"]
    windows = (f"{w['mode']}, T={w['frames']}, stride {w['stride']}, flip {str(w['flip']).lower()}"
               + (f", multi-view {len(w['cameras'])} cameras" if w["multiview"] else ""))
    splits = [f"{split:<9} {c['windows']} windows ({c['flipped']} flipped), {c['masked_frames']} real frames, "
              f"{c['shards']} shards, {c['bytes'] / 1e6:.1f} MB" for split, c in _splits_train_first(m)]
    per_window = m["total_bytes"] / max(1, sum(c["windows"] for c in m["splits"].values()))
    return _framed(info, seconds, f"{m['source']['kind']} ({m['source']['layout']}, {m['source']['joints']} joints)",
                   windows, splits, f"{per_window:.0f} bytes/window")


def image_summary_lines(info, seconds: float) -> list[str]:
    """Summary of a person-crop dataset (source kinds synthetic_images, h36m_video, frames)."""
    m = info.manifest
    w = m["windows"]
    splits = [f"{split:<9} {c['windows']} windows, {c['images']} images from {c['sequences']} sequences, "
              f"{c['shards']} shards, {c['bytes'] / 1e6:.1f} MB" for split, c in _splits_train_first(m)]
    if m["skipped"]:
        splits.append(f"skipped   {len(m['skipped'])} sequence(s): " + "; ".join(m["skipped"]))
    return _framed(info, seconds,
                   f"{m['source']['kind']} ({m['source']['layout']}, {m['source']['joints']} joints), "
                   f"cameras {','.join(m['cameras'])}",
                   f"f={w['frames']} frames x V={w['views']} views, {w['size']}x{w['size']} {w['format']} crops, "
                   f"flip {str(w['flip']).lower()}",
                   splits, f"{m['bytes_per_image']:.0f} bytes/image")


def run(args: argparse.Namespace) -> int:
    from cluster.session import quiet_ray_data
    from pipelines.config import config_from_dict, load_config
    from pipelines.tune.space import data_variants, parse_space, trial_base
    from preprocessing.schema import apply_overrides, apply_values, load_yaml

    cfg = load_config(args.config, args.overrides)
    quiet_ray_data()
    # A tune config: one dataset per distinct assignment of the data.* keys its space searches, so
    # a cluster without the source files can run the search (preprocessing/store/staged.py).
    # With branches, a variant names the branch's model too (its windows must suit that model).
    dims = parse_space(cfg.tune.space) if cfg.tune is not None else []
    variants = data_variants(dims)
    raw = trial_base(apply_overrides(load_yaml(args.config), args.overrides), dims) if variants != [{}] else {}
    for i, values in enumerate(variants):
        if values:
            print(("\n" if i else "") + f"data variant {i + 1}/{len(variants)} of tune.space: "
                  + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
        prepare_one(config_from_dict(apply_values(raw, values)).data if values else cfg.data)
    return 0


def prepare_one(data) -> None:
    """Build (or find) the dataset of one `data:` section and print its summary."""
    from cluster.session import init_ray
    from preprocessing.config import IMAGE_KINDS
    from preprocessing.images.dataset import build_image_dataset
    from preprocessing.keypoints.dataset import prepare_dataset

    t0 = time.monotonic()
    images = data.source.kind in IMAGE_KINDS
    if images:
        info = build_image_dataset(data, progress=lambda msg: print(msg, flush=True))
    else:
        # Ray starts only if shards must be written; a private instance is stopped on every exit path.
        info = prepare_dataset(data, progress=lambda msg: print(msg, flush=True),
                               start_ray=lambda: init_ray(include_dashboard=False, configure_logging=False))
    for line in (image_summary_lines if images else summary_lines)(info, time.monotonic() - t0):
        print(line)
