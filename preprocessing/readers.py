"""Reading preprocessed datasets back: Ray Data for training, plain pyarrow for evaluation.

- `open_split(uri, split)`: the split's shards (in row order, as listed in the manifest) as a
  `ray.data.Dataset`; hand it to `TorchTrainer(datasets=...)` and each worker reads its part with
  `iter_torch_batches(ray.train.get_dataset_shard(...), ...)`.
- `iter_torch_batches(ds_or_shard, batch_size, ...)`: dicts of torch tensors, windows × frames ×
  joints (`keypoints_2d` (B, T, [V,] J, 2), `positions_3d`, `mask`, `intrinsics`, `flipped`), with
  an optional local shuffle buffer; works on a Dataset and on a Ray Train DataIterator alike.
- `load_split_arrays(uri, split)`: the whole split as numpy arrays, read without Ray.
- `read_manifest(uri)`.
Any shard that is missing or is not Parquet raises a DataError naming the file.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from preprocessing import storage
from preprocessing.errors import DataError
from preprocessing.manifest import read_manifest_at, shard_paths
from preprocessing.shards import SCHEMA_COLUMNS, STRING_COLUMNS, TENSOR_COLUMNS

TORCH_COLUMNS = TENSOR_COLUMNS + ("flipped",)


def read_manifest(uri: str) -> dict:
    """The manifest of the dataset at `uri` (`<root>/<id>`, local or s3://)."""
    return read_manifest_at(storage.open_location(uri))


def _split_files(uri: str, split: str) -> tuple[storage.Location, list[storage.Location], dict]:
    dataset = storage.open_location(uri)
    manifest = read_manifest_at(dataset)
    paths = shard_paths(manifest, split)
    if not paths:
        available = sorted(k for k, v in manifest["splits"].items() if v.get("windows"))
        raise DataError(f"dataset {uri} has no {split!r} split (available: {', '.join(available) or 'none'})")
    return dataset, [dataset.child(p) for p in paths], manifest


def _parquet_file(loc: storage.Location):
    """Open one shard's footer; DataError naming the file if it is missing or not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(loc.fs.open_input_file(loc.path))
    except FileNotFoundError:
        raise DataError(f"shard not found: {loc.uri}") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{loc.uri}: not a readable Parquet shard ({e})") from None


def check_shards(uri: str, split: str) -> list[storage.Location]:
    """Open every shard's footer and compare its row count with the manifest (no data read)."""
    dataset, files, manifest = _split_files(uri, split)
    rows = {s["path"]: s["rows"] for s in manifest["shards"]}
    for loc in files:
        meta = _parquet_file(loc).metadata
        rel = loc.path[len(dataset.path.rstrip("/")) + 1:]
        if meta.num_rows != rows[rel]:
            raise DataError(f"{loc.uri}: {meta.num_rows} rows, manifest says {rows[rel]}")
    return files


def open_split(uri: str, split: str, columns: Optional[list[str]] = None):
    """The split as a `ray.data.Dataset` (rows in shard order; `columns` limits what is read)."""
    import ray

    files = check_shards(uri, split)
    unknown = [c for c in columns or [] if c not in SCHEMA_COLUMNS]
    if unknown:
        raise DataError(f"unknown column(s) {unknown} for {uri} (columns: {', '.join(SCHEMA_COLUMNS)})")
    return ray.data.read_parquet(
        [f.path for f in files], filesystem=files[0].fs, columns=columns, file_extensions=None,
    )


def _to_torch(batch: dict[str, np.ndarray], device: Any) -> dict:
    import torch

    out = {}
    for key in TORCH_COLUMNS:
        if key in batch:
            array = batch[key]
            if not (array.flags.writeable and array.flags.c_contiguous):
                array = np.array(array)  # Arrow-backed batches are read-only views; torch wants owned memory
            tensor = torch.from_numpy(array)
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
    """Batches of windows as torch tensors (keys `keypoints_2d`, `positions_3d`, `mask`,
    `intrinsics`, `flipped`; string columns are left out). `shuffle_buffer` > 0 shuffles locally
    within a buffer of that many windows (seeded by `seed`)."""
    batches = ds_or_shard.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        prefetch_batches=prefetch_batches,
        drop_last=drop_last,
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None,
    )
    for batch in batches:
        yield _to_torch(batch, device)


def load_split_arrays(uri: str, split: str, columns: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """The whole split in memory, rows in shard order: tensor columns stacked into float32 arrays
    ((W, T, J, 2), ...), `start`/`sequence_length` int32, `flipped` bool, strings as object arrays."""
    import pyarrow as pa

    files = check_shards(uri, split)
    tables = []
    for loc in files:
        try:
            tables.append(_parquet_file(loc).read(columns=columns))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: cannot read shard ({e})") from None
    table = pa.concat_tables(tables)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name in TENSOR_COLUMNS:
            out[name] = column.to_numpy_ndarray()
        elif name in STRING_COLUMNS:
            out[name] = np.asarray(column.to_pylist(), dtype=object)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out
