"""The checkpoints of one run directory, local or on S3: listing, choosing, retention, download.

A run directory `<storage_path>/<run name>/` holds `checkpoint_epochNNNN/` directories in
`models/checkpoint.py`'s format (written by Ray Train's `report` when training runs on Ray workers,
or by `persist_checkpoint` when it runs in the driver with `num_workers: 0`). Every one carries its
epoch and metrics in `meta.json`, so "latest" (highest epoch: what a restart resumes from) and
"best" (lowest validation score, the metric meta.json names as `score`: MPJPE in mm for the lifters,
the 2D error in pixels for image models) are read from the directory itself, whoever wrote it. A directory without a readable `meta.json`, `model.pt` and `train_state.pt` is
incomplete (an upload cut short by a dying worker) and is never chosen; when Ray Train's
checkpoint-manager snapshot is present, only the checkpoints it registered (fully uploaded ones)
count. A run continued in the driver process (`num_workers: 0`) drops that snapshot first
(`forget_ray_snapshot`), since from then on its own atomic writes are the record.

Retention (`prune`) keeps the `keep_best` lowest-score checkpoints plus the latest: the same rule
Ray Train's CheckpointConfig(num_to_keep=keep_best, checkpoint_score_attribute=<the task's metric>,
checkpoint_score_order="min") applies, which also never deletes the latest.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Union

import pyarrow.fs as pafs

from preprocessing.store import storage
from preprocessing.store.storage import Location

Where = Union[str, Location]  # a URI, or a Location whose pickled filesystem carries its S3 settings


PREFIX = "checkpoint_epoch"
REQUIRED_FILES = ("meta.json", "model.pt", "train_state.pt")
# Ray Train's record of the checkpoints it registered. Its contents are read only through the
# public `ray.train.Result.from_path`; the file name itself has no public constant, and Ray has no
# public API to reset a run's record (the request for a run-level checkpoint API, closed without
# one: https://github.com/ray-project/ray/issues/45516), hence the name here.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def checkpoint_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:04d}"


@dataclass(frozen=True)
class CheckpointInfo:
    name: str  # directory name, e.g. checkpoint_epoch0003
    uri: str  # local path or s3:// URI of the directory
    epoch: int
    score: float  # the run's validation metric (meta "score": val_mpjpe in mm, val_px); inf when missing
    meta: dict


def list_checkpoints(run_uri: Where) -> list[CheckpointInfo]:
    """Complete checkpoints of a run directory, sorted by epoch (empty when the run is new)."""
    run = storage.as_location(run_uri)
    registered = ray_registered(run)
    out = []
    for entry in storage.list_dir(run):
        if entry.type != pafs.FileType.Directory or not entry.base_name.startswith(PREFIX):
            continue
        if registered is not None and entry.base_name not in registered:
            continue
        loc = run.child(entry.base_name)
        present = {os.path.basename(p) for p in storage.list_files(loc)}
        if not all(f in present for f in REQUIRED_FILES):
            continue
        try:
            meta = json.loads(storage.read_bytes(loc.child("meta.json")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(meta, dict) or "epoch" not in meta:
            continue
        val = (meta.get("metrics") or {}).get(meta.get("score", "val_mpjpe"))
        val = float(val) if isinstance(val, (int, float)) and math.isfinite(val) else math.inf
        out.append(CheckpointInfo(entry.base_name, loc.uri, int(meta["epoch"]), val, meta))
    return sorted(out, key=lambda c: (c.epoch, c.name))


def ray_registered(run_uri: Where) -> Optional[set[str]]:
    """Checkpoint directory names Ray Train registered (fully uploaded) for this run, read through
    Ray's public `ray.train.Result.from_path(...).best_checkpoints` (with the default
    CheckpointConfig it lists every registered checkpoint); None when Ray Train never recorded one."""
    import ray.train

    run = storage.as_location(run_uri)
    if not storage.exists(run.child(RAY_SNAPSHOT)):
        return None
    try:
        result = ray.train.Result.from_path(run.path, storage_filesystem=run.fs)
    except Exception as e:  # Ray raises RuntimeError/ValueError/JSON errors for a damaged record
        from models.checkpoint import CheckpointError

        raise CheckpointError(f"{run.child(RAY_SNAPSHOT).uri}: unreadable Ray Train snapshot ({e})") from None
    checkpoints = [c for c, _ in (result.best_checkpoints or [])] + [result.checkpoint]
    return {os.path.basename(c.path.rstrip("/")) for c in checkpoints if c is not None}


def forget_ray_snapshot(run_uri: Where) -> None:
    """Delete Ray Train's snapshot (a run continuing in the driver process keeps its own record)."""
    storage.delete_tree(storage.as_location(run_uri).child(RAY_SNAPSHOT))


def latest(checkpoints: list[CheckpointInfo]) -> Optional[CheckpointInfo]:
    return checkpoints[-1] if checkpoints else None


def best(checkpoints: list[CheckpointInfo]) -> Optional[CheckpointInfo]:
    """Lowest validation MPJPE; ties go to the later epoch (as Ray orders equal scores)."""
    if not checkpoints:
        return None
    return min(checkpoints, key=lambda c: (c.score, -c.epoch))


def select_checkpoint(checkpoints: list[CheckpointInfo], select: str) -> Optional[CheckpointInfo]:
    """The checkpoint `train.select` scores: `last`, the latest; `test` and `val`, the lowest
    per-epoch validation MPJPE, which the run measured on the test or the validation split."""
    if select == "last":
        return latest(checkpoints)
    if select in ("test", "val"):
        return best(checkpoints)
    raise ValueError(f"train.select: expected test, val or last, got {select!r}")


def to_keep(checkpoints: list[CheckpointInfo], keep_best: int) -> set[str]:
    """Names kept by the retention rule: the `keep_best` best by validation MPJPE + the latest."""
    ranked = sorted(checkpoints, key=lambda c: (c.score, -c.epoch))
    keep = {c.name for c in ranked[:keep_best]}
    if checkpoints:
        keep.add(checkpoints[-1].name)
    return keep


def prune(run_uri: Where, keep_best: int) -> list[str]:
    """Delete the checkpoints outside `to_keep`; returns the deleted names."""
    run = storage.as_location(run_uri)
    checkpoints = list_checkpoints(run)
    keep = to_keep(checkpoints, keep_best)
    deleted = [c.name for c in checkpoints if c.name not in keep]
    for name in deleted:
        storage.delete_tree(run.child(name))
    return deleted


def state_bytes(obj: object) -> int:
    """Bytes of the tensors in a (nested) state: what a checkpoint of it needs on disk, about."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


SPARE_BYTES = 1_000_000  # what a checkpoint's copy into the run directory must leave free


def disk_full(target: Location, needed: int, epoch: int, free: Optional[int] = None):
    """The one-line CheckpointError for a checkpoint that does not fit: its path, what it needs,
    what is free. `free`: the bytes free that a check before the copy found short of `needed` +
    `SPARE_BYTES` (so the two numbers the line gives show why); None when the device filled up
    during the write, when the line says what is free once the partial copy is gone."""
    import shutil

    from models.checkpoint import CheckpointError

    keep = f"nothing of epoch {epoch} was kept: free space (or set train.storage_path elsewhere) and re-run to resume"
    if free is not None:
        return CheckpointError(
            f"no space left on device writing checkpoint {target.uri}: it needs {(needed + SPARE_BYTES) / 1e6:.1f} MB "
            f"({needed / 1e6:.1f} MB of files and {SPARE_BYTES / 1e6:.1f} MB to spare) and {free / 1e6:.1f} MB are "
            f"free; {keep}")
    now = ""
    if isinstance(target.fs, pafs.LocalFileSystem):
        with contextlib.suppress(OSError):
            free_now = shutil.disk_usage(os.path.dirname(target.path)).free
            now = f" ({free_now / 1e6:.1f} MB free once the partial copy was removed)"
    return CheckpointError(
        f"no space left on device writing checkpoint {target.uri}: it needs about {needed / 1e6:.1f} MB and the "
        f"device filled up during the write{now}; {keep}")


def is_disk_full(e: BaseException) -> bool:
    import errno

    return isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e))


def write_checkpoint(run_uri: Where, epoch: int, model_state: dict, meta: dict, train_state: dict) -> str:
    """Write checkpoint `epoch` straight into the run directory (for runs in the driver process).

    Local: `models.checkpoint.save_checkpoint`, which stages beside the target and renames it
    into place (atomic, replacing a directory of the same epoch). S3: staged locally, then
    uploaded with `meta.json` last, so `list_checkpoints` never counts a partial upload.
    """
    from models.checkpoint import save_checkpoint

    run = storage.as_location(run_uri)
    target = run.child(checkpoint_name(epoch))
    try:
        if isinstance(run.fs, pafs.LocalFileSystem):
            save_checkpoint(target.path, model_state, meta, train_state)
            return target.uri
        with tempfile.TemporaryDirectory(prefix="raylift-ckpt-") as tmp:
            local = save_checkpoint(os.path.join(tmp, target.name), model_state, meta, train_state)
            storage.delete_tree(target)
            for name in sorted(os.listdir(local), key=lambda n: n == "meta.json"):
                with open(os.path.join(local, name), "rb") as f:
                    storage.write_bytes(target.child(name), f.read())
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(target, state_bytes(model_state) + state_bytes(train_state), epoch) from None
        raise
    return target.uri


