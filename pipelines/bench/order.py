"""`raylift bench order --config C`: how uniform the training order is, and what it costs to read.

The reference codes draw a uniform permutation of all training windows every epoch; stride-1
windows of one sequence are near-duplicates, so a batch of neighbours trains on few distinct
poses. For the config's dataset, this benchmark reads one epoch exactly as a Ray Train worker does
(`pipelines/train/data.py`: the epoch's row-group share, the shuffle buffer, the seeds), for:

- `before`: rows stored in sequence order, a 256-window buffer (raylift's default until the
  training order was fixed);
- the config's own order (`data.windows.row_order`, `train.shuffle_buffer`; by default rows stored
  shuffled and a buffer of the worker's share up to `train.shuffle_buffer_mb`);
- the two layers apart: shuffled rows with a 256-window buffer, sequence rows with the default
  buffer.

Per batch it counts the window pairs from one sequence within T frames of each other (|start_i -
start_j| <= T, a window and its mirrored copy included) and sets the epoch's total against the
expectation under a uniform permutation, C(B, 2) x (such pairs in the split) / C(N, 2) per batch
(with one Poisson standard deviation: with few windows per batch the counts are small). It also
times a pass with only the columns training reads (ingest windows/s after the first batch, one
worker process and its Ray read tasks; the first batch's wait is reported apart, as it includes
filling the buffer), and redraws epoch 2 twice to check that a resumed run gets the same order.
Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

KEY_COLUMNS = ["subject", "action", "camera", "start"]
OLD_BUFFER = 256  # train.shuffle_buffer's default before the training order was fixed


@dataclass(frozen=True)
class Variant:
    name: str
    row_order: str
    buffer: Optional[int]  # train.shuffle_buffer (None: the default, the worker's share up to the MiB cap)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--workers", type=int, default=1, help="read as worker 0 of this many (default 1)")
    parser.add_argument("--max-batches", type=int, default=None, help="batches counted per variant (default: the epoch)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def close_pairs(keys: np.ndarray, starts: np.ndarray, frames: int) -> int:
    """Pairs of windows with the same sequence key whose starts differ by at most `frames`."""
    total = 0
    order = np.lexsort((starts, keys))
    keys, starts = keys[order], starts[order]
    bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        s = starts[lo:hi]
        total += int((np.searchsorted(s, s + frames, side="right") - np.arange(len(s)) - 1).sum())
    return total


def uniform_expectation(keys: np.ndarray, starts: np.ndarray, frames: int, batch: int) -> float:
    """Expected close pairs in a batch of `batch` windows drawn uniformly without replacement."""
    n = len(keys)
    return batch * (batch - 1) / 2 * close_pairs(keys, starts, frames) / (n * (n - 1) / 2)


def sequence_keys(columns: dict[str, np.ndarray]) -> np.ndarray:
    return np.char.add(np.char.add(columns["subject"].astype(str), "/"),
                       np.char.add(np.char.add(columns["action"].astype(str), "/"), columns["camera"].astype(str)))


def measure(cfg, variant: Variant, workers: int, max_batches: Optional[int], ingest: bool = True) -> dict:
    """One variant: its dataset (prepared; a cache hit when it exists), batch composition and
    (`ingest`) the ingest rate."""
    import copy

    from pipelines.train.data import batch_seed, buffer_windows, decoded_window_bytes, global_share
    from preprocessing.keypoints.readers import iter_torch_batches, load_split_arrays, split_row_groups
    from preprocessing.store.parquet import iter_numpy_batches
    from preprocessing.keypoints.dataset import prepare_dataset

    cfg = copy.deepcopy(cfg)
    cfg.data.windows.row_order = variant.row_order
    cfg.train.shuffle_buffer = variant.buffer
    dataset = prepare_dataset(cfg.data, progress=lambda _m: None)
    frames, tc = cfg.data.windows.frames, cfg.train
    batch = tc.windows_per_batch(frames)
    split = load_split_arrays(dataset, "train", columns=KEY_COLUMNS)
    expected = uniform_expectation(sequence_keys(split), split["start"].astype(np.int64), frames, batch)
    window_bytes, group_rows = decoded_window_bytes(dataset.manifest), split_row_groups(dataset, "train")

    def epoch(number: int, columns: Optional[list[str]]):
        """Worker 0's batches of epoch `number`, read as train.shuffle global reads them."""
        ds, share, _ = global_share(dataset, group_rows, tc.seed, number, 0, workers, columns)
        buffer = buffer_windows(tc.shuffle_buffer, tc.shuffle_buffer_mb, window_bytes, share)
        return ds, buffer, share

    def composition(number: int) -> tuple[list[int], list[tuple]]:
        """Close pairs per full batch, and the batches' windows (for the resume check)."""
        ds, buffer, _ = epoch(number, KEY_COLUMNS + ["flipped"])
        pairs, seen = [], []
        for b in iter_numpy_batches(ds, batch, KEY_COLUMNS + ["flipped"], buffer, tc.prefetch_batches,
                                    batch_seed(tc.seed, number, 0), drop_last=True):
            keys, starts = sequence_keys(b), b["start"].astype(np.int64)
            pairs.append(close_pairs(keys, starts, frames))
            seen.append(tuple(zip(keys.tolist(), starts.tolist(), b["flipped"].tolist())))
            if max_batches is not None and len(pairs) >= max_batches:
                break
        return pairs, seen

    pairs, _ = composition(1)
    resumed = composition(2)[1] == composition(2)[1]
    t0 = time.perf_counter()
    ds, buffer, share = epoch(1, None)  # the columns training reads, batched as training does
    windows, first = 0, None
    for b in iter_torch_batches(ds, batch, shuffle_buffer=buffer, prefetch_batches=tc.prefetch_batches,
                                seed=batch_seed(tc.seed, 1, 0)) if ingest else ():
        if first is None:
            first, windows = time.perf_counter() - t0, 0
        windows += int(b["mask"].shape[0])
    seconds = time.perf_counter() - t0 - (first or 0.0)
    total_expected = expected * len(pairs)
    ratio = float(np.sum(pairs)) / total_expected if total_expected > 0 else float("nan")
    return {
        "variant": variant.name, "row_order": variant.row_order, "buffer": buffer, "dataset": dataset.id,
        "batch": batch, "batches": len(pairs), "share_windows": share,
        "close_pairs_per_batch": round(float(np.mean(pairs)) if pairs else float("nan"), 3),
        "uniform_expectation": round(expected, 3), "ratio_to_uniform": round(ratio, 3),
        # one Poisson standard deviation of the ratio: the counts of a short epoch are small
        "ratio_sd": round(1.0 / np.sqrt(total_expected), 3) if total_expected > 0 else float("nan"),
        "first_batch_s": round(first or 0.0, 2), "ingest_windows_per_s": round(windows / max(seconds, 1e-9)),
        "resume_redraws_same_order": resumed,
    }


def run(args: argparse.Namespace) -> int:
    from cluster.session import init_ray, quiet_ray_data
    from pipelines.config import load_config

    cfg = load_config(args.config, args.overrides)
    quiet_ray_data()
    init_ray()
    own = Variant(f"config ({cfg.data.windows.row_order} rows, buffer "
                  f"{cfg.train.shuffle_buffer if cfg.train.shuffle_buffer is not None else 'default'})",
                  cfg.data.windows.row_order, cfg.train.shuffle_buffer)
    variants = [Variant("before (sequence rows, buffer 256)", "sequence", OLD_BUFFER), own,
                Variant("shuffled rows, buffer 256", "shuffled", OLD_BUFFER),
                Variant("sequence rows, default buffer", "sequence", None)]
    rows = [measure(cfg, v, args.workers, args.max_batches) for v in variants]
    print(f"bench order: {cfg.name}, T={cfg.data.windows.frames} {cfg.data.windows.mode}, batch "
          f"{rows[0]['batch']} windows, worker 0 of {args.workers}")
    from pipelines.viz.tables import render_table

    print(render_table(
        ["variant", "buffer", "close pairs / batch", "uniform", "ratio (± 1 sd)", "first batch s", "ingest windows/s",
         "resume same order"],
        [[r["variant"], r["buffer"], f"{r['close_pairs_per_batch']:.2f}", f"{r['uniform_expectation']:.3f}",
          f"{r['ratio_to_uniform']:.2f} ± {r['ratio_sd']:.2f}", r["first_batch_s"], r["ingest_windows_per_s"],
          "yes" if r["resume_redraws_same_order"] else "NO"] for r in rows]))
    print("close pairs: window pairs of one batch from one sequence within T frames of each other; uniform: their "
          "expectation under a uniform permutation of the split's windows; ratio: observed / expected over the "
          "epoch; ingest: after the first batch (the first waits for the buffer to fill)")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg.name, "runs": rows}, indent=2) + "\n")
    return 0
