"""The image-model side of a training run (models whose `input_kind` is "images", e.g. mpstr).

The worker (`pipelines/train/worker.py`) trains these through the same loop as the lifters; their
task (`pipelines/train/tasks.py: ImageTask`) differs only in the batches and the validation score:
- `training_batch`: a Ray Data batch of `open_image_split` (images (B, f, V, 3, H, W) in [0, 1],
  keypoints (B, f, V, J, 2) crop pixels, boxes, mask, flipped) becomes the loop's batch dict
  (`images` = the model input, `keypoints_2d` = the loss target, `mask`), each window mirrored
  with probability 1/2 from a generator seeded by (seed, epoch, rank), so flips change with the
  epoch and a resumed run redraws the same ones.
- `validation_sums_2d`: summed per-image mean joint error in full-image pixels (crop predictions
  mapped back through the stored crop boxes) over real frames, and the image count; sums of
  several workers add up. Validation reads this worker's share of the test split's row groups
  (`preprocessing.images.readers.iter_image_groups`), as the keypoint validation does.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from pipelines.evaluate.prediction import autocast
from preprocessing.images.crops import flip_crops, to_full

IMAGE_INPUT = "images"


def training_batch(batch: dict, flip: bool, rng: Optional[np.random.Generator], size: int, perm: np.ndarray,
                   device: torch.device) -> dict:
    """Loop batch from a decoded image batch (see module doc); `rng` draws the flips when `flip`."""
    images = np.array(batch["images"], dtype=np.float32)  # (B, f, V, 3, H, W): a writable copy
    keypoints = np.array(batch["keypoints"], dtype=np.float32)  # (B, f, V, J, 2)
    flipped = np.zeros(len(images), dtype=bool)
    if flip and rng is not None:
        for i in np.flatnonzero(rng.random(len(images)) < 0.5):
            images[i], keypoints[i] = flip_crops(images[i], keypoints[i], size, perm)
            flipped[i] = True
    return {
        IMAGE_INPUT: torch.from_numpy(images).to(device),
        "keypoints_2d": torch.from_numpy(keypoints).to(device),
        "mask": torch.as_tensor(np.asarray(batch["mask"], dtype=np.float32)).to(device),  # (B, f)
        "flipped": torch.from_numpy(flipped),
    }


def iter_numpy_batches(shard, batch_size: int, prefetch_batches: int, shuffle_buffer: int, seed: int):
    """Batches of a Ray Data shard of `open_image_split` as numpy dicts (a local shuffle of
    `shuffle_buffer` windows, seeded)."""
    kwargs = {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": seed} if shuffle_buffer else {}
    return shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=prefetch_batches, **kwargs)


@torch.no_grad()
def validation_sums_2d(model: nn.Module, groups: Iterable[dict], size: int, batch_size: int, device: torch.device,
                       bf16: bool = False) -> tuple[float, float]:
    """(sum over real images of the mean joint error in full-image pixels, images counted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        for arrays in groups:
            for lo in range(0, len(arrays["mask"]), batch_size):
                sl = slice(lo, lo + batch_size)
                with autocast(device, bf16):
                    pred = model(torch.from_numpy(arrays["images"][sl]).to(device))
                pred = pred.float().cpu().numpy()  # (b, f, V, J, 2) crop pixels
                boxes = arrays["boxes"][sl]
                err = np.linalg.norm(to_full(pred, boxes, size) - to_full(arrays["keypoints"][sl], boxes, size), axis=-1)
                per_image = err.mean(axis=-1)  # (b, f, V)
                keep = arrays["mask"][sl][:, :, None] > 0
                total += float((per_image * keep).sum())
                count += float(keep.sum() * per_image.shape[2])
    finally:
        model.train(was_training)
    return total, count
