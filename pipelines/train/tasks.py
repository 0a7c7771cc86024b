"""What a training run trains on: one task object per kind of model, with the same few methods.

The per-worker loop (`pipelines/train/worker.py`) is generic: each epoch it asks the task for its
batches (`steps_per_epoch` bounds their number), trains on `batch[task.input_key]`, asks for the
validation sums and reports `task.metric` (lower is better; also the checkpoint score):

- `KeypointTask` (the lifters: 2D keypoint windows -> 3D): batches of the training split in the
  order `train.shuffle` draws (`pipelines/train/data.py`); validation MPJPE in mm (`val_mpjpe`,
  no flip) on a share of the validation (or test) split's row groups per worker.
- `ImageTask` (image -> 2D models, `input_kind = "images"`, e.g. mpstr): decoded crop windows
  from Ray Train's split of the image training split, with `data.images.flip` each mirrored with probability 1/2 from a
  generator seeded by (seed, epoch, rank); validation: the mean 2D error in full-image pixels
  (`val_px`) over a share of the validation (or test) split's row groups.
Tasks are built in the driver (`task_for`) and shipped to the workers with the loop config; they
hold the dataset handle, so no worker re-reads the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Optional

import numpy as np
import torch
from torch import nn

from pipelines.config import ExperimentConfig, TrainConfig
from preprocessing.store.dataset import Dataset

TRAIN = "train"  # the Ray Train dataset name of the training split


@dataclass
class KeypointTask:
    """2D keypoint windows -> 3D; `val_split`: where per-epoch validation MPJPE is measured."""

    dataset: Dataset
    train: TrainConfig
    frames: int
    val_split: str
    eval_bf16: bool = False
    metric: ClassVar[str] = "val_mpjpe"
    unit: ClassVar[str] = "mm"
    input_key: ClassVar[str] = "keypoints_2d"
    _group_rows: Optional[list[int]] = field(default=None, repr=False)

    @property
    def uses_ray_split(self) -> bool:
        """Whether the workers read Ray Train's split of `ray_datasets()` (else their own shares)."""
        return self.train.shuffle == "local"

    def ray_datasets(self) -> Optional[dict[str, Any]]:
        """What Ray Train splits across the workers: the training split in manifest order for
        `train.shuffle: local`; nothing under `global`, where each worker opens its own
        per-epoch share (its footers are checked here, so a missing shard fails in the driver)."""
        from preprocessing.keypoints.readers import open_split, split_row_groups

        if self.train.shuffle == "local":
            return {TRAIN: open_split(self.dataset, TRAIN)}
        self._group_rows = split_row_groups(self.dataset, TRAIN)
        return None

    def epoch_batches(self, epoch: int, rank: int, world: int, device: torch.device,
                      shard: Any) -> tuple[Iterable[dict], Optional[int]]:
        """This worker's batches of `epoch` (torch tensors on `device`) and the windows it takes
        (equal on every worker, so DDP steps stay in lockstep; None: the whole stream)."""
        from pipelines.train.data import batch_seed, buffer_windows, decoded_window_bytes, global_share
        from preprocessing.keypoints.readers import iter_torch_batches, split_row_groups

        tc = self.train
        cap = None if tc.max_windows_per_epoch is None else -(-tc.max_windows_per_epoch // world)
        if tc.shuffle == "local":
            source, share = shard, -(-self.dataset.windows_in(TRAIN) // world)
        else:
            if self._group_rows is None:
                self._group_rows = split_row_groups(self.dataset, TRAIN)
            source, share, per_worker = global_share(self.dataset, self._group_rows, tc.seed, epoch, rank, world)
            cap = per_worker if cap is None else min(cap, per_worker)
        buffer = buffer_windows(tc.shuffle_buffer, tc.shuffle_buffer_mb, decoded_window_bytes(self.dataset.manifest),
                                share)
        batches = iter_torch_batches(source, tc.windows_per_batch(self.frames), shuffle_buffer=buffer,
                                     prefetch_batches=tc.prefetch_batches, seed=batch_seed(tc.seed, epoch, rank),
                                     device=str(device))
        return batches, cap

    def validation_sums(self, model: nn.Module, rank: int, world: int, device: torch.device) -> tuple[float, float]:
        """(sum of per-frame MPJPE in mm, frames) over this worker's share of the validation split."""
        from pipelines.train.data import iter_val_batches
        from pipelines.train.loop import validation_sums

        cap = None if self.train.max_val_windows is None else -(-self.train.max_val_windows // world)
        batches = iter_val_batches(self.dataset, self.val_split, self.train.val_batch_size, rank, world, cap)
        err, count = validation_sums(model, batches, device, self.eval_bf16)
        return 1000.0 * err, count


@dataclass
class ImageTask:
    """Image crops -> 2D keypoints (`input_kind = "images"`)."""

    dataset: Dataset
    train: TrainConfig
    frames: int
    layout: str
    val_split: str  # where per-epoch validation `val_px` is measured (train.select)
    eval_bf16: bool = False
    metric: ClassVar[str] = "val_px"
    unit: ClassVar[str] = "px"
    input_key: ClassVar[str] = "images"

    uses_ray_split: ClassVar[bool] = True

    def ray_datasets(self) -> Optional[dict[str, Any]]:
        """The decoded training split, which Ray Train splits across the workers (flips are drawn
        per epoch by the workers)."""
        from preprocessing.images.readers import open_image_split

        return {TRAIN: open_image_split(self.dataset, TRAIN, flip=False)}

    def epoch_batches(self, epoch: int, rank: int, world: int, device: torch.device,
                      shard: Any) -> tuple[Iterable[dict], Optional[int]]:
        from pipelines.train import images as img
        from pipelines.train.data import batch_seed, buffer_windows, decoded_window_bytes
        from preprocessing.skeleton import get_skeleton

        tc = self.train
        size, flip = int(self.dataset.windows["size"]), bool(self.dataset.windows["flip"])
        seed = batch_seed(tc.seed, epoch, rank)
        buffer = buffer_windows(tc.shuffle_buffer, tc.shuffle_buffer_mb, decoded_window_bytes(self.dataset.manifest),
                                -(-self.dataset.windows_in(TRAIN) // world))
        rng = np.random.default_rng(seed) if flip else None
        perm = get_skeleton(self.layout).flip_permutation()
        batches = (img.training_batch(b, flip, rng, size, perm, device)
                   for b in img.iter_numpy_batches(shard, tc.windows_per_batch(self.frames), tc.prefetch_batches,
                                                   buffer, seed))
        return batches, None if tc.max_windows_per_epoch is None else -(-tc.max_windows_per_epoch // world)

    def validation_sums(self, model: nn.Module, rank: int, world: int, device: torch.device) -> tuple[float, float]:
        """(sum over the real images of `val_split` of the mean joint error in full-image pixels,
        images)."""
        from pipelines.train import images as img
        from preprocessing.images.readers import iter_image_groups

        cap = None if self.train.max_val_windows is None else -(-self.train.max_val_windows // world)
        groups = iter_image_groups(self.dataset, self.val_split, rank, world, cap)
        return img.validation_sums_2d(model, groups, int(self.dataset.windows["size"]), self.train.val_batch_size,
                                      device, self.eval_bf16)


Task = Any  # KeypointTask | ImageTask


def steps_per_epoch(dataset: Dataset, train: TrainConfig, frames: int, world: int) -> int:
    """Optimiser steps of a full epoch on each of `world` workers: its share of the training
    windows (ceil(windows / world), capped by train.max_windows_per_epoch as `epoch_batches` caps
    it) in batches of `train.windows_per_batch(frames)`. No epoch takes more (a global shuffle's
    smallest share and Ray's equal split are at most this share); per-step lr schedules count
    steps with it (pipelines/train/schedules.py)."""
    share = -(-dataset.windows_in(TRAIN) // world)
    if train.max_windows_per_epoch is not None:
        share = min(share, -(-train.max_windows_per_epoch // world))
    return max(1, -(-share // train.windows_per_batch(frames)))


def task_for(cfg: ExperimentConfig, dataset: Dataset, val_split: str,
             progress: Callable[[str], None] = print) -> Task:
    """The task `cfg`'s model trains on `dataset` (image models: `ImageTask`). Under `train.shuffle:
    global` a train split with fewer row groups than workers is read in manifest order instead
    (one row group per worker is the least a global share needs), which `progress` says."""
    from models.registry import is_image_model, model_class
    from preprocessing.keypoints.readers import split_row_groups

    tc, frames = cfg.train, cfg.data.windows.frames
    if is_image_model(model_class(cfg.model.name)):
        return ImageTask(dataset, tc, frames, dataset.layout, val_split, cfg.eval.bf16)
    if tc.shuffle == "global" and tc.num_workers > 1:
        groups = len(split_row_groups(dataset, TRAIN))
        if groups < tc.num_workers:
            progress(f"train.shuffle global: the train split has {groups} row group(s) for {tc.num_workers} "
                     "workers; reading it in manifest order with a local shuffle (train.shuffle local)")
            tc.shuffle = "local"
    return KeypointTask(dataset, tc, frames, val_split, cfg.eval.bf16)
