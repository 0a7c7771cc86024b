"""Validation batches read straight from the test split's Parquet row groups, a share per worker.

Training streams through Ray Data (`get_dataset_shard`); per-epoch validation does not need a
shuffle or a streaming executor, and starting one per epoch per worker costs seconds. Here worker
`rank` of `world` reads row groups rank, rank + world, ... of the split (in manifest order) with
plain pyarrow, so the workers together score every window exactly once. Each shard is read whole
once per epoch and checked against the manifest's sha256 before it is decoded.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import numpy as np
import torch

from preprocessing import storage
from preprocessing.errors import DataError

COLUMNS = ("keypoints_2d", "positions_3d", "mask", "flipped")


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
    import pyarrow as pa

    try:
        table = shard.read_row_group(index, columns=list(COLUMNS))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{loc.uri}: cannot read row group {index} ({e})") from None
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
    from preprocessing.manifest import read_manifest_at
    from preprocessing.readers import shard_hashes, verified_parquet

    dataset = uri if isinstance(uri, storage.Location) else storage.open_location(uri)
    hashes = shard_hashes(dataset, read_manifest_at(dataset))
    seen = 0
    opened: Optional[tuple] = None
    for loc, index in row_groups(dataset, split)[rank::world]:
        if opened is None or opened[0] != loc.path:  # each shard read and checked once per call
            opened = (loc.path, verified_parquet(loc.fs, loc.uri, loc.path, hashes.get(loc.path)))
        arrays = _read_group(opened[1], loc, index)
        n = len(arrays["mask"])
        for lo in range(0, n, batch_size):
            if max_windows is not None and seen >= max_windows:
                return
            hi = min(n, lo + batch_size, lo + (max_windows - seen if max_windows is not None else n))
            seen += hi - lo
            yield {k: torch.from_numpy(np.array(v[lo:hi])) for k, v in arrays.items()}
