"""Windows -> zstd Parquet shards on local disk or S3, built in parallel by Ray Data, reproducibly.

Layout: `<root>/<id>/<split>/part-NNNNN.parquet` + `<root>/<id>/manifest.json` (written last).
One row = one window (columns: see CONTRACTS.md and `SCHEMA_COLUMNS`). Tensor columns are Arrow's
canonical fixed-shape tensor extension type (`arrow.fixed_shape_tensor`), which plain pyarrow reads
back with its shape and Ray Data turns into (batch, *shape) numpy arrays.

How a dataset is built (`prepare_dataset`):
1. load the source (`preprocessing.sources.load_sequences`), hash its files, compute the id
   (`dataset_id`). A manifest already at `<root>/<id>` is a cache hit: nothing else is done.
2. plan (driver, cheap arithmetic): the window sources (one per sequence, or per synchronised
   camera group in multi-view mode) in a fixed order (split, subject, action, camera), each
   contributing its windows then (training, `flip`) their mirrored copies. A split's rows are
   stored in that sequence order, or, for the training split with `windows.row_order: shuffled`
   (the default), in a seeded uniform permutation of it (`SplitRows`); the stored rows are cut
   into shards of `rows_per_shard` rows and row groups of `rows_per_group` rows.
3. Ray Data runs one task per shard (`ray.data.from_items(shards).map(...)`): it cuts its windows
   from the sources (shared through the object store), and streams them row group by row group
   into `<staging>/<split>/part-NNNNN.parquet`, hashing the bytes as they are written (and the
   writer stores a CRC-32 with every page, which streaming readers check).
4. publish: move the staging directory to `<root>/<id>`, check every shard is there, then write
   the manifest.
Steps 3-4 run under the id's lease `<root>/.lock-<id>` (`preprocessing.lease`: exclusive create on
local disk, a conditional PUT on S3), so at most one run writes a dataset id at a time: a second
run is refused with the holder's host and pid, or finds the first's manifest (cache hit). Each
staging directory holds its run's owner record (`_OWNER.json`: host, pid, start time, lease
expiry); a leftover is removed only when that owner is provably gone.
The file names, row order and row groups depend only on the data and the config, and the Parquet
writer adds no timestamps, so the same inputs give byte-identical shards. A run that dies leaves
only a `.staging-<id>-*` directory (no manifest, so no dataset) and a stale lease; the next run for
that id takes the lease over and removes the directory.

Dataset id: sha256 of (DataConfig without `root` and without source file *locations*, the source
files' content hashes in load order, FORMAT_VERSION), 16 hex digits. Locations are left out
because the hashes already pin the content: the same files elsewhere give the same dataset.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from preprocessing import lease, storage
from preprocessing.config import DataConfig
from preprocessing.errors import DataError
from preprocessing.manifest import (
    FORMAT_VERSION,
    STAGING_PREFIX,
    has_manifest,
    read_manifest_at,
    write_manifest_at,
)
from preprocessing.sequences import Sequence
from preprocessing.skeleton import Skeleton
from preprocessing.storage import Location
from preprocessing.windows import (
    flip_intrinsics,
    flip_keypoints_2d,
    flip_positions_3d,
    flip_trajectory,
    make_windows,
    window_mask,
    window_starts,
)

SPLITS = ("train", "val", "test")  # "val": source.val_subjects, windowed like "test"
TENSOR_COLUMNS = ("keypoints_2d", "positions_3d", "mask", "trajectory", "intrinsics", "image_size")
STRING_COLUMNS = ("subject", "action", "activity", "camera")
SCHEMA_COLUMNS = TENSOR_COLUMNS + STRING_COLUMNS + ("start", "flipped", "sequence_length")
OWNER_NAME = "_OWNER.json"  # a staging directory's owner record (preprocessing.lease.Owner)
LOCK_PREFIX = ".lock-"  # <root>/.lock-<id>: the lease of the one run that may build dataset <id>
# Config fields that only say where source files are (their content is hashed instead).
_LOCATION_FIELDS = ("data_3d", "data_2d", "cameras", "mpi_train", "mpi_test", "videos", "frames_dir")

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Window sources: what one shard task reads
# --------------------------------------------------------------------------------------------


@dataclass
class WindowSource:
    """One unit of windowing: a single-camera sequence, or all cameras of a (subject, action)
    stacked on a view axis (multi-view: arrays (N, V, J, C), intrinsics (V, 9))."""

    split: str
    subject: str
    action: str
    activity: str
    camera: str  # camera id, or ids joined by "," (multi-view)
    keypoints_2d: np.ndarray  # (N, [V,] J, 2) float32
    positions_3d: np.ndarray  # (N, [V,] J, 3) float32
    trajectory: np.ndarray  # (N, [V,] 3) float32: the root's camera-space position, metres
    valid: np.ndarray  # (N,) bool
    intrinsics: np.ndarray  # ([V,] 9) float32, pixels
    image_size: np.ndarray  # ([V,] 2) float32: (width, height) in pixels

    @property
    def num_frames(self) -> int:
        return int(self.keypoints_2d.shape[0])


def _order_key(seq: Sequence) -> tuple:
    return (SPLITS.index(seq.split) if seq.split in SPLITS else len(SPLITS), seq.subject, seq.action, seq.camera_index, seq.camera)


def single_view_sources(sequences: list[Sequence]) -> list[WindowSource]:
    return [
        WindowSource(
            split=s.split, subject=s.subject, action=s.action, activity=s.activity, camera=s.camera,
            keypoints_2d=np.ascontiguousarray(s.keypoints_2d, dtype=np.float32),
            positions_3d=np.ascontiguousarray(s.positions_3d, dtype=np.float32),
            trajectory=np.ascontiguousarray(s.trajectory, dtype=np.float32),
            valid=np.asarray(s.valid, dtype=bool),
            intrinsics=np.asarray(s.intrinsics, dtype=np.float32),
            image_size=np.asarray(s.image_size, dtype=np.float32),
        )
        for s in sorted(sequences, key=_order_key)
    ]


def multi_view_sources(sequences: list[Sequence]) -> tuple[list[WindowSource], list[str], list[str]]:
    """Group the cameras of each (split, subject, action) into one source.

    Every row of a dataset has the same number of views, so only groups that have every camera of
    the source form rows; their sequences are trimmed to the shortest camera's length. Returns
    (sources, camera ids in view order, skipped groups as "split/subject/action" strings).
    """
    cameras = sorted({(s.camera_index, s.camera) for s in sequences})
    camera_ids = [c for _, c in cameras]
    groups: dict[tuple, dict[str, Sequence]] = {}
    for s in sorted(sequences, key=_order_key):
        groups.setdefault((SPLITS.index(s.split) if s.split in SPLITS else len(SPLITS), s.subject, s.action), {})[s.camera] = s
    sources, skipped = [], []
    for (_, subject, action), by_camera in groups.items():
        first = next(iter(by_camera.values()))
        if set(by_camera) != set(camera_ids):
            skipped.append(f"{first.split}/{subject}/{action}")
            continue
        views = [by_camera[c] for c in camera_ids]
        n = min(v.num_frames for v in views)
        sources.append(WindowSource(
            split=first.split, subject=subject, action=action, activity=first.activity,
            camera=",".join(camera_ids),
            keypoints_2d=np.ascontiguousarray(np.stack([v.keypoints_2d[:n] for v in views], axis=1), dtype=np.float32),
            positions_3d=np.ascontiguousarray(np.stack([v.positions_3d[:n] for v in views], axis=1), dtype=np.float32),
            trajectory=np.ascontiguousarray(np.stack([v.trajectory[:n] for v in views], axis=1), dtype=np.float32),
            valid=np.logical_and.reduce([np.asarray(v.valid[:n], dtype=bool) for v in views]),
            intrinsics=np.stack([np.asarray(v.intrinsics, dtype=np.float32) for v in views]),
            image_size=np.array([v.image_size for v in views], dtype=np.float32),
        ))
    return sources, camera_ids, skipped


# --------------------------------------------------------------------------------------------
# Planning: rows -> shards -> row groups (pure, deterministic)
# --------------------------------------------------------------------------------------------

# Seeds the stored permutation of a shuffled training split (`data.windows.row_order: shuffled`).
# Part of the format: the same sources and config always give the same shards.
ROW_ORDER_SEED = 20_240_601


@dataclass(frozen=True)
class WindowJob:
    """Everything a shard task needs besides the sources (pickled into each Ray task)."""

    mode: str
    frames: int
    stride: int
    flip: bool
    skeleton: Skeleton
    rows_per_group: int
    staging: Location

    def starts(self, source: WindowSource) -> np.ndarray:
        return window_starts(source.num_frames, self.mode, self.frames, self.stride, source.split)

    def flips(self, split: str) -> bool:
        return self.flip and split == "train"

    def rows_of(self, source: WindowSource) -> int:
        return len(self.starts(source)) * (2 if self.flips(source.split) else 1)


@dataclass(frozen=True)
class SplitRows:
    """Where each stored row of one split comes from: the split's sources (indices into the
    dataset's source list, in sequence order) with their row counts, and whether the rows are
    stored in a seeded uniform permutation (`shuffled`) or in sequence order. A source's rows are
    its windows, then (training, `flip`) their mirrored copies."""

    sources: tuple[int, ...]
    counts: tuple[int, ...]
    shuffled: bool

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def order(self) -> Optional[np.ndarray]:
        """Stored position -> row in sequence order; None for sequence order (the identity)."""
        if not self.shuffled:
            return None
        return np.random.default_rng(ROW_ORDER_SEED).permutation(self.total)

    def locate(self, lo: int, hi: int, order: Optional[np.ndarray]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Stored rows [lo, hi) as (source index, the source's own rows, their slots in [0, hi - lo))
        per source, sources in sequence order. `order`: `self.order()`, computed once per task."""
        rows = np.arange(lo, hi, dtype=np.int64) if order is None else order[lo:hi]
        counts = np.asarray(self.counts, dtype=np.int64)
        ends = np.cumsum(counts)
        which = np.searchsorted(ends, rows, side="right")
        local = rows - (ends[which] - counts[which])
        slots = np.argsort(which, kind="stable")
        present, first = np.unique(which[slots], return_index=True)
        return [(self.sources[k], local[part], part)
                for k, part in zip(present, np.split(slots, first[1:]))]


def split_rows(sources: list[WindowSource], job: WindowJob, row_order: str) -> dict[str, SplitRows]:
    """Each split's `SplitRows`; only the training split is ever shuffled."""
    out = {}
    for split in SPLITS:
        index = [i for i, s in enumerate(sources) if s.split == split]
        if index:
            out[split] = SplitRows(tuple(index), tuple(job.rows_of(sources[i]) for i in index),
                                   shuffled=split == "train" and row_order == "shuffled")
    return out


Piece = tuple[int, int, int]  # (source index, first row, end row) in the source's own row order


@dataclass
class ShardPlan:
    split: str
    index: int
    groups: list[list[Piece]] = field(default_factory=list)  # one list of pieces per row group

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    @property
    def path(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def rows(self) -> int:
        return sum(hi - lo for group in self.groups for _, lo, hi in group)


def plan_shards(row_counts: list[tuple[str, int]], rows_per_shard: int, rows_per_group: int) -> list[ShardPlan]:
    """Cut each split's rows (sources in order, `row_counts[i] = (split, rows of source i)`) into
    shards of `rows_per_shard` rows, each cut into row groups of `rows_per_group` rows."""
    plans: list[ShardPlan] = []
    for split in SPLITS:
        shard: Optional[ShardPlan] = None
        shard_rows = group_rows = 0
        for index, (src_split, rows) in enumerate(row_counts):
            if src_split != split:
                continue
            row = 0
            while row < rows:
                if shard is None or shard_rows == rows_per_shard:
                    shard = ShardPlan(split, len([p for p in plans if p.split == split]))
                    plans.append(shard)
                    shard_rows = group_rows = 0
                if not shard.groups or group_rows == rows_per_group:
                    shard.groups.append([])
                    group_rows = 0
                take = min(rows - row, rows_per_shard - shard_rows, rows_per_group - group_rows)
                shard.groups[-1].append((index, row, row + take))
                row += take
                shard_rows += take
                group_rows += take
    return plans


# --------------------------------------------------------------------------------------------
# Shard writing (runs inside Ray tasks)
# --------------------------------------------------------------------------------------------


def piece_arrays(source: WindowSource, rows: np.ndarray, job: WindowJob) -> dict[str, np.ndarray]:
    """The given rows of a source, in the given order: row k < W is window k, row W + k its
    mirrored copy (W = the source's windows)."""
    starts = job.starts(source)
    rows = np.asarray(rows, dtype=np.int64)
    flipped = rows >= len(starts)
    sel = starts[np.where(flipped, rows - len(starts), rows)]
    win = make_windows(source.keypoints_2d, source.positions_3d, source.valid, sel, job.frames, job.mode,
                       trajectory=source.trajectory)
    win["intrinsics"] = np.repeat(source.intrinsics[None], len(sel), axis=0)
    if flipped.any():
        win["keypoints_2d"][flipped] = flip_keypoints_2d(win["keypoints_2d"][flipped], job.skeleton)
        win["positions_3d"][flipped] = flip_positions_3d(win["positions_3d"][flipped], job.skeleton)
        win["trajectory"][flipped] = flip_trajectory(win["trajectory"][flipped])
        win["intrinsics"][flipped] = flip_intrinsics(source.intrinsics, source.image_size[..., 0])
    win["image_size"] = np.repeat(source.image_size[None], len(sel), axis=0)
    win["start"] = sel.astype(np.int32)
    win["flipped"] = flipped
    for key in STRING_COLUMNS:
        win[key] = np.full(len(sel), getattr(source, key), dtype=object)
    win["sequence_length"] = np.full(len(sel), source.num_frames, dtype=np.int32)
    return win


def gather_rows(sources: dict[int, WindowSource], located: list[tuple[int, np.ndarray, np.ndarray]],
                job: WindowJob) -> dict[str, np.ndarray]:
    """The rows `SplitRows.locate` found, cut from their sources and put in their slots."""
    n = sum(len(slots) for _, _, slots in located)
    out: dict[str, np.ndarray] = {}
    for index, rows, slots in located:
        part = piece_arrays(sources[index], rows, job)
        for key, value in part.items():
            if key not in out:
                out[key] = np.empty((n,) + value.shape[1:], dtype=value.dtype)
            out[key][slots] = value
    return out


def windows_table(arrays: dict[str, np.ndarray]):
    """Arrow table of windows: fixed-shape float32 tensors + scalar metadata columns."""
    import pyarrow as pa

    columns = {}
    for key in TENSOR_COLUMNS:
        columns[key] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arrays[key], dtype=np.float32))
    for key in STRING_COLUMNS:
        columns[key] = pa.array(arrays[key], type=pa.string())
    columns["start"] = pa.array(arrays["start"], type=pa.int32())
    columns["flipped"] = pa.array(arrays["flipped"], type=pa.bool_())
    columns["sequence_length"] = pa.array(arrays["sequence_length"], type=pa.int32())
    return pa.table(columns)


def parquet_options() -> dict:
    """Writer settings: zstd; byte-stream-split (and no dictionary) on the float tensor leaves,
    dictionaries for strings; statistics only on scalar columns (float stats are useless here);
    a CRC-32 with every page, which the streaming readers check (preprocessing/readers.py)."""
    return {
        "compression": "zstd",
        "use_dictionary": list(STRING_COLUMNS),
        "use_byte_stream_split": [f"{c}.list.element" for c in TENSOR_COLUMNS],
        "write_statistics": list(STRING_COLUMNS) + ["start", "flipped", "sequence_length"],
        "write_page_checksum": True,
    }


class _HashingSink:
    """A write-only file object forwarding to a pyarrow output stream while hashing the bytes."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self._size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._stream.write(view)
        self._size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size


def locate_groups(plan: ShardPlan, rows: SplitRows) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per row group of `plan` (a range of the split's stored rows), `rows.locate` of its rows."""
    order = rows.order()
    return [rows.locate(group[0][1], group[-1][2], order) for group in plan.groups]


def write_shard(plan: ShardPlan, sources: dict[int, WindowSource], job: WindowJob,
                located: list[list[tuple[int, np.ndarray, np.ndarray]]]) -> dict:
    """Write one shard into the staging directory, one row group per planned group (`located`:
    `locate_groups(plan, ...)`, which source rows fill each group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = job.staging.child(plan.path)
    try:
        job.staging.fs.create_dir(job.staging.child(plan.split).path, recursive=True)
        with target.fs.open_output_stream(target.path) as stream:
            sink = _HashingSink(stream)
            writer = None
            for group in located:
                table = windows_table(gather_rows(sources, group, job))
                if writer is None:
                    writer = pq.ParquetWriter(sink, table.schema, **parquet_options())
                writer.write_table(table, row_group_size=len(table))
            writer.close()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot write {target.uri}: {e}") from None
    return {"split": plan.split, "path": plan.path, "rows": plan.rows, "bytes": sink.size, "sha256": sink.sha256}


def _write_shard_row(row: dict, sources: list, job: WindowJob, layout: dict[str, SplitRows]) -> dict:
    """Ray Data map function: one row = one planned shard (as JSON); returns its file record."""
    import ray

    spec = json.loads(row["plan"])
    plan = ShardPlan(spec["split"], spec["index"], [[tuple(p) for p in g] for g in spec["groups"]])
    located = locate_groups(plan, layout[plan.split])
    needed = sorted({int(i) for group in located for i, _, _ in group})
    fetched = dict(zip(needed, ray.get([sources[i] for i in needed])))
    try:
        return {**write_shard(plan, fetched, job, located), "error": ""}
    except DataError as e:  # returned, not raised: Ray's task-error wrapping would lose the type
        return {"split": plan.split, "path": plan.path, "rows": 0, "bytes": 0, "sha256": "", "error": str(e)}


# --------------------------------------------------------------------------------------------
# Dataset id, manifest contents, publishing
# --------------------------------------------------------------------------------------------


def config_for_id(data: DataConfig) -> dict:
    """The part of the data config that defines the dataset's content."""
    from preprocessing.schema import to_dict

    cfg = to_dict(data)
    cfg.pop("root", None)
    cfg.pop("dataset", None)  # names a prepared dataset, never part of one's content
    cfg.pop("images", None)  # image datasets have their own id (preprocessing/image_shards.py)
    for key in _LOCATION_FIELDS:
        cfg["source"].pop(key, None)
    cfg["source"].get("synthetic", {}).pop("out_dir", None)
    cfg["windows"]["stride"] = data.windows.effective_stride
    if not cfg["source"].get("val_subjects"):
        cfg["source"].pop("val_subjects", None)  # ids of datasets without a validation split unchanged
    return cfg


def hash_files(paths: list[str]) -> list[dict]:
    """[{path, sha256, bytes}] for each source file, in the given order."""
    out = []
    for path in paths:
        loc = storage.open_location(path)
        info = storage.file_info(loc)
        if info.type != storage.pafs.FileType.File:
            raise DataError(f"source file not found: {path}")
        out.append({"path": loc.uri, "sha256": storage.sha256_of(loc), "bytes": info.size})
    return out


def compute_id(data: DataConfig, file_hashes: list[str]) -> str:
    payload = json.dumps(
        {"format_version": FORMAT_VERSION, "config": config_for_id(data), "sources": file_hashes},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def dataset_id(data: DataConfig, source_files: Optional[list[str]] = None) -> str:
    """The id of the dataset `data` describes. Reads the source (to learn its files, e.g. the
    generated synthetic files) unless `source_files` is given."""
    if source_files is None:
        from preprocessing.sources import load_sequences

        source_files = load_sequences(data.source).files
    return compute_id(data, [f["sha256"] for f in hash_files(source_files)])


@dataclass
class DatasetInfo:
    id: str
    uri: str  # <root>/<id>
    manifest: dict
    cached: bool = False  # True when an existing dataset was found and nothing was built


def _counts(sources: list[WindowSource], job: WindowJob) -> dict:
    """Windows per split / subject / activity, and the real (mask = 1) frames per split."""
    splits: dict[str, dict] = {}
    for src in sources:
        starts = job.starts(src)
        rows = job.rows_of(src)
        s = splits.setdefault(src.split, {
            "windows": 0, "flipped": 0, "sources": 0, "frames": 0, "masked_frames": 0,
            "subjects": {}, "activities": {},
        })
        s["windows"] += rows
        s["flipped"] += rows - len(starts)
        s["sources"] += 1
        s["frames"] += src.num_frames
        if job.mode == "seq2seq":
            s["masked_frames"] += int(window_mask(starts, job.frames, src.valid).sum())
        else:
            s["masked_frames"] += int(src.valid[starts + job.frames // 2].sum())
        s["subjects"][src.subject] = s["subjects"].get(src.subject, 0) + rows
        s["activities"][src.activity] = s["activities"].get(src.activity, 0) + rows
    return splits


def _shapes(sources: list[WindowSource], job: WindowJob) -> dict:
    views = sources[0].keypoints_2d.shape[1:-2]  # () or (V,)
    joints = sources[0].keypoints_2d.shape[-2]
    t_out = job.frames if job.mode == "seq2seq" else 1
    return {
        "keypoints_2d": [job.frames, *views, joints, 2],
        "positions_3d": [t_out, *views, joints, 3],
        "mask": [t_out],
        "trajectory": [t_out, *views, 3],
        "intrinsics": [*views, 9],
        "image_size": [*views, 2],
    }


def _clean_leftovers(root: Location, dataset: Location, id_: str, progress: Progress) -> None:
    """Remove staging directories of earlier runs for this id whose owner is provably gone (dead
    pid on this host, or lease expired: `lease.owner_gone`), and an unpublished dataset dir.
    Runs only while this run holds the id's lease, so no live writer can own the dataset dir."""
    for info in storage.list_dir(root):
        if not info.base_name.startswith(f"{STAGING_PREFIX}{id_}-"):
            continue
        leftover = root.child(info.base_name)
        owner = _staging_owner(leftover)
        if not lease.owner_gone(owner):
            progress(f"keeping staging directory {leftover.uri}: its owner {owner.describe()} is alive")
            continue
        progress(f"removing leftover staging directory {leftover.uri}"
                 + (f" (owner {owner.describe()} is gone)" if owner else " (no owner record)"))
        storage.delete_tree(leftover)
    if storage.exists(dataset):
        progress(f"removing incomplete dataset directory {dataset.uri} (no manifest)")
        storage.delete_tree(dataset)


def _staging_owner(staging: Location) -> Optional[lease.Owner]:
    marker = staging.child(OWNER_NAME)
    if not storage.is_file(marker):
        return None
    return lease.Owner.parse(storage.read_bytes(marker))


def _check_complete(dataset: Location, shards: list[dict]) -> None:
    """Refuse to publish a manifest listing a shard that is not there (or not at its size)."""
    present = {}
    for info in storage.list_dir(dataset):
        if info.type == storage.pafs.FileType.Directory:
            for sub in storage.list_dir(dataset.child(info.base_name)):
                present[f"{info.base_name}/{sub.base_name}"] = sub.size
    for shard in shards:
        if present.get(shard["path"]) != shard["bytes"]:
            raise DataError(f"{dataset.child(shard['path']).uri}: "
                            + ("missing" if shard["path"] not in present else f"{present[shard['path']]} bytes, expected {shard['bytes']}")
                            + " after publishing; the manifest was not written")


def _check_root(root: Location) -> None:
    """A destination that cannot hold a dataset directory fails before any work is done."""
    storage.check_endpoint(root.uri)
    info = storage.file_info(root)
    if info.type == storage.pafs.FileType.File:
        raise DataError(f"destination {root.uri} is a file, expected a directory")
    storage.make_dirs(root)


def _ensure_ray(start_ray: Optional[Callable[[], None]] = None) -> bool:
    """Use the running Ray; else `start_ray()` when given (the caller then owns the instance and
    its shutdown, e.g. `cluster.session.init_ray`, which also stops it on signals); else connect
    to RAY_ADDRESS if set, else start a private local instance (never silently join another
    process's cluster). True if this call initialised Ray and must shut it down."""
    import os

    import ray

    if ray.is_initialized():
        return False
    if start_ray is not None:
        start_ray()
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return True


def publish_dataset(
    root: Location,
    id_: str,
    staging: Location,
    write: Callable[[], dict],
    progress: Progress = print,
    start_ray: Optional[Callable[[], None]] = None,
) -> Optional[dict]:
    """Steps 3-4 of the module doc, for every kind of dataset (keypoint windows and images): under
    the id's lease, remove provably dead leftovers, mark `staging` with this run's owner record,
    run `write()` (which writes the shards into `staging`, with Ray running, and returns the
    manifest listing them under "shards"), then move `staging` to `<root>/<id>`, check every shard
    is there and write the manifest last. Returns the manifest, or None when another run published
    the id meanwhile (a cache hit). On any failure the staging directory is removed and nothing is
    published."""
    dataset = root.child(id_)
    with lease.acquire(root.child(f"{LOCK_PREFIX}{id_}"), f"raylift preprocess of dataset {id_}") as held:
        if has_manifest(dataset):  # another run published it while this one was planning
            progress(f"dataset {id_} was published at {dataset.uri} meanwhile (cache hit, nothing to do)")
            return None
        _clean_leftovers(root, dataset, id_, progress)
        # The owner record (host, pid, start, lease expiry) marks the staging directory as this
        # run's and proves the destination is writable.
        marker = staging.child(OWNER_NAME)
        storage.write_bytes(marker, held.owner.to_json())
        started_ray = _ensure_ray(start_ray)
        try:
            manifest = write()
            held.check()  # still ours: nobody took over while the shards were written
            storage.delete_tree(marker)
            storage.move_tree(staging, dataset)
            _check_complete(dataset, manifest["shards"])
            write_manifest_at(dataset, manifest)
        except BaseException:
            try:
                storage.delete_tree(staging)
            except DataError:
                pass  # the original error matters more; the next run cleans this id's staging
            raise
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    return manifest


def build_dataset(
    data: DataConfig,
    sequences: list[Sequence],
    skeleton: Skeleton,
    source_files: list[dict],
    progress: Progress = print,
    start_ray: Optional[Callable[[], None]] = None,
) -> DatasetInfo:
    """Window `sequences` into shards under `data.root` (see module doc). `source_files` are the
    records from `hash_files`; their hashes define the id together with the config. `start_ray`:
    how to start Ray if it is not running and shards must be written (see `_ensure_ray`)."""
    started = time.monotonic()
    root = storage.open_location(data.root)
    id_ = compute_id(data, [f["sha256"] for f in source_files])
    dataset = root.child(id_)
    _check_root(root)
    if has_manifest(dataset):
        manifest = read_manifest_at(dataset)
        progress(f"dataset {id_} already built at {dataset.uri} (cache hit, nothing to do)")
        return DatasetInfo(id_, dataset.uri, manifest, cached=True)

    w = data.windows
    if w.multiview:
        sources, camera_ids, skipped = multi_view_sources(sequences)
        if skipped:
            progress(f"multi-view: skipped {len(skipped)} group(s) without all {len(camera_ids)} cameras: "
                     + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    else:
        sources = single_view_sources(sequences)
        camera_ids = sorted({s.camera for s in sources})
    sources = [s for s in sources if s.split in SPLITS]
    staging = root.child(f"{STAGING_PREFIX}{id_}-{uuid.uuid4().hex[:8]}")
    job = WindowJob(w.mode, w.frames, w.effective_stride, w.flip, skeleton, data.rows_per_group, staging)
    layout = split_rows(sources, job, w.row_order)
    # One entry per split: a planned piece is a range of the split's stored rows (`SplitRows`).
    plans = plan_shards([(split, rows.total) for split, rows in layout.items()], data.rows_per_shard,
                        data.rows_per_group)
    if not plans:
        raise DataError(
            f"no windows to write for {data.source.kind} source (selection is empty: "
            f"{len(sequences)} sequences{', none with every camera' if w.multiview else ''}); nothing published"
        )
    counts = _counts(sources, job)
    progress(
        f"dataset {id_}: {len(sources)} {'camera groups' if w.multiview else 'sequences'}, "
        + ", ".join(f"{k} {v['windows']} windows" for k, v in counts.items())
        + f" -> {len(plans)} shards ({w.mode}, T={w.frames}, stride {w.effective_stride})"
    )

    def write() -> dict:
        records = _run_shard_tasks(plans, sources, job, layout, progress)
        shards = sorted(records, key=lambda r: (SPLITS.index(r["split"]), r["path"]))
        return _manifest(data, id_, skeleton, source_files, sources, job, camera_ids, counts, shards, started)

    manifest = publish_dataset(root, id_, staging, write, progress, start_ray)
    if manifest is None:
        return DatasetInfo(id_, dataset.uri, read_manifest_at(dataset), cached=True)
    shards = manifest["shards"]
    total = manifest["total_bytes"]
    progress(
        f"published {dataset.uri}: " + ", ".join(f"{k} {v['windows']}" for k, v in counts.items())
        + f" windows, {len(shards)} shards, {total / 1e6:.1f} MB in {manifest['build_seconds']:.1f} s"
    )
    return DatasetInfo(id_, dataset.uri, manifest)


def _run_shard_tasks(plans: list[ShardPlan], sources: list[WindowSource], job: WindowJob,
                     layout: dict[str, SplitRows], progress: Progress) -> list[dict]:
    """The parallel part: a Ray Data dataset of shard plans mapped through `write_shard`."""
    import ray

    from tqdm import tqdm

    refs = [ray.put(s) for s in sources]
    items = [{"plan": json.dumps({"split": p.split, "index": p.index, "groups": p.groups})} for p in plans]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_write_shard_row, fn_kwargs={"sources": refs, "job": job, "layout": layout}, num_cpus=1)
    records = []
    # A progress bar on a terminal; one line per shard where output is a log (no terminal).
    bar = tqdm(total=len(plans), unit="shard", desc="writing shards", disable=not sys.stderr.isatty())
    try:
        for record in ds.iter_rows():
            if record["error"]:
                raise DataError(record["error"])
            records.append({k: v for k, v in record.items() if k != "error"})
            bar.update(1)
            if bar.disable:
                progress(f"  wrote {record['path']} ({record['rows']} windows, {record['bytes'] / 1e6:.1f} MB) "
                         f"[{len(records)}/{len(plans)}]")
    finally:
        bar.close()
        del refs
    return records


def _manifest(data, id_, skeleton, source_files, sources, job, camera_ids, counts, shards, started) -> dict:
    from datetime import datetime, timezone

    from preprocessing.version import __version__
    from preprocessing.schema import to_dict

    for split, c in counts.items():
        split_shards = [s for s in shards if s["split"] == split]
        c["shards"] = len(split_shards)
        c["bytes"] = sum(s["bytes"] for s in split_shards)
    return {
        "id": id_,
        "format_version": FORMAT_VERSION,
        "raylift_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_seconds": round(time.monotonic() - started, 3),
        "config": to_dict(data),
        "source": {
            "kind": data.source.kind,
            "layout": skeleton.name,
            "joints": skeleton.num_joints,
            "files": source_files,
        },
        "windows": {
            "mode": job.mode,
            "frames": job.frames,
            "stride": job.stride,
            "flip": job.flip,
            "multiview": data.windows.multiview,
            "row_order": data.windows.row_order,
            "cameras": camera_ids,
        },
        "columns": _shapes(sources, job),
        "splits": counts,
        "shards": shards,
        "total_bytes": sum(s["bytes"] for s in shards),
        "rows_per_shard": data.rows_per_shard,
        "rows_per_group": data.rows_per_group,
    }


def prepare_dataset(data: DataConfig, progress: Progress = print,
                    start_ray: Optional[Callable[[], None]] = None) -> DatasetInfo:
    """Build (or find) the dataset `data` describes; returns its id, URI and manifest."""
    from preprocessing.sources import load_sequences

    t0 = time.monotonic()
    progress(f"loading {data.source.kind} source ...")
    source = load_sequences(data.source)
    files = hash_files(source.files)
    progress(f"loaded {len(source.sequences)} sequences ({source.skeleton.name}, "
             f"{sum(s.num_frames for s in source.sequences)} camera-frames) and hashed "
             f"{len(files)} files in {time.monotonic() - t0:.1f} s")
    return build_dataset(data, source.sequences, source.skeleton, files, progress, start_ray)
