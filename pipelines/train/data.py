"""Validation batches read straight from the test split's Parquet row groups, a share per worker,
and the training order: which row groups each worker reads each epoch (`epoch_shares`) and how
many windows its shuffle buffer holds (`buffer_windows`).

Training order (`train.shuffle: global`, the default). The reference codes draw a uniform
permutation of all training windows every epoch (a DataLoader with `shuffle=True`). raylift
streams Parquet instead of holding every window in memory, in three layers:
1. the training split's rows are stored as a seeded uniform permutation of its windows
   (`data.windows.row_order: shuffled`, preprocessing/shards.py), so any row group, and so any
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
read, every page checked against its stored CRC-32 (`preprocessing.readers.checked_parquet`).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

from preprocessing import storage
from preprocessing.errors import DataError

COLUMNS = ("keypoints_2d", "positions_3d", "mask", "trajectory", "intrinsics", "image_size", "flipped")


def row_groups(dataset: Union[str, storage.Location], split: str) -> list[tuple[storage.Location, int]]:
    """(shard, row group index) pairs of a split, in row order. `dataset` is a URI or a Location
    (whose pickled filesystem carries its S3 settings into Ray workers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preprocessing.manifest import read_manifest_at, shard_paths

    loc_ = dataset if isinstance(dataset, storage.Location) else storage.open_location(dataset)
    paths = shard_paths(read_manifest_at(loc_), split)
    if not paths:
        raise DataError(f"dataset {loc_.uri} has no {split!r} split")
    out = []
    for loc in (loc_.child(p) for p in paths):
        try:
            n = pq.ParquetFile(loc.fs.open_input_file(loc.path)).num_row_groups
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: not a readable Parquet shard ({e})") from None
        out += [(loc, i) for i in range(n)]
    return out


def _read_group(shard, loc: storage.Location, index: int) -> dict[str, np.ndarray]:
    from preprocessing.readers import read_checked_groups

    table = read_checked_groups(shard, loc.uri, [index], COLUMNS)
    out = {}
    for name in COLUMNS:
        column = table.column(name).combine_chunks()
        out[name] = column.to_numpy(zero_copy_only=False) if name == "flipped" else column.to_numpy_ndarray()
    return out


def iter_val_batches(
    uri: Union[str, storage.Location],
    split: str,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    max_windows: Optional[int] = None,
) -> Iterator[dict]:
    """Batches (dicts of CPU torch tensors: `keypoints_2d`, `positions_3d`, `mask`, `flipped`) of
    this worker's row groups; `max_windows` caps the windows this call yields."""
    from preprocessing.readers import checked_parquet

    dataset = uri if isinstance(uri, storage.Location) else storage.open_location(uri)
    seen = 0
    opened: Optional[tuple] = None
    for loc, index in row_groups(dataset, split)[rank::world]:
        if opened is None or opened[0] != loc.path:  # each shard read and checked once per call
            opened = (loc.path, checked_parquet(loc.fs, loc.uri, loc.path))
        arrays = _read_group(opened[1], loc, index)
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
    from preprocessing.readers import open_split

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
