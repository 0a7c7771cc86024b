"""The pure pieces of a training run: optimiser, schedule, one step, validation sums, RNG state,
checkpoint payloads and the resume checks. No Ray here, so every piece is unit-testable on CPU;
`pipelines/train/worker.py` strings them together inside a Ray Train worker.
"""
from __future__ import annotations

import itertools
import random
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError
from pipelines.config import TrainConfig
from pipelines.evaluate.prediction import autocast

if TYPE_CHECKING:
    from pipelines.train.schedules import LRScheduler

# (model, batch) -> (scalar loss tensor, {term name: float})
LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]


# --------------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, train: TrainConfig, fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """Adam or AdamW (optionally AMSGrad) over every trainable parameter, in the groups of
    `train.decay_groups` and `train.layer_decay` (pipelines/train/param_groups.py; by default one
    group, as the lifters' papers do).

    `fused` picks torch's fused kernel (one launch for all parameters instead of a few per tensor;
    the same update within float rounding, see tests/test_speed.py). None: fused when every
    parameter is on CUDA, where it is the fast path, else torch's default (foreach/for-loop), which
    keeps CPU runs bit-identical to earlier releases.
    """
    from pipelines.train.param_groups import param_groups

    groups = param_groups(model, train)
    params = [p for group in groups for p in group["params"]]
    if fused is None:
        fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=train.lr, weight_decay=train.weight_decay, betas=tuple(train.betas), amsgrad=train.amsgrad,
               fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig,
                    steps_per_epoch: Optional[int] = None) -> LRScheduler:
    """The schedule `train.lr_schedule` (see pipelines/train/schedules.py); `steps_per_epoch` is
    needed by the per-step ones."""
    from pipelines.train.schedules import build_scheduler as build

    return build(optimizer, train, steps_per_epoch)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The scheduled lr: the first group's, before its layer-decay `lr_scale`."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))


def train_step(
    model: nn.Module,
    batch: dict,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    clip_grad: Optional[float] = None,
    bf16: bool = False,
) -> tuple[float, dict]:
    """One optimisation step: forward under autocast, backward, optional norm clipping, update.

    Returns the loss as a float and the loss terms; the gradient norm (before clipping) is added
    as `grad_norm` when clipping is on.
    """
    device = batch["keypoints_2d"].device
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, bf16):
        loss, terms = loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} (not finite): lower train.lr or set train.clip_grad")
    loss.backward()
    terms = dict(terms)
    if clip_grad is not None:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        terms["grad_norm"] = float(norm)
    optimizer.step()
    return float(loss.detach()), terms


# --------------------------------------------------------------------------- host -> device
def lookahead(items: Iterable[Any], depth: int, issue: Callable[[Any], Any], ready: Callable[[Any], Any]) -> Iterator[Any]:
    """Yield `ready(issue(item))` for each item, calling `issue` on the next `depth` items first.

    `issue` starts asynchronous work (a host-to-device copy) and `ready` waits for it, so the work
    for item i+1..i+depth is in flight while the consumer handles item i.
    """
    if depth < 1:
        raise ValueError(f"lookahead depth must be >= 1, got {depth}")
    it = iter(items)
    pending = deque(issue(item) for item in itertools.islice(it, depth))
    while pending:
        head = pending.popleft()
        for item in itertools.islice(it, 1):
            pending.append(issue(item))
        yield ready(head)


def prefetch_to_device(batches: Iterable[dict], device: torch.device, depth: int = 1) -> Iterator[dict]:
    """`batches` (dicts of CPU tensors) on `device`, the next `depth` copies overlapping the current step.

    CUDA: each tensor is pinned and copied with `non_blocking=True` on a side stream; the step's
    stream waits for that copy's event, and `record_stream` keeps the caching allocator from
    reusing the memory early. Other devices: the batches pass through unchanged (no copy on CPU).
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def issue(batch: dict) -> tuple[dict, torch.cuda.Event]:
        with torch.cuda.stream(stream):
            moved = {k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) and not v.is_cuda else v
                     for k, v in batch.items()}
            return moved, stream.record_event()

    def ready(issued: tuple[dict, torch.cuda.Event]) -> dict:
        moved, event = issued
        current = torch.cuda.current_stream(device)
        current.wait_event(event)
        for v in moved.values():
            if torch.is_tensor(v) and v.is_cuda:
                v.record_stream(current)
        return moved

    yield from lookahead(batches, depth, issue, ready)


# --------------------------------------------------------------------------- validation
def masked_error_sums(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Sum of per-frame mean joint errors (metres) over frames with mask 1, and the frame count.

    pred/target (B, T, J, 3) or multiview (B, T, V, J, 3) (views averaged); mask (B, T). MPJPE is
    sum / count; sums from several workers or batches add up exactly.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    err = torch.linalg.vector_norm(pred.float() - target.float(), dim=-1)  # (B, T, [V,] J)
    per_frame = err.flatten(2).mean(dim=2)  # (B, T)
    weight = mask.float().reshape(per_frame.shape)
    return float((per_frame * weight).sum()), float(weight.sum())


@torch.no_grad()
def validation_sums(model: nn.Module, batches: Iterable[dict], device: torch.device, bf16: bool = False) -> tuple[float, float]:
    """Masked MPJPE sums of `model` over `batches` (no test-time flip; flipped windows skipped),
    with the camera inputs the model reads (`models.losses.camera_kwargs`), as in training.

    Returns (sum of per-frame errors in metres, frames counted); sums of several workers add up.
    """
    from models.losses import camera_kwargs

    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        for batch in batches:
            keep = ~batch["flipped"].to(torch.bool).reshape(-1)
            mask = batch["mask"].to(device) * keep.to(device).unsqueeze(1)
            camera = {k: v.to(device) for k, v in camera_kwargs(model, batch).items()}
            with autocast(device, bf16):
                pred = model(batch["keypoints_2d"].to(device), **camera)
            s, c = masked_error_sums(pred, batch["positions_3d"].to(device), mask)
            total += s
            count += c
    finally:
        model.train(was_training)
    return total, count


# --------------------------------------------------------------------------- RNG state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain data only,
    so the checkpoint loads with `torch.load(weights_only=True)`."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state` (CUDA states restored when this process sees as many GPUs)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- checkpoints
def checkpoint_meta(cfg_dict: dict, epoch: int, dataset_id: str, joints: int, layout: str, metrics: dict,
                    score: str) -> dict:
    """meta.json content (models/checkpoint.py's keys) for the experiment `cfg_dict` at `epoch`;
    `score` names the metric (in `metrics`) checkpoints are ranked by, lower is better."""
    return {
        "model": cfg_dict["model"],
        "frames": int(cfg_dict["data"]["windows"]["frames"]),
        "joints": int(joints),
        "layout": layout,
        "epoch": int(epoch),
        "dataset_id": dataset_id,
        "metrics": dict(metrics),
        "score": score,
        "config": cfg_dict,
    }


def build_train_state(
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    epoch: int,
    rng_states: list[dict],
    history: list[dict],
) -> dict:
    """train_state.pt content: what resuming needs besides the weights.

    `rng_states[r]` is worker r's generator state; `history` the per-epoch metrics so far (the
    CSV and TensorBoard logs are rebuilt from it on resume, so a redone epoch never appears twice).
    """
    return {
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": list(rng_states),
        "history": [dict(h) for h in history],
    }


def check_compatible(meta: dict, cfg_dict: dict, joints: int, dataset_id: str, source: str,
                     may_differ: Sequence[str] = ()) -> None:
    """Refuse to resume from a checkpoint of another model, window length, joint set or dataset.
    `may_differ`: dotted keys beyond `RESUME_MAY_DIFFER` that the checkpoint may have had other
    values of (`CONTINUE_MAY_CHANGE` when a run continues another run's checkpoint)."""
    want_model = {k: v for k, v in cfg_dict["model"].items() if f"model.{k}" not in may_differ}
    have_model = {k: v for k, v in meta.get("model", {}).items() if f"model.{k}" not in may_differ}
    if have_model.get("name") != want_model.get("name"):
        raise CheckpointError(
            f"{source}: holds model {have_model.get('name')!r}, but the config trains "
            f"{want_model.get('name')!r}; use another run name (name: ...) or storage_path"
        )
    frames = int(cfg_dict["data"]["windows"]["frames"])
    if int(meta.get("frames", -1)) != frames:
        raise CheckpointError(
            f"{source}: trained for T={meta.get('frames')} frames, but data.windows.frames={frames}; "
            "use another run name or storage_path"
        )
    if int(meta.get("joints", -1)) != int(joints):
        raise CheckpointError(f"{source}: has {meta.get('joints')} joints, the dataset has {joints}")
    if have_model != want_model:
        diff = sorted(k for k in set(have_model) | set(want_model) if have_model.get(k) != want_model.get(k))
        raise CheckpointError(
            f"{source}: model settings differ from the config ({', '.join(f'model.{k}' for k in diff)}); "
            "use another run name or storage_path"
        )
    if meta.get("dataset_id") != dataset_id:
        raise CheckpointError(
            f"{source}: trained on dataset {meta.get('dataset_id')!r}, the config gives {dataset_id!r}; "
            "use another run name or storage_path"
        )
    if isinstance(meta.get("config"), dict):
        diff = config_differences(meta["config"], cfg_dict, may_differ)
        if diff:
            shown = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diff[:4])
            raise CheckpointError(
                f"{source}: was trained with other settings ({shown}{' ...' if len(diff) > 4 else ''}); "
                "resume with the same config, or use another run name or storage_path"
            )


# Config keys a resumed run may change: where things are stored and read from, how many epochs in
# total, placement and retry settings, and everything about evaluation. Anything else shapes the
# training itself (optimiser, schedule, batch, workers (the global batch), data, seeds, precision).
RESUME_MAY_DIFFER = (
    "name", "train.epochs", "train.storage_path", "train.cpus_per_worker", "train.gpus_per_worker",
    "train.resources_per_worker", "train.max_failures", "train.keep_best", "train.prefetch_batches",
    "train.val_batch_size", "train.evaluate", "train.ship_logs", "eval", "tune", "tracking", "data.root", "data.source.data_3d",
    "data.source.data_2d", "data.source.cameras", "data.source.mpi_train", "data.source.mpi_test",
    "data.source.synthetic.out_dir", "data.images.boxes_2d",
)


# Hyperparameters a run may change when it continues another run's checkpoint (population-based
# training: a trial that copies a better one goes on from its weights, optimiser moments, schedule
# position, RNG and epoch with its own perturbed values of these). Each takes effect at once:
# the optimiser's lr and weight decay are reset from the config (`adopt_hyperparameters`), and
# drop-path rates are the model's own settings, not weights.
CONTINUE_MAY_CHANGE = ("train.lr", "train.weight_decay", "model.drop_path_rate")


def flatten_config(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}; tuples become lists, an empty section stays one value."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, dotted + "."))
        else:
            out[dotted] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(have: dict, want: dict, may_differ: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, checkpoint value, config value) for every setting that differs between two
    experiment configs, except the keys (and sections) in `RESUME_MAY_DIFFER` and `may_differ`."""
    a, b = flatten_config(have), flatten_config(want)

    def allowed(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in (*RESUME_MAY_DIFFER, *may_differ))

    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not allowed(k) and a.get(k) != b.get(k)]


def check_train_state(state: Any, source: str) -> dict:
    """Validate the structure of a loaded train_state.pt."""
    keys = ("epoch", "optimizer", "scheduler", "rng", "history")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise CheckpointError(f"{source}: train_state.pt lacks {', '.join(keys)} (not a raylift training checkpoint)")
    return state


def load_resume_state(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    cfg_dict: dict,
    joints: int,
    dataset_id: str,
    continued: bool = False,
) -> dict:
    """Load weights, optimiser and scheduler from checkpoint `directory`; returns its train state.

    `continued`: the checkpoint is another run's (a PBT donor's), which may differ in
    `CONTINUE_MAY_CHANGE`; this config's values of those replace the checkpoint's.
    Every mismatch or unreadable file is a CheckpointError naming the checkpoint.
    """
    from models.checkpoint import load_into, load_state, load_train_state, read_meta

    meta = read_meta(directory)
    check_compatible(meta, cfg_dict, joints, dataset_id, str(directory), CONTINUE_MAY_CHANGE if continued else ())
    load_into(model, load_state(directory), str(directory))
    state = check_train_state(load_train_state(directory), str(directory))
    own = hyperparameters(optimizer, scheduler)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: optimiser/scheduler state does not fit ({e})") from None
    if continued:
        adopt_hyperparameters(optimizer, scheduler, own)
    return state


def hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> dict:
    """What a freshly built optimiser and schedule took from the config: each group's initial lr
    and weight decay, and the schedule's base lrs (torch's `base_lrs`, timm's `base_values`)."""
    return {
        "groups": [{"initial_lr": g.get("initial_lr", g["lr"]), "weight_decay": g["weight_decay"]}
                   for g in optimizer.param_groups],
        "base": list(getattr(scheduler, "base_lrs", None) or getattr(scheduler, "base_values", None) or []),
    }


def adopt_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, own: dict) -> None:
    """After loading another run's optimiser and schedule state, put back this config's lr and
    weight decay (`own`, from `hyperparameters` before the load), keeping the moments and the
    schedule's position: each group's lr becomes its own base lr times the schedule's factor at
    the restored epoch. Per-step (timm) schedules set every step's lr from their base values."""
    for group, mine in zip(optimizer.param_groups, own["groups"]):
        group.update(mine)
    if hasattr(scheduler, "base_lrs"):  # torch per-epoch schedules: lr = base * factor(last_epoch)
        factors = [g["lr"] / b if b else 0.0 for g, b in zip(optimizer.param_groups, scheduler.base_lrs)]
        scheduler.base_lrs = list(own["base"])
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors):
            group["lr"] = base * factor
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    elif hasattr(scheduler, "base_values"):
        scheduler.base_values = list(own["base"])


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (whose state dict has clean keys)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# --------------------------------------------------------------------------- reporting
def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def epoch_line(row: dict, epochs: int, eta_s: float) -> str:
    """One human-readable line per epoch (loss, validation MPJPE in mm, lr, windows/s, ETA)."""
    pixels = "val_px" in row  # an image model: validation is the 2D error in full-image pixels
    val = row.get("val_px" if pixels else "val_mpjpe")
    val_text = f"{val:7.2f} {'px' if pixels else 'mm'}" if val is not None and np.isfinite(val) else "    n/a"
    return (
        f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  loss {row['loss']:.5f}  "
        f"val {'2D error' if pixels else 'MPJPE'} {val_text}  lr {row['lr']:.3g}  {row['windows_per_s']:.0f} windows/s  "
        f"epoch {row['epoch_time_s']:.1f}s  ETA {format_duration(eta_s)}"
    )
