"""Learning-rate schedules: per-epoch ones as pure functions of the epoch plus thin torch wrappers,
and the per-step cosine of timm.

`train.lr_schedule` picks one. The per-epoch schedules set the lr of (1-based) epoch e to
`train.lr * lr_factor(e - 1)`, and their scheduler is stepped once after every epoch (their
recipes do so):

- `exponential` (default, MixSTE/PoseFormer): `lr_decay ** k`.
- `step`: `lr_step_factor ** (k // lr_step_every)` (×factor after every `lr_step_every` epochs).
- `exponential_step` (Fusionformer's run.py): after every `lr_step_every`-th epoch ×lr_step_factor,
  after every other epoch ×lr_decay (the code's `if epoch % large_decay_epoch == 0: lr *= 0.5
  else: lr *= 0.95`: the two never apply together), so with s = k // lr_step_every the factor is
  `lr_decay ** (k - s) * lr_step_factor ** s`.

`cosine_warmup` (the image model's authors, WUJINHUAN/3D-human-pose utils/lr_scheduler.py) sets
the lr of every optimiser step: timm's `CosineLRScheduler` over steps (`t_in_epochs=False`,
`warmup_prefix=True`, `cycle_limit=1`) with S steps per epoch, W = warmup_epochs, E = epochs:
step t < W·S trains at `warmup_lr + t * (lr - warmup_lr) / (W·S)`, step t >= W·S at
`min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (t - W·S) / ((E - W)·S)))`. The worker calls
`step_update` with the authors' index `epoch * len(loader) + batch_idx` (utils/train_valid_fn.py)
AFTER each step, so their step t trains at the lr of t - 1 (step 0 at the warm-up start, which is
the lr of 0). raylift keeps that order: before step t (t = (epoch - 1)·S + the step's index in its
epoch) the worker sets the lr of max(t - 1, 0). (timm's own train.py sets t's lr before step t: one
step earlier.)
S is the steps of a full epoch share (`pipelines/train/tasks.py` `steps_per_epoch`), so a worker
whose epoch ends a few steps early skips those steps' lrs, as the authors' index would.

Resuming: `exponential` stays torch's `ExponentialLR` (so checkpoints written before these schedules
existed still resume); the other per-epoch ones are a `LambdaLR` over `lr_factor`. Both keep only
`last_epoch` as state, so a resumed run recomputes the same factor for the next epoch. timm's
scheduler keeps no step counter: the lr of step t is a function of t, and t of the epoch (restored
from the checkpoint) and the batch index, so a resumed run trains every step at the lr an
uninterrupted run would. Its state is its settings (base lrs, lengths), restored as saved.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional, Union

import torch

from models.timm_loader import import_timm
from pipelines.config import TrainConfig

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler as TimmScheduler

SCHEDULES = ("exponential", "step", "exponential_step", "cosine_warmup")
PER_STEP = ("cosine_warmup",)  # schedules that set the lr of every optimiser step

LRScheduler = Union[torch.optim.lr_scheduler.LRScheduler, "TimmScheduler"]


def lr_factor(k: int, train: TrainConfig) -> float:
    """Multiplier of `train.lr` for the epoch with 0-based index `k` (per-epoch schedules)."""
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
    per_epoch = [s for s in SCHEDULES if s not in PER_STEP]
    raise ValueError(f"train.lr_schedule {kind!r} has no per-epoch factor (expected one of {', '.join(per_epoch)})")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig,
                    steps_per_epoch: Optional[int] = None) -> LRScheduler:
    """The scheduler for `train.lr_schedule`; `steps_per_epoch` (optimiser steps of one epoch per
    worker) is needed by the per-step `cosine_warmup` only. Drive it with `before_step` and
    `after_epoch`."""
    if train.lr_schedule in PER_STEP:
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError(f"lr_schedule {train.lr_schedule} needs steps_per_epoch >= 1, got {steps_per_epoch}")
        return _cosine(optimizer, train, steps_per_epoch)
    if train.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_decay)
    lr_factor(0, train)  # refuse an unknown schedule here rather than at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, train=train))


def _cosine(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int) -> "TimmScheduler":
    """timm's CosineLRScheduler over optimiser steps, set up as the authors' utils/lr_scheduler.py."""
    import_timm()
    from timm.scheduler.cosine_lr import CosineLRScheduler

    # timm multiplies its value by each group's lr_scale (layer decay) itself: its base lr is
    # train.lr for every group, not the group's scaled lr.
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", train.lr)
    warmup_lr, min_lr = train.cosine_lrs()
    return CosineLRScheduler(
        optimizer,
        t_initial=(train.epochs - train.warmup_epochs) * steps_per_epoch,
        lr_min=min_lr,
        warmup_lr_init=warmup_lr,
        warmup_t=train.warmup_epochs * steps_per_epoch,
        cycle_limit=1,
        t_in_epochs=False,
        warmup_prefix=True,
    )


def before_step(scheduler: LRScheduler, train: TrainConfig, step: int) -> None:
    """Set the lr of optimiser step `step` (0-based over the run) for a per-step schedule (the
    schedule's value at `step - 1`, as the authors' update after each step gives); per-epoch
    schedules keep their epoch's lr."""
    if train.lr_schedule in PER_STEP:
        scheduler.step_update(max(step - 1, 0))  # the authors' order: step t trains at t - 1's lr


def after_epoch(scheduler: LRScheduler, train: TrainConfig) -> None:
    """Move a per-epoch schedule on to the next epoch; per-step schedules move in `before_step`."""
    if train.lr_schedule not in PER_STEP:
        scheduler.step()


def lr_sequence(train: TrainConfig, steps_per_epoch: int = 1) -> list[float]:
    """The lr of every optimiser step `raylift train` will take, epoch after epoch (epochs ×
    steps_per_epoch values; a per-epoch schedule repeats its epoch's lr), from the scheduler the
    worker drives, the way it drives it."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=train.lr)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch)
    lrs = []
    for epoch in range(train.epochs):
        for index in range(steps_per_epoch):
            before_step(scheduler, train, epoch * steps_per_epoch + index)
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()  # no gradient: changes nothing, but torch schedulers expect a step first
        after_epoch(scheduler, train)
    return lrs
