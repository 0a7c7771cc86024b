"""Reading dataset shards back, for every kind of dataset: checked Parquet files, the Ray Data
datasource training streams from, and shuffled batches.

Damaged bytes are never trained or evaluated on; a missing, non-Parquet or damaged shard raises a
DataError naming the file. Readers of whole shards (`verified_parquet`, `read_split`) hash each
shard's bytes as they read them and compare them with the manifest's sha256; streaming readers,
which read a few row groups of a shard (training's per-epoch row-group order, validation shares,
the Ray Data datasource), check every page they decode against the CRC-32 the writer stored with
it and each footer's row count against the manifest (`checked_parquet`, `split_footers`), so no
shard is read in full to read a part of it.

- `open_split(dataset, split, columns, groups)`: the split as a streaming `ray.data.Dataset`
  whose read tasks decode whole row groups with plain pyarrow (Ray's generic `read_parquet` spent
  ~1/3 more CPU per window and, on first use in each worker process, seconds importing its
  listing/HTTP machinery); `groups` reads only those row groups, in that order.
- `iter_numpy_batches(ds_or_shard, batch_size, shuffle_buffer, ...)`: batches drawn from a seeded
  local shuffle buffer (`batch_rows`); blocks come from Ray as zero-copy numpy views of the Arrow
  tensor columns and each row is copied once, into the batch's own memory.
- `read_split(dataset, split, columns)`: the whole split in memory, read without Ray.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from preprocessing.errors import DataError
from preprocessing.store.dataset import Dataset
from preprocessing.store.storage import Location

# Read-task sizing in decoded bytes: ~128 MB of row groups per Ray read task (fewer, larger tasks
# cost less scheduling), blocks of at most ~32 MB (at least one row group) so they stream.
READ_TASK_BYTES = 128 << 20
READ_BLOCK_BYTES = 32 << 20
# CPUs each read task requests. Less than a whole CPU, so a read fits beside Train workers that
# take whole CPUs and a Tune trial driver's sliver: with 1.0 (Ray's default), one 1-CPU worker and a
# trial driver's 0.01 CPU on a 2-CPU machine left 0.99 CPU, and the first read waited forever.
READ_TASK_CPUS = 0.25


def parquet_file(loc: Location):
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


def split_footers(dataset: Dataset, split: str) -> list[tuple[Location, Any]]:
    """(shard, Parquet footer metadata) of every shard of the split, in row order, each footer's
    row count checked against the manifest (no data read)."""
    out = []
    for loc, record in zip(dataset.shards(split), dataset.shard_records(split)):
        meta = parquet_file(loc).metadata
        if meta.num_rows != record["rows"]:
            raise DataError(f"{loc.uri}: {meta.num_rows} rows, manifest says {record['rows']}")
        out.append((loc, meta))
    return out


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


def row_groups(footers: list[tuple[Location, Any]], columns: Sequence[str]) -> list[RowGroup]:
    """Every row group of the split, in manifest (row) order."""
    groups = []
    for loc, meta in footers:
        wanted = [j for j in range(meta.num_columns) if meta.schema.column(j).path.split(".")[0] in columns]
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            groups.append(RowGroup(loc.uri, loc.path, i, rg.num_rows,
                                   sum(rg.column(j).total_uncompressed_size for j in wanted)))
    return groups


def split_row_groups(dataset: Dataset, split: str, columns: Sequence[str]) -> list[int]:
    """Rows of each row group of the split, in manifest order (what `open_split(groups=...)` indexes)."""
    return [g.rows for g in row_groups(split_footers(dataset, split), columns)]


def shard_datasource(footers: list[tuple[Location, Any]], columns: list[str],
                      selection: Optional[Sequence[int]] = None):
    """A Ray Data datasource whose read tasks decode the shards' row groups with pyarrow, every
    page checked (`checked_parquet`); only the row groups `selection` (indices in manifest
    order), in that order, when given."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    groups = row_groups(footers, columns)
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


def iter_row_group_share(dataset: Dataset, split: str, columns: Sequence[str], rank: int = 0,
                         world: int = 1) -> Iterator[tuple[Location, int, Any]]:
    """(shard, row group index, Arrow table of `columns`) of row groups rank, rank + world, ... of
    the split (manifest order), every page checked: `world` readers together read every row once,
    without Ray (per-epoch validation shares)."""
    groups = [(loc, i) for loc, meta in split_footers(dataset, split) for i in range(meta.num_row_groups)]
    opened: Optional[tuple] = None
    for loc, index in groups[rank::world]:
        if opened is None or opened[0] != loc.path:  # each shard opened once per call
            opened = (loc.path, checked_parquet(loc.fs, loc.uri, loc.path))
        yield loc, index, read_checked_groups(opened[1], loc.uri, [index], columns)


def open_split(dataset: Dataset, split: str, columns: Sequence[str], groups: Optional[Sequence[int]] = None):
    """The split's `columns` as a streaming `ray.data.Dataset` of Arrow blocks (rows in shard
    order); `groups`: only these row groups (indices into `split_row_groups`), in this order.
    Blocks keep the row-group order."""
    import ray

    ds = ray.data.read_datasource(shard_datasource(split_footers(dataset, split), list(columns), groups),
                                  num_cpus=READ_TASK_CPUS)
    # Blocks in row-group order, whichever read task finishes first: a seeded training order (and a
    # resumed run's) is then the same on every run.
    ds.context.execution_options.preserve_order = True
    return ds


def column_numpy(array) -> np.ndarray:
    """A (zero-copy where Arrow allows) numpy view of one Arrow column chunk; fixed-shape tensors
    keep their shape ((n, T, J, C)); booleans (bit-packed in Arrow) are unpacked."""
    import pyarrow as pa

    if isinstance(array.type, pa.FixedShapeTensorType):
        return array.to_numpy_ndarray()
    if isinstance(array, pa.ExtensionArray):  # Ray's own tensor extension type
        return array.to_numpy()
    return array.to_numpy(zero_copy_only=False)


def block_pieces(table, keys: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """A block (Arrow table) as numpy views of its `keys` columns, one dict per record batch."""
    keys = [k for k in keys if k in table.column_names]
    return [{k: column_numpy(rb.column(k)) for k in keys} for rb in table.to_batches() if rb.num_rows]


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


def iter_numpy_batches(
    ds_or_shard,
    batch_size: int,
    keys: Sequence[str],
    shuffle_buffer: int = 0,
    prefetch_batches: int = 2,
    seed: Optional[int] = None,
    drop_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of rows as dicts of numpy arrays (the `keys` columns the blocks hold) from a Ray
    Dataset or a Ray Train shard, with an optional seeded local shuffle buffer (`batch_rows`;
    same blocks in the same order + same seed = same batches). Ray streams and prefetches
    `prefetch_batches` blocks ahead (decoding happens in Ray read tasks)."""
    blocks = ds_or_shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_batches)
    pieces = (piece for table in blocks for piece in block_pieces(table, keys))
    rng = np.random.default_rng(seed) if shuffle_buffer else None
    return batch_rows(pieces, batch_size, shuffle_buffer, rng, drop_last)


def read_split(dataset: Dataset, split: str, columns: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """The whole split in memory, rows in shard order, every shard checked against the manifest's
    sha256: fixed-shape tensor columns as float32 arrays ((W, T, J, 2), ...), strings as object
    arrays, other columns as numpy arrays."""
    import pyarrow as pa

    tables = []
    for loc, _ in split_footers(dataset, split):
        try:
            shard = verified_parquet(loc.fs, loc.uri, loc.path, dataset.sha256_of(loc))
            tables.append(shard.read(columns=None if columns is None else list(columns)))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: cannot read shard ({e})") from None
    table = pa.concat_tables(tables)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.FixedShapeTensorType):
            out[name] = column.to_numpy_ndarray()
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out[name] = np.asarray(column.to_pylist(), dtype=object)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out
