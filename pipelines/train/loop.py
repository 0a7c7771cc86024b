"""The pure pieces of a training run: optimiser, schedule, one step, validation sums, RNG state,
checkpoint payloads and the resume checks. No Ray here, so every piece is unit-testable on CPU;
`pipelines/train/worker.py` strings them together inside a Ray Train worker.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError
from pipelines.config import TrainConfig

# (model, batch) -> (scalar loss tensor, {term name: float})
LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]


# --------------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over every trainable parameter, as the papers do (no per-group decay rules)."""
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train.lr, weight_decay=train.weight_decay, betas=tuple(train.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Exponential decay stepped once per epoch (lr_epoch = lr * lr_decay ** epoch)."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_decay)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; a no-op on CPU (CPU bf16 is slower than fp32 here)."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    """Masked MPJPE sums of `model` over `batches` (no test-time flip; flipped windows skipped).

    Returns (sum of per-frame errors in metres, frames counted); sums of several workers add up.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        for batch in batches:
            keep = ~batch["flipped"].to(torch.bool).reshape(-1)
            mask = batch["mask"].to(device) * keep.to(device).unsqueeze(1)
            with autocast(device, bf16):
                pred = model(batch["keypoints_2d"].to(device))
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
def checkpoint_meta(cfg_dict: dict, epoch: int, dataset_id: str, joints: int, layout: str, metrics: dict) -> dict:
    """meta.json content (models/checkpoint.py's keys) for the experiment `cfg_dict` at `epoch`."""
    return {
        "model": cfg_dict["model"],
        "frames": int(cfg_dict["data"]["windows"]["frames"]),
        "joints": int(joints),
        "layout": layout,
        "epoch": int(epoch),
        "dataset_id": dataset_id,
        "metrics": dict(metrics),
        "config": cfg_dict,
    }


def build_train_state(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
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


def check_compatible(meta: dict, cfg_dict: dict, joints: int, dataset_id: str, source: str) -> None:
    """Refuse to resume from a checkpoint of another model, window length, joint set or dataset."""
    want_model = cfg_dict["model"]
    have_model = meta.get("model", {})
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
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg_dict: dict,
    joints: int,
    dataset_id: str,
) -> dict:
    """Load weights, optimiser and scheduler from checkpoint `directory`; returns its train state.

    Every mismatch or unreadable file is a CheckpointError naming the checkpoint.
    """
    from models.checkpoint import load_into, load_state, load_train_state, read_meta

    meta = read_meta(directory)
    check_compatible(meta, cfg_dict, joints, dataset_id, str(directory))
    load_into(model, load_state(directory), str(directory))
    state = check_train_state(load_train_state(directory), str(directory))
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: optimiser/scheduler state does not fit ({e})") from None
    return state


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
