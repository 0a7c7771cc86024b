"""Per-epoch learning-rate schedules, as pure functions of the epoch plus thin torch wrappers.

`train.lr_schedule` picks one; the learning rate of (1-based) epoch e is `train.lr * lr_factor(e - 1)`
and the scheduler is stepped once after every epoch:

- `exponential` (default, MixSTE/PoseFormer): `lr_decay ** k`.
- `step`: `lr_step_factor ** (k // lr_step_every)` (×factor after every `lr_step_every` epochs).
- `exponential_step` (Fusionformer's run.py): after every `lr_step_every`-th epoch ×lr_step_factor,
  after every other epoch ×lr_decay (the code's `if epoch % large_decay_epoch == 0: lr *= 0.5
  else: lr *= 0.95`: the two never apply together), so with s = k // lr_step_every the factor is
  `lr_decay ** (k - s) * lr_step_factor ** s`.
- `cosine_warmup` (the multi-view image paper: 20-epoch linear warm-up, cosine over the rest):
  `(k + 1) / warmup_epochs` for k < warmup_epochs, then `0.5 * (1 + cos(pi * (k - W) / (epochs - W)))`.
  Stepped per epoch (the paper does not say per iteration), so the first epoch trains at lr / W.

`exponential` stays torch's `ExponentialLR` (so checkpoints written before these schedules
existed still resume); the others are a `LambdaLR` over `lr_factor`. Both keep only `last_epoch`
as state: a resumed run recomputes the same factor for the next epoch, so it continues exactly.
"""
from __future__ import annotations

import functools
import math

import torch

from pipelines.config import TrainConfig

SCHEDULES = ("exponential", "step", "exponential_step", "cosine_warmup")


def lr_factor(k: int, train: TrainConfig) -> float:
    """Multiplier of `train.lr` for the epoch with 0-based index `k`."""
    if k < 0:
        raise ValueError(f"epoch index must be >= 0, got {k}")
    kind = train.lr_schedule
    if kind == "exponential":
        return train.lr_decay**k
    if kind == "step":
        return train.lr_step_factor ** (k // train.lr_step_every)
    if kind == "exponential_step":
        steps = k // train.lr_step_every
        return train.lr_decay ** (k - steps) * train.lr_step_factor**steps
    if kind == "cosine_warmup":
        warm = train.warmup_epochs
        if k < warm:
            return (k + 1) / warm
        span = max(train.epochs - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(k - warm, span) / span))
    raise ValueError(f"unknown train.lr_schedule {kind!r} (expected one of {', '.join(SCHEDULES)})")


def lr_sequence(train: TrainConfig) -> list[float]:
    """The learning rate of every epoch 1..train.epochs (what `raylift train` will use)."""
    return [train.lr * lr_factor(k, train) for k in range(train.epochs)]


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The torch scheduler for `train.lr_schedule`, stepped once per epoch."""
    if train.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_decay)
    lr_factor(0, train)  # refuse an unknown schedule here rather than at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, train=train))
