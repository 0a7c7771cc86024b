"""Reading keypoint-window datasets back: Ray Data for training, plain pyarrow for evaluation.

The keypoint layer over preprocessing/store/parquet.py (checked reads, the Ray Data datasource,
the shuffle buffer):
- `open_split(dataset, split, columns=None, groups=None)`: the split's shards (in row order, as
  listed in the manifest) as a streaming `ray.data.Dataset`, by default only the columns training
  uses (`TORCH_COLUMNS`); hand it to `TorchTrainer(datasets=...)` or, with `groups` (indices into
  `split_row_groups`), read a seeded permutation of row groups: the per-epoch training order of
  `pipelines/train/data.py`.
- `iter_torch_batches(ds_or_shard, batch_size, ...)`: dicts of torch tensors, windows × frames ×
  joints (`keypoints_2d` (B, T, [V,] J, 2), `positions_3d`, `mask`, `trajectory`, `intrinsics`,
  `image_size`, `flipped`), with an optional seeded local shuffle buffer; works on a Dataset and on
  a Ray Train DataIterator alike.
- `load_split_arrays(dataset, split)`: the whole split as numpy arrays, read without Ray.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np

from preprocessing.errors import DataError
from preprocessing.keypoints.dataset import SCHEMA_COLUMNS, TENSOR_COLUMNS
from preprocessing.store import parquet
from preprocessing.store.dataset import Dataset

TORCH_COLUMNS = TENSOR_COLUMNS + ("flipped",)


def split_row_groups(dataset: Dataset, split: str) -> list[int]:
    """Rows of each row group of the split, in manifest order (what `open_split(groups=...)` indexes)."""
    return parquet.split_row_groups(dataset, split, TORCH_COLUMNS)


def open_split(dataset: Dataset, split: str, columns: Optional[Sequence[str]] = None,
               groups: Optional[Sequence[int]] = None):
    """The split as a streaming `ray.data.Dataset` of Arrow blocks. `columns` limits what is read:
    by default the columns `iter_torch_batches` yields (`TORCH_COLUMNS`); pass `SCHEMA_COLUMNS`
    for all of them. `groups`: read only these row groups, in this order."""
    columns = list(TORCH_COLUMNS if columns is None else columns)
    unknown = [c for c in columns if c not in SCHEMA_COLUMNS]
    if unknown or not columns:
        raise DataError(f"unknown column(s) {unknown or columns} for {dataset.uri} "
                        f"(columns: {', '.join(SCHEMA_COLUMNS)})")
    return parquet.open_split(dataset, split, columns, groups)


def _to_torch(batch: dict[str, np.ndarray], device: Any) -> dict:
    import torch

    out = {}
    for key, array in batch.items():
        tensor = torch.from_numpy(array)  # owned, writable memory from batch_rows: no copy
        out[key] = tensor.to(device, non_blocking=True) if str(device) != "cpu" else tensor
    return out


def iter_torch_batches(
    ds_or_shard,
    batch_size: int,
    shuffle_buffer: int = 0,
    prefetch_batches: int = 2,
    seed: Optional[int] = None,
    device: Any = "cpu",
    drop_last: bool = False,
) -> Iterator[dict]:
    """Batches of windows as torch tensors (`TORCH_COLUMNS`; other columns are left out), drawn
    from a seeded local shuffle buffer of `shuffle_buffer` windows (`store.parquet.batch_rows`)."""
    for batch in parquet.iter_numpy_batches(ds_or_shard, batch_size, TORCH_COLUMNS, shuffle_buffer,
                                            prefetch_batches, seed, drop_last):
        yield _to_torch(batch, device)


def load_split_arrays(dataset: Dataset, split: str, columns: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """The whole split in memory, rows in shard order: tensor columns stacked into float32 arrays
    ((W, T, J, 2), ...), `start`/`sequence_length` int32, `flipped` bool, strings as object arrays."""
    return parquet.read_split(dataset, split, columns)
