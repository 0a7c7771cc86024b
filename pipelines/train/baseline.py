"""The mean-pose baseline of a training run's own validation number.

`val_mpjpe`, what every epoch, trial and search reports, is the keypoint task's `validation_sums`
on the split `train.select` picks. The trivial model beside it is the mean real training pose
predicted for every frame (`scoring.MeanPose`), scored by that same code on the same windows, so
the two numbers differ only in the model. `raylift tune`'s tables and `raylift bench search` print
it beside their trials; `pipelines.evaluate` has its own, under each paper's protocol.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipelines.config import ExperimentConfig
from preprocessing.store.dataset import Dataset


def mean_pose_validation(cfg: ExperimentConfig, dataset: Optional[Dataset] = None) -> Optional[tuple[float, str]]:
    """(val MPJPE in mm, split) of the mean real training pose for every frame, through the
    keypoint task's own `validation_sums` over `dataset`'s windows (prepared from `cfg.data` when
    not given). The mean is streamed a row group at a time, in float64. None for image models,
    whose runs report pixels (`val_px`), and for a dataset with no real training frame."""
    import torch

    from pipelines.evaluate.scoring import MeanPose
    from pipelines.train.driver import is_image_config, validation_split
    from pipelines.train.tasks import task_for
    from preprocessing.keypoints.dataset import prepare_dataset
    from preprocessing.store.parquet import column_numpy, iter_row_group_share

    if is_image_config(cfg):
        return None
    dataset = dataset or prepare_dataset(cfg.data, progress=lambda _: None)
    split = validation_split(cfg, dataset)
    total, count = 0.0, 0.0
    for _, _, table in iter_row_group_share(dataset, "train", ["positions_3d", "mask"]):  # a row group at a time
        real = column_numpy(table.column("positions_3d").combine_chunks())[
            column_numpy(table.column("mask").combine_chunks()) > 0.5]  # (frames, J, 3)
        total, count = total + real.astype(np.float64).sum(axis=0), count + len(real)
    if not count:
        return None
    mean = total / count  # (J, 3), as evaluation's baseline_mean_pose: every real training frame
    frames_out = None if cfg.data.windows.mode == "seq2seq" else 1
    task = task_for(cfg, dataset, split, progress=lambda _: None)
    total, count = task.validation_sums(MeanPose(mean, frames_out), 0, 1, torch.device("cpu"))
    return total / count, split
