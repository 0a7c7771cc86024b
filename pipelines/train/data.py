"""Validation batches read straight from the test split's Parquet row groups, a share per worker,
and the training order: which row groups each worker reads each epoch (`epoch_shares`) and how
many windows its shuffle buffer holds (`buffer_windows`).

Training order (`train.shuffle: global`, the default). The reference codes draw a uniform
permutation of all training windows every epoch (a DataLoader with `shuffle=True`). raylift
streams Parquet instead of holding every window in memory, in three layers:
1. the training split's rows are stored as a seeded uniform permutation of its windows
   (`data.windows.row_order: shuffled`, preprocessing/keypoints/dataset.py), so any row group, and so any
   batch drawn from a few of them, is a uniform sample of windows, not a run of neighbouring,
   near-identical ones;
2. each epoch, a permutation of all row groups drawn from (train.seed, epoch) is dealt to the
   workers (`epoch_shares`);
3. each worker draws its batches from a buffer of `train.shuffle_buffer` windows; by default its
   whole epoch share, up to `train.shuffle_buffer_mb` of decoded windows (`buffer_windows`), so a
   split that fits is drawn in a uniform permutation of the share.
The number of window pairs of a batch that come from one sequence within T frames of each other
is then the uniform permutation's (layer 1 alone gives that); layers 2-3 make the batches of one
epoch differ from the last's. `raylift bench order` measures both, with the ingest rate. The order
depends on (seed, epoch, rank) only, so a resumed run redraws it.

Training streams through Ray Data (`get_dataset_shard`); per-epoch validation does not need a
shuffle or a streaming executor, and starting one per epoch per worker costs seconds. Here worker
`rank` of `world` reads row groups rank, rank + world, ... of the split (in manifest order) with
plain pyarrow, so the workers together score every window exactly once. Only those row groups are
read, every page checked against its stored CRC-32 (`preprocessing.store.parquet.iter_row_group_share`).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import torch

from preprocessing.errors import DataError
from preprocessing.store.dataset import Dataset

COLUMNS = ("keypoints_2d", "positions_3d", "mask", "trajectory", "intrinsics", "image_size", "flipped")


def iter_val_batches(
    dataset: Dataset,
    split: str,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    max_windows: Optional[int] = None,
) -> Iterator[dict]:
    """Batches (dicts of CPU torch tensors: `COLUMNS`) of this worker's row groups of `split`;
    `max_windows` caps the windows this call yields."""
    from preprocessing.store.parquet import column_numpy, iter_row_group_share

    seen = 0
    for _, _, table in iter_row_group_share(dataset, split, COLUMNS, rank, world):
        arrays = {name: column_numpy(table.column(name).combine_chunks()) for name in COLUMNS}
        n = len(arrays["mask"])
        for lo in range(0, n, batch_size):
            if max_windows is not None and seen >= max_windows:
                return
            hi = min(n, lo + batch_size, lo + (max_windows - seen if max_windows is not None else n))
            seen += hi - lo
            yield {k: torch.from_numpy(np.array(v[lo:hi])) for k, v in arrays.items()}


# --------------------------------------------------------------------------- training order
def decoded_window_bytes(manifest: dict) -> int:
    """Bytes one training window takes decoded in memory: float32 tensor columns for keypoint
    windows, uint8 RGB crops (f x V x size²) plus labels for image windows."""
    shapes = manifest.get("columns") or {}
    if manifest.get("kind") == "images":
        w = manifest["windows"]
        pixels = int(w["frames"]) * int(w["views"]) * int(w["size"]) ** 2 * 3
        return pixels + 4 * sum(int(np.prod(shape)) for name, shape in shapes.items() if name != "images")
    return 4 * sum(int(np.prod(shape)) for shape in shapes.values())


def batch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a worker's shuffle buffer (and image flips) in one epoch."""
    return int(seed) * 1_000_003 + int(epoch) * 1009 + int(rank)


def global_share(dataset, group_rows: list[int], seed: int, epoch: int, rank: int, world: int,
                 columns: Optional[list[str]] = None) -> tuple[Any, int, int]:
    """Worker `rank`'s Ray Dataset for `epoch` under `train.shuffle: global` (its share of the
    epoch's row-group permutation, read in that order; `columns`: those of `open_split`), the
    windows in it, and the windows every worker takes (the smallest share: DDP workers stay in
    lockstep)."""
    from preprocessing.keypoints.readers import open_split

    shares, per_worker = epoch_shares(group_rows, seed, epoch, world)
    return (open_split(dataset, "train", columns=columns, groups=shares[rank]),
            sum(group_rows[i] for i in shares[rank]), per_worker)


def buffer_windows(requested: Optional[int], budget_mb: int, window_bytes: int, share: int) -> int:
    """Windows in a worker's shuffle buffer: `requested` (train.shuffle_buffer) when set, else the
    worker's whole epoch share of `share` windows, capped at `budget_mb` MiB of decoded windows."""
    if requested is not None:
        return int(requested)
    return max(1, min(int(share), (int(budget_mb) << 20) // max(1, int(window_bytes))))



def epoch_shares(group_rows: list[int], seed: int, epoch: int, world: int) -> tuple[list[list[int]], int]:
    """The global per-epoch shuffle of the training split's row groups, dealt to the workers.

    A permutation of all row groups (so of files and of row groups within them) drawn from
    (seed, epoch) alone, dealt round-robin to the `world` workers: every worker computes the same
    permutation, the workers' shares partition the split, and a resumed run redraws exactly the
    order an uninterrupted run would have used at that epoch. Returns (row-group indices per worker,
    windows per worker), the latter the smallest share's row count, so that DDP workers take the
    same number of steps (a few windows of the larger shares wait for another epoch).
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if len(group_rows) < world:
        raise DataError(f"the train split has {len(group_rows)} row group(s), fewer than the {world} workers: "
                        "lower data.rows_per_group or train.num_workers")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)])).permutation(len(group_rows))
    shares = [order[r::world].tolist() for r in range(world)]
    return shares, min(sum(group_rows[i] for i in share) for share in shares)
