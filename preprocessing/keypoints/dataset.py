"""Keypoint-window datasets: sequences -> windows -> zstd Parquet shards, built by Ray Data.

One row = one window (`SCHEMA_COLUMNS`, described in docs/data_format.md). Tensor columns are
Arrow's canonical fixed-shape tensor extension type (`arrow.fixed_shape_tensor`), which plain
pyarrow reads back with its shape and Ray Data turns into (batch, *shape) numpy arrays.

How a dataset is built (`prepare_dataset`), on the writer shared by every dataset kind
(preprocessing/store/writer.py: id, planning, shard tasks, lease, publishing):
1. load the source (`preprocessing.sources.load_sequences`), hash its files, compute the id
   (`dataset_id`). A manifest already at `<root>/<id>` is a cache hit: nothing else is done.
2. the window sources (one per sequence, or per synchronised camera group in multi-view mode) in
   a fixed order (split, subject, action, camera), each contributing its windows then (training,
   `flip`) their mirrored copies. A split's rows are stored in that sequence order, or, for the
   training split with `windows.row_order: shuffled` (the default), in a seeded uniform
   permutation of it (`SplitRows`).
3. each shard task cuts its row groups' windows from the sources (`WindowRows`), and the writer
   streams them into the staging directory and publishes it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from preprocessing.config import DataConfig
from preprocessing.errors import DataError
from preprocessing.keypoints.windows import (
    flip_intrinsics,
    flip_keypoints_2d,
    flip_positions_3d,
    flip_trajectory,
    make_windows,
    window_mask,
    window_starts,
)
from preprocessing.sequences import Sequence
from preprocessing.skeleton import Skeleton
from preprocessing.store import storage
from preprocessing.store.dataset import Dataset
from preprocessing.store.manifest import FORMAT_VERSION, has_manifest, read_manifest_at
from preprocessing.store.writer import (
    SPLITS,
    Progress,
    ShardPlan,
    check_root,
    content_config,
    content_id,
    hash_files,
    plan_shards,
    publish_dataset,
    run_shard_tasks,
    staging_location,
)

TENSOR_COLUMNS = ("keypoints_2d", "positions_3d", "mask", "trajectory", "intrinsics", "image_size")
STRING_COLUMNS = ("subject", "action", "activity", "camera")
SCHEMA_COLUMNS = TENSOR_COLUMNS + STRING_COLUMNS + ("start", "flipped", "sequence_length")


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
    a CRC-32 with every page, which the streaming readers check (preprocessing/keypoints/readers.py)."""
    return {
        "compression": "zstd",
        "use_dictionary": list(STRING_COLUMNS),
        "use_byte_stream_split": [f"{c}.list.element" for c in TENSOR_COLUMNS],
        "write_statistics": list(STRING_COLUMNS) + ["start", "flipped", "sequence_length"],
        "write_page_checksum": True,
    }


def locate_groups(plan: ShardPlan, rows: SplitRows) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per row group of `plan` (a range of the split's stored rows), `rows.locate` of its rows."""
    order = rows.order()
    return [rows.locate(group[0][1], group[-1][2], order) for group in plan.groups]


@dataclass(frozen=True)
class WindowRows:
    """The keypoint windows' row layout for the shared writer (`store.writer.ShardRows`)."""

    job: WindowJob
    layout: dict[str, SplitRows]

    def locate(self, plan: ShardPlan) -> tuple[Any, list[int]]:
        located = locate_groups(plan, self.layout[plan.split])
        return located, sorted({int(i) for group in located for i, _, _ in group})

    def tables(self, plan: ShardPlan, located: Any, inputs: dict[int, Any]) -> Iterator[Any]:
        for group in located:
            yield windows_table(gather_rows(inputs, group, self.job))

    def parquet_options(self) -> dict:
        return parquet_options()

    def tally(self, table: Any) -> dict[str, int]:
        return {}


# --------------------------------------------------------------------------------------------
# Dataset id, manifest contents, publishing
# --------------------------------------------------------------------------------------------


def config_for_id(data: DataConfig) -> dict:
    """The part of the data config that defines a keypoint dataset's content."""
    cfg = content_config(data)
    cfg.pop("images", None)  # image datasets have their own id (preprocessing/images/dataset.py)
    cfg["windows"]["stride"] = data.windows.effective_stride
    return cfg


def compute_id(data: DataConfig, file_hashes: list[str]) -> str:
    return content_id(config_for_id(data), file_hashes)


def dataset_id(data: DataConfig, source_files: Optional[list[str]] = None) -> str:
    """The id of the dataset `data` describes. Reads the source (to learn its files, e.g. the
    generated synthetic files) unless `source_files` is given."""
    if source_files is None:
        from preprocessing.sources import load_sequences

        source_files = load_sequences(data.source).files
    return compute_id(data, [f["sha256"] for f in hash_files(source_files)])


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


def build_dataset(
    data: DataConfig,
    sequences: list[Sequence],
    skeleton: Skeleton,
    source_files: list[dict],
    progress: Progress = print,
    start_ray: Optional[Callable[[], None]] = None,
) -> Dataset:
    """Window `sequences` into shards under `data.root` (see module doc). `source_files` are the
    records from `hash_files`; their hashes define the id together with the config. `start_ray`:
    how to start Ray if it is not running and shards must be written (`store.writer.publish_dataset`)."""
    started = time.monotonic()
    root = storage.open_location(data.root)
    id_ = compute_id(data, [f["sha256"] for f in source_files])
    dataset = root.child(id_)
    check_root(root)
    if has_manifest(dataset):
        manifest = read_manifest_at(dataset)
        progress(f"dataset {id_} already built at {dataset.uri} (cache hit, nothing to do)")
        return Dataset(dataset, manifest, cached=True)

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
    staging = staging_location(root, id_)
    job = WindowJob(w.mode, w.frames, w.effective_stride, w.flip, skeleton)
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
        shards = run_shard_tasks(plans, sources, staging, WindowRows(job, layout), progress)
        return _manifest(data, id_, skeleton, source_files, sources, job, camera_ids, counts, shards, started)

    manifest = publish_dataset(root, id_, staging, write, progress, start_ray, wait_s=data.lease_wait_s)
    if manifest is None:
        return Dataset(dataset, read_manifest_at(dataset), cached=True)
    shards = manifest["shards"]
    total = manifest["total_bytes"]
    progress(
        f"published {dataset.uri}: " + ", ".join(f"{k} {v['windows']}" for k, v in counts.items())
        + f" windows, {len(shards)} shards, {total / 1e6:.1f} MB in {manifest['build_seconds']:.1f} s"
    )
    return Dataset(dataset, manifest)


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
                    start_ray: Optional[Callable[[], None]] = None) -> Dataset:
    """Build (or find) the dataset `data` describes; returns its id, URI and manifest. Without the
    source files here, the one dataset under `data.root` built from this data config (staged)."""
    from preprocessing.sources import load_sequences
    from preprocessing.store.staged import find_staged, missing_sources

    missing = missing_sources(data)
    if missing:
        return find_staged(data, config_for_id, missing, progress)
    t0 = time.monotonic()
    progress(f"loading {data.source.kind} source ...")
    source = load_sequences(data.source)
    files = hash_files(source.files)
    progress(f"loaded {len(source.sequences)} sequences ({source.skeleton.name}, "
             f"{sum(s.num_frames for s in source.sequences)} camera-frames) and hashed "
             f"{len(files)} files in {time.monotonic() - t0:.1f} s")
    return build_dataset(data, source.sequences, source.skeleton, files, progress, start_ray)
