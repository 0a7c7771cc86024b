"""Reading preprocessed datasets back: Ray Data for training, plain pyarrow for evaluation.

- `open_split(uri, split, columns=None)`: the split's shards (in row order, as listed in the
  manifest) as a streaming `ray.data.Dataset` (by default only the columns training uses); hand it
  to `TorchTrainer(datasets=...)` and each worker reads its part with
  `iter_torch_batches(ray.train.get_dataset_shard(...), ...)`. Its read tasks decode whole row
  groups with plain pyarrow: Ray's generic `read_parquet` spent ~1/3 more CPU per window and, on
  first use in each worker process, seconds importing its listing/HTTP machinery.
  `open_split(..., groups=[...])` reads only the listed row groups (indices into the split's row
  groups in manifest order, `split_row_groups`), in the listed order: a seeded permutation of them
  is the per-epoch global shuffle of training (`pipelines/train/data.py`).
- `iter_torch_batches(ds_or_shard, batch_size, ...)`: dicts of torch tensors, windows × frames ×
  joints (`keypoints_2d` (B, T, [V,] J, 2), `positions_3d`, `mask`, `intrinsics`, `flipped`), with
  an optional seeded local shuffle buffer; works on a Dataset and on a Ray Train DataIterator alike.
  Blocks come from Ray as zero-copy numpy views of the Arrow tensor columns and each window is
  copied once, into the batch's own memory, which torch wraps without a copy (Ray's own local
  shuffle + numpy conversion + the copy torch needed made three).
- `load_split_arrays(uri, split)`: the whole split as numpy arrays, read without Ray.
- `read_manifest(uri)`.
Any shard that is missing, is not Parquet, or whose bytes are damaged raises a DataError naming the
file, so damaged bytes are never trained or evaluated on: readers of whole shards
(`load_split_arrays`) hash each shard's bytes as they read them and compare them with the
manifest's sha256 (`verified_parquet`); streaming readers, which read a few row groups of a shard
(training's per-epoch row-group order, validation shares), check every page they decode against
the CRC-32 the writer stored with it and each footer's row count against the manifest
(`checked_parquet`), so no shard is read in full to read a part of it.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from preprocessing import storage
from preprocessing.errors import DataError
from preprocessing.manifest import read_manifest_at, shard_paths
from preprocessing.shards import SCHEMA_COLUMNS, STRING_COLUMNS, TENSOR_COLUMNS

TORCH_COLUMNS = TENSOR_COLUMNS + ("flipped",)
# Read-task sizing in decoded bytes: ~128 MB of row groups per Ray read task (fewer, larger tasks
# cost less scheduling), blocks of at most ~32 MB (at least one row group) so they stream.
READ_TASK_BYTES = 128 << 20
READ_BLOCK_BYTES = 32 << 20


def read_manifest(uri: str) -> dict:
    """The manifest of the dataset at `uri` (`<root>/<id>`, local or s3://)."""
    return read_manifest_at(storage.open_location(uri))


def _split_files(uri, split: str) -> tuple[storage.Location, list[storage.Location], dict]:
    dataset = uri if isinstance(uri, storage.Location) else storage.open_location(uri)
    uri = dataset.uri
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


def verified_parquet(fs, uri: str, path: str, sha256: Optional[str]):
    """A shard's bytes read once, checked against the manifest's sha256, opened as Parquet from
    memory: a damaged shard (flipped bytes in a page) is refused before any value is decoded.
    DataError naming the shard and suggesting `raylift data verify` on a mismatch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_stream(path) as f:
            buf = f.read_buffer()
    except FileNotFoundError:
        raise DataError(f"shard not found: {uri}") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{uri}: cannot read shard ({e})") from None
    if sha256 is not None:
        digest = hashlib.sha256(memoryview(buf)).hexdigest()
        if digest != sha256:
            raise DataError(f"{uri}: sha256 {digest[:16]}... differs from the manifest's {sha256[:16]}... "
                            "(the shard is damaged); run `raylift data verify` on the dataset and rebuild it")
    try:
        return pq.ParquetFile(pa.BufferReader(buf))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{uri}: not a readable Parquet shard ({e})") from None


def shard_hashes(dataset: storage.Location, manifest: dict) -> dict[str, str]:
    """Path inside the filesystem -> the manifest's sha256, for every shard of a dataset."""
    return {dataset.child(s["path"]).path: s["sha256"] for s in manifest["shards"]}


def _split_footers(uri, split: str) -> list[tuple[storage.Location, Any]]:
    """(shard, Parquet footer metadata) of every shard of the split, in row order, each footer's
    row count checked against the manifest (no data read)."""
    dataset, files, manifest = _split_files(uri, split)
    rows = {s["path"]: s["rows"] for s in manifest["shards"]}
    out = []
    for loc in files:
        meta = _parquet_file(loc).metadata
        rel = loc.path[len(dataset.path.rstrip("/")) + 1:]
        if meta.num_rows != rows[rel]:
            raise DataError(f"{loc.uri}: {meta.num_rows} rows, manifest says {rows[rel]}")
        out.append((loc, meta))
    return out


def check_shards(uri: str, split: str) -> list[storage.Location]:
    """Open every shard's footer and compare its row count with the manifest (no data read)."""
    return [loc for loc, _ in _split_footers(uri, split)]


@dataclass(frozen=True)
class RowGroup:
    """One row group of a shard: where it is, its rows, its decoded bytes for the columns read."""

    uri: str
    path: str  # inside the filesystem
    index: int
    rows: int
    nbytes: int


def plan_read_tasks(groups: list[RowGroup], parallelism: int, task_bytes: int, block_bytes: int,
                    ) -> list[list[tuple[str, str, list[int]]]]:
    """Cut the row groups (in shard order) into at most `parallelism` read tasks of about
    `task_bytes` decoded bytes (contiguous runs, so shard order is kept); within a task, consecutive
    row groups of one shard are read together into blocks of at most `block_bytes` (at least one
    row group each). Per task: a list of (uri, path, row group indices), one entry per block."""
    if not groups:
        return []
    total = sum(g.nbytes for g in groups)
    n = max(1, min(parallelism, len(groups), -(-total // task_bytes)))
    bounds = [round(k * len(groups) / n) for k in range(n + 1)]
    tasks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        blocks: list[tuple[str, str, list[int]]] = []
        size = 0
        for g in groups[lo:hi]:
            if blocks and blocks[-1][1] == g.path and size + g.nbytes <= block_bytes:
                blocks[-1][2].append(g.index)
                size += g.nbytes
            else:
                blocks.append((g.uri, g.path, [g.index]))
                size = g.nbytes
        tasks.append(blocks)
    return tasks


def checked_parquet(fs, uri: str, path: str):
    """A shard opened for reading some of its row groups by range reads, every page it decodes
    checked against the CRC-32 the writer stored with it (`parquet_options`): damaged bytes are
    refused without reading (and hashing) the whole shard. DataError naming the shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(fs.open_input_file(path), page_checksum_verification=True)
    except FileNotFoundError:
        raise DataError(f"shard not found: {uri}") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{uri}: not a readable Parquet shard ({e})") from None


def read_checked_groups(shard, uri: str, indices: Sequence[int], columns: Optional[Sequence[str]]):
    """Row groups `indices` of a `checked_parquet` shard as one Arrow table; DataError naming the
    shard when a page's checksum differs (damaged bytes) or it cannot be decoded."""
    import pyarrow as pa

    try:
        return shard.read_row_groups(list(indices), columns=None if columns is None else list(columns), use_threads=False)
    except (OSError, pa.ArrowException) as e:
        if "checksum" in str(e).lower():
            raise DataError(f"{uri}: damaged bytes (a page checksum differs: {e}); run `raylift data verify` on the "
                            "dataset and rebuild it") from None
        raise DataError(f"{uri}: cannot read shard ({e})") from None


def _read_blocks(fs, blocks: list[tuple[str, str, list[int]]], columns: list[str]) -> Iterator:
    """Ray read task body: one Arrow table per planned block, decoded by plain pyarrow
    (fixed-shape tensor columns stay as stored), every page checked (`checked_parquet`)."""
    opened: Optional[tuple] = None
    for uri, path, indices in blocks:
        if opened is None or opened[0] != path:
            opened = (path, checked_parquet(fs, uri, path))
        yield read_checked_groups(opened[1], uri, indices, columns)


def _row_groups(footers: list[tuple[storage.Location, Any]], columns: Sequence[str]) -> list[RowGroup]:
    """Every row group of the split, in manifest (row) order."""
    groups = []
    for loc, meta in footers:
        wanted = [j for j in range(meta.num_columns) if meta.schema.column(j).path.split(".")[0] in columns]
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            groups.append(RowGroup(loc.uri, loc.path, i, rg.num_rows,
                                   sum(rg.column(j).total_uncompressed_size for j in wanted)))
    return groups


def split_row_groups(uri, split: str) -> list[int]:
    """Rows of each row group of the split, in manifest order (what `open_split(groups=...)` indexes)."""
    return [g.rows for g in _row_groups(_split_footers(uri, split), TORCH_COLUMNS)]


def _shard_datasource(footers: list[tuple[storage.Location, Any]], columns: list[str],
                      selection: Optional[Sequence[int]] = None):
    """A Ray Data datasource whose read tasks decode the shards' row groups with pyarrow, every
    page checked (`checked_parquet`); only the row groups `selection` (indices in manifest
    order), in that order, when given."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    groups = _row_groups(footers, columns)
    if selection is not None:
        bad = [i for i in selection if not 0 <= i < len(groups)]
        if bad:
            raise DataError(f"row group(s) {bad[:5]} out of range: the split has {len(groups)}")
        groups = [groups[i] for i in selection]
    fs = footers[0][0].fs

    class ParquetShards(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(g.nbytes for g in groups)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            tasks, start = [], 0
            for blocks in plan_read_tasks(groups, parallelism, READ_TASK_BYTES, READ_BLOCK_BYTES):
                count = sum(len(indices) for _, _, indices in blocks)
                mine = groups[start:start + count]  # tasks are contiguous runs of `groups`
                start += count
                meta = BlockMetadata(
                    num_rows=sum(g.rows for g in mine), size_bytes=sum(g.nbytes for g in mine),
                    input_files=tuple(dict.fromkeys(b[0] for b in blocks)), exec_stats=None,
                )
                tasks.append(ReadTask(functools.partial(_read_blocks, fs, blocks, list(columns)), meta,
                                      per_task_row_limit=per_task_row_limit))
            return tasks

    return ParquetShards()


def open_split(uri, split: str, columns: Optional[Sequence[str]] = None, groups: Optional[Sequence[int]] = None):
    """The split as a streaming `ray.data.Dataset` of Arrow blocks (rows in shard order). `columns`
    limits what is read: by default the columns `iter_torch_batches` yields (`TORCH_COLUMNS`);
    pass `SCHEMA_COLUMNS` for all of them. `groups`: read only these row groups (indices into
    `split_row_groups`), in this order (blocks keep the row-group order). `uri` may be a URI or a
    `storage.Location`."""
    import ray

    columns = list(TORCH_COLUMNS if columns is None else columns)
    unknown = [c for c in columns if c not in SCHEMA_COLUMNS]
    if unknown or not columns:
        raise DataError(f"unknown column(s) {unknown or columns} for {uri} (columns: {', '.join(SCHEMA_COLUMNS)})")
    dataset = uri if isinstance(uri, storage.Location) else storage.open_location(uri)
    ds = ray.data.read_datasource(_shard_datasource(_split_footers(dataset, split), columns, groups))
    # Blocks in row-group order, whichever read task finishes first: a seeded training order (and a
    # resumed run's) is then the same on every run.
    ds.context.execution_options.preserve_order = True
    return ds


def _column_numpy(array) -> np.ndarray:
    """A (zero-copy where Arrow allows) numpy view of one Arrow column chunk; fixed-shape tensors
    keep their shape ((n, T, J, C)); booleans (bit-packed in Arrow) are unpacked."""
    import pyarrow as pa

    if isinstance(array.type, pa.FixedShapeTensorType):
        return array.to_numpy_ndarray()
    if isinstance(array, pa.ExtensionArray):  # Ray's own tensor extension type
        return array.to_numpy()
    return array.to_numpy(zero_copy_only=False)


def block_pieces(table, keys: Sequence[str] = TORCH_COLUMNS) -> list[dict[str, np.ndarray]]:
    """A block (Arrow table) as numpy views of its `keys` columns, one dict per record batch."""
    keys = [k for k in keys if k in table.column_names]
    return [{k: _column_numpy(rb.column(k)) for k in keys} for rb in table.to_batches() if rb.num_rows]


def batch_rows(pieces: Iterator[dict[str, np.ndarray]], batch_size: int, shuffle_buffer: int = 0,
               rng: Optional[np.random.Generator] = None, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` rows (the last one smaller unless `drop_last`) from a stream of
    column dicts. `shuffle_buffer` = 0: rows in order. Otherwise a local shuffle: rows are pooled
    until at least max(shuffle_buffer, batch_size) are waiting (or the input is exhausted) and each
    batch is drawn uniformly without replacement from the pool with `rng` (rows of a batch come
    grouped by the piece they were drawn from). Every row is copied exactly once, into the batch's
    own writable arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer and rng is None:
        rng = np.random.default_rng()
    pool: list[list] = []  # [arrays, indices of rows not yet taken]
    waiting, exhausted, stream = 0, False, iter(pieces)
    fill = max(shuffle_buffer, batch_size)
    while True:
        while not exhausted and waiting < fill:
            piece = next(stream, None)
            if piece is None:
                exhausted = True
            else:
                rows = len(next(iter(piece.values())))
                if rows:
                    pool.append([piece, np.arange(rows)])
                    waiting += rows
        take = min(batch_size, waiting)
        if take == 0 or (drop_last and take < batch_size):
            return
        if shuffle_buffer:
            chosen = rng.choice(waiting, size=take, replace=False)
        else:
            chosen = np.arange(take)
        counts = np.array([len(left) for _, left in pool])
        owner = np.searchsorted(np.cumsum(counts), chosen, side="right")
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        template = pool[0][0]
        out = {k: np.empty((take,) + v.shape[1:], dtype=v.dtype) for k, v in template.items()}
        at = 0
        for p in np.unique(owner):
            local = np.sort(chosen[owner == p] - first[p]) if not shuffle_buffer else chosen[owner == p] - first[p]
            arrays, left = pool[p]
            rows = left[local]
            for k, v in arrays.items():
                np.take(v, rows, axis=0, out=out[k][at:at + len(rows)])
            at += len(rows)
            pool[p][1] = np.delete(left, local)
        pool = [entry for entry in pool if len(entry[1])]
        waiting -= take
        yield out


def _to_torch(batch: dict[str, np.ndarray], device: Any) -> dict:
    import torch

    out = {}
    for key, array in batch.items():
        tensor = torch.from_numpy(array)  # owned, writable memory from batch_rows: no copy
        out[key] = tensor.to(device, non_blocking=True) if str(device) != "cpu" else tensor
    return out


def iter_numpy_batches(
    ds_or_shard,
    batch_size: int,
    shuffle_buffer: int = 0,
    prefetch_batches: int = 2,
    seed: Optional[int] = None,
    drop_last: bool = False,
    keys: Sequence[str] = TORCH_COLUMNS,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of windows as dicts of numpy arrays (the `keys` columns the blocks hold), with an
    optional seeded local shuffle buffer (`batch_rows`): what `iter_torch_batches` wraps."""
    blocks = ds_or_shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_batches)
    pieces = (piece for table in blocks for piece in block_pieces(table, keys))
    rng = np.random.default_rng(seed) if shuffle_buffer else None
    return batch_rows(pieces, batch_size, shuffle_buffer, rng, drop_last)


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
    `trajectory`, `intrinsics`, `image_size`, `flipped`; other columns are left out).
    `shuffle_buffer` > 0 shuffles locally within a buffer of at least that many windows, seeded by
    `seed` (same blocks in the same order + same seed = same batches). Ray streams and prefetches
    `prefetch_batches` blocks ahead (decoding happens in Ray read tasks); blocks arrive as zero-copy
    Arrow views and `batch_rows` copies each window once into the batch."""
    for batch in iter_numpy_batches(ds_or_shard, batch_size, shuffle_buffer, prefetch_batches, seed, drop_last):
        yield _to_torch(batch, device)


def load_split_arrays(uri: str, split: str, columns: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """The whole split in memory, rows in shard order: tensor columns stacked into float32 arrays
    ((W, T, J, 2), ...), `start`/`sequence_length` int32, `flipped` bool, strings as object arrays."""
    import pyarrow as pa

    files = check_shards(uri, split)
    dataset = storage.open_location(uri)
    hashes = shard_hashes(dataset, read_manifest_at(dataset))
    tables = []
    for loc in files:
        try:
            tables.append(verified_parquet(loc.fs, loc.uri, loc.path, hashes.get(loc.path)).read(columns=columns))
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
