"""The one shard writer and publisher, for every kind of dataset (keypoint windows, person crops).

A dataset is `<root>/<id>/<split>/part-NNNNN.parquet` + `<root>/<id>/manifest.json` (written
last). What differs between the kinds is only the row layout (`ShardRows`: which shared inputs a
shard reads, how a planned row group becomes an Arrow table, the Parquet options, per-shard
counts); everything else is here:

1. the id: sha256 of the content config (`content_config`: the data config without where things
   are), the source files' content hashes in load order and FORMAT_VERSION, 16 hex digits; the
   same files elsewhere give the same dataset;
2. planning (`plan_shards`): each split's rows cut into shards of `rows_per_shard` rows and row
   groups of `rows_per_group` rows;
3. writing (`run_shard_tasks`): Ray Data runs one task per shard (`ray.data.from_items(plans)
   .map(...)`), which streams its row groups into `<staging>/<split>/part-NNNNN.parquet`, hashing
   the bytes as they are written (and the writer stores a CRC-32 with every page, which streaming
   readers check: `preprocessing.store.parquet`);
4. publishing (`publish_dataset`): under the id's lease `<root>/.lock-<id>` (preprocessing/store/
   lease.py) the staging directory, marked with its run's owner record (`_OWNER.json`: host, pid,
   start time, lease expiry), moves to `<root>/<id>`, every shard is checked to be there, and the
   manifest is written last. A run that dies leaves only a `.staging-<id>-*` directory (no
   manifest, so no dataset) and a stale lease; the next run for that id takes the lease over and
   removes leftovers whose owner is provably gone.
The file names, row order and row groups depend only on the data and the config, and the Parquet
writer adds no timestamps, so the same inputs give byte-identical shards.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

from preprocessing.config import DataConfig
from preprocessing.errors import DataError
from preprocessing.store import lease, storage
from preprocessing.store.manifest import FORMAT_VERSION, STAGING_PREFIX, has_manifest, write_manifest_at
from preprocessing.store.storage import Location

SPLITS = ("train", "val", "test")  # "val": source.val_subjects, windowed like "test"
OWNER_NAME = "_OWNER.json"  # a staging directory's owner record (preprocessing.store.lease.Owner)
LOCK_PREFIX = ".lock-"  # <root>/.lock-<id>: the lease of the one run that may build dataset <id>
# Config fields that only say where source files are (their content is hashed instead).
LOCATION_FIELDS = ("data_3d", "data_2d", "cameras", "mpi_train", "mpi_test", "videos", "frames_dir")

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# The id
# --------------------------------------------------------------------------------------------


def content_config(data: DataConfig) -> dict:
    """The data config without where things are (`root`, a named prepared `dataset`, source file
    locations, the synthetic files' folder); the kind-specific sections are left to the caller."""
    from preprocessing.schema import to_dict

    cfg = to_dict(data)
    cfg.pop("root", None)
    cfg.pop("dataset", None)  # names a prepared dataset, never part of one's content
    cfg.pop("lease_wait_s", None)  # how a build waits, not what it builds
    for key in LOCATION_FIELDS:
        cfg["source"].pop(key, None)
    cfg["source"].get("synthetic", {}).pop("out_dir", None)
    if not cfg["source"].get("val_subjects"):
        cfg["source"].pop("val_subjects", None)  # ids of datasets without a validation split unchanged
    return cfg


def content_id(config: dict, file_hashes: list[str]) -> str:
    """16 hex digits of sha256 over (format version, content config, source file hashes)."""
    payload = json.dumps({"format_version": FORMAT_VERSION, "config": config, "sources": file_hashes},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


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


# --------------------------------------------------------------------------------------------
# Planning: rows -> shards -> row groups (pure, deterministic)
# --------------------------------------------------------------------------------------------


Piece = tuple[int, int, int]  # (input index, first row, end row) in that input's own row order


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
    """Cut each split's rows (inputs in order, `row_counts[i] = (split, rows of input i)`) into
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
# Writing (runs inside Ray tasks)
# --------------------------------------------------------------------------------------------


class ShardRows(Protocol):
    """A dataset kind's row layout, as the writer uses it (picklable: it travels to the tasks)."""

    def locate(self, plan: ShardPlan) -> tuple[Any, list[int]]:
        """What the shard's row groups hold (passed back to `tables`) and the indices of the
        shared inputs (sequences) they read."""

    def tables(self, plan: ShardPlan, located: Any, inputs: dict[int, Any]) -> Iterator[Any]:
        """One Arrow table per planned row group, in order."""

    def parquet_options(self) -> dict:
        """`pq.ParquetWriter` keyword arguments (with `write_page_checksum=True`)."""

    def tally(self, table: Any) -> dict[str, int]:
        """Counts of one row group for the shard's record besides its rows (e.g. images)."""


class HashingSink:
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


def write_shard(plan: ShardPlan, staging: Location, rows: ShardRows, located: Any, inputs: dict[int, Any]) -> dict:
    """Write one shard into `staging`, one row group per planned group; returns its record
    (split, path, rows, bytes, sha256 and the layout's tallies)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = staging.child(plan.path)
    tallies: dict[str, int] = {}
    try:
        staging.fs.create_dir(staging.child(plan.split).path, recursive=True)
        with target.fs.open_output_stream(target.path) as stream:
            sink = HashingSink(stream)
            writer = None
            for table in rows.tables(plan, located, inputs):
                if writer is None:
                    writer = pq.ParquetWriter(sink, table.schema, **rows.parquet_options())
                writer.write_table(table, row_group_size=len(table))
                for key, value in rows.tally(table).items():
                    tallies[key] = tallies.get(key, 0) + int(value)
            writer.close()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot write {target.uri}: {e}") from None
    return {"split": plan.split, "path": plan.path, "rows": plan.rows, **tallies, "bytes": sink.size,
            "sha256": sink.sha256}


def _shard_task(row: dict, inputs: list, staging: Location, rows: ShardRows) -> dict:
    """Ray Data map function: one row = one planned shard (as JSON); returns its file record, or
    its DataError's text (returned, not raised: Ray's task-error wrapping would lose the type)."""
    import ray

    spec = json.loads(row["plan"])
    plan = ShardPlan(spec["split"], spec["index"], [[tuple(p) for p in g] for g in spec["groups"]])
    try:
        located, needed = rows.locate(plan)
        fetched = dict(zip(needed, ray.get([inputs[i] for i in needed])))
        return {"record": json.dumps(write_shard(plan, staging, rows, located, fetched)), "error": ""}
    except DataError as e:
        return {"record": "", "error": str(e)}


def run_shard_tasks(plans: list[ShardPlan], inputs: list, staging: Location, rows: ShardRows,
                    progress: Progress) -> list[dict]:
    """The parallel part: `inputs` (sequences) shared through the object store, one Ray Data task
    per planned shard. Returns the shards' records in manifest order; a progress bar on a
    terminal, one line per shard where output is a log."""
    import ray
    from tqdm import tqdm

    refs = [ray.put(x) for x in inputs]
    items = [{"plan": json.dumps({"split": p.split, "index": p.index, "groups": p.groups})} for p in plans]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_shard_task, fn_kwargs={"inputs": refs, "staging": staging, "rows": rows}, num_cpus=1)
    records = []
    bar = tqdm(total=len(plans), unit="shard", desc="writing shards", disable=not sys.stderr.isatty())
    try:
        for result in ds.iter_rows():
            if result["error"]:
                raise DataError(result["error"])
            record = json.loads(result["record"])
            records.append(record)
            bar.update(1)
            if bar.disable:
                extra = "".join(f", {v} {k}" for k, v in record.items()
                                if k not in ("split", "path", "rows", "bytes", "sha256"))
                progress(f"  wrote {record['path']} ({record['rows']} windows{extra}, {record['bytes'] / 1e6:.1f} MB) "
                         f"[{len(records)}/{len(plans)}]")
    finally:
        bar.close()
        del refs
    return sorted(records, key=lambda r: (SPLITS.index(r["split"]), r["path"]))


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------


def staging_location(root: Location, id_: str) -> Location:
    """A fresh staging directory for one build of dataset `id_` under `root`."""
    return root.child(f"{STAGING_PREFIX}{id_}-{uuid.uuid4().hex[:8]}")


def check_root(root: Location) -> None:
    """A destination that cannot hold a dataset directory fails before any work is done."""
    storage.check_endpoint(root.uri)
    info = storage.file_info(root)
    if info.type == storage.pafs.FileType.File:
        raise DataError(f"destination {root.uri} is a file, expected a directory")
    storage.make_dirs(root)


def staging_owner(staging: Location) -> Optional[lease.Owner]:
    marker = staging.child(OWNER_NAME)
    if not storage.is_file(marker):
        return None
    return lease.Owner.parse(storage.read_bytes(marker))


def clean_leftovers(root: Location, dataset: Location, id_: str, progress: Progress) -> None:
    """Remove staging directories of earlier runs for this id, and an unpublished dataset dir.
    Runs only while this run holds the id's lease, so every other staging directory belongs to a
    run that released or lost it (a lease is taken over only once provably abandoned, see
    `lease.acquire`): that run can no longer publish. Only a staging directory whose owner is
    still running on this host is kept, out of caution (it may still be writing)."""
    for info in storage.list_dir(root):
        if not info.base_name.startswith(f"{STAGING_PREFIX}{id_}-"):
            continue
        leftover = root.child(info.base_name)
        owner = staging_owner(leftover)
        if lease.alive_here(owner):
            progress(f"keeping staging directory {leftover.uri}: its owner {owner.describe()} is alive")
            continue
        progress(f"removing leftover staging directory {leftover.uri}"
                 + (f" (owner {owner.describe()} no longer holds the lease)" if owner else " (no owner record)"))
        storage.delete_tree(leftover)
    if storage.exists(dataset):
        progress(f"removing incomplete dataset directory {dataset.uri} (no manifest)")
        storage.delete_tree(dataset)


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


def _ensure_ray(start_ray: Optional[Callable[[], None]] = None) -> bool:
    """Use the running Ray; else `start_ray()` when given (the caller then owns the instance and
    its shutdown, e.g. `cluster.session.init_ray`, which also stops it on signals); else connect
    to RAY_ADDRESS if set, else start a private local instance (never silently join another
    process's cluster). True if this call initialised Ray and must shut it down."""
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
    wait_s: float = 0.0,
) -> Optional[dict]:
    """Step 4 of the module doc: under the id's lease, remove provably dead leftovers, mark
    `staging` with this run's owner record, run `write()` (which writes the shards into `staging`,
    with Ray running, and returns the manifest listing them under "shards"), then move `staging` to
    `<root>/<id>`, check every shard is there and write the manifest last. Returns the manifest, or
    None when another run published the id meanwhile (a cache hit). While another run holds the
    lease, waits up to `wait_s` seconds (`data.lease_wait_s`) for it, saying so through `progress`.
    On any failure the staging directory is removed and nothing is published."""
    dataset = root.child(id_)

    def waiting(held_by: str) -> None:
        progress(f"{held_by}: waiting up to {wait_s:g} s (data.lease_wait_s) for it to finish")

    try:
        taken = lease.acquire(root.child(f"{LOCK_PREFIX}{id_}"), f"raylift preprocess of dataset {id_}",
                              wait_s=wait_s, on_wait=waiting)
    except lease.LeaseHeld as e:
        raise lease.LeaseHeld(f"{e}: still held after waiting {wait_s:g} s (data.lease_wait_s); "
                              "raise data.lease_wait_s or stop that run" if wait_s else
                              f"{e} (data.lease_wait_s=0: not waiting)") from None
    with taken as held:
        if has_manifest(dataset):  # another run published it while this one was planning
            progress(f"dataset {id_} was published at {dataset.uri} meanwhile (cache hit, nothing to do)")
            return None
        clean_leftovers(root, dataset, id_, progress)
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
