"""raylift checkpoints: a directory with `model.pt`, `meta.json` and optionally `train_state.pt`.

- `model.pt`: the model's state dict (plain tensors), loadable with `torch.load(weights_only=True)`.
- `meta.json`: {"format", "model" (config incl. name), "frames", "joints", "layout", "epoch",
  "dataset_id", "metrics", "config" (full experiment config or null), "raylift_version"}.
- `train_state.pt`: optimiser, scheduler and RNG states for resuming (tensors and plain data only).

Writes are atomic: everything goes to a sibling staging directory which is renamed into place, so
a crash never leaves a half-written checkpoint. Loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

FORMAT = "raylift-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what was asked for."""


def save_checkpoint(
    directory: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    train_state: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint atomically into `directory` (replacing an existing one)."""
    from preprocessing.version import __version__

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        torch.save({k: v.detach().cpu() for k, v in model_state.items()}, staging / "model.pt")
        if train_state is not None:
            torch.save(train_state, staging / "train_state.pt")
        full_meta = {"format": FORMAT, "raylift_version": __version__, **meta}
        (staging / "meta.json").write_text(json.dumps(full_meta, indent=1, sort_keys=True))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a raylift checkpoint (no meta.json)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt meta.json ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    for key in ("model", "frames", "joints"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing key {key!r}")
    return meta


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise load_error(path, e, "a checkpoint") from None


def load_error(path: str | os.PathLike, e: Exception, what: str) -> CheckpointError:
    """One line for a file torch's weights-only loader would not read. A refused pickle (one that
    names functions or classes beyond tensors and plain data: code would run on loading) says so;
    torch's own multi-line advice, which suggests disabling the check, is never passed on."""
    import pickle

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, pickle.UnpicklingError) and any("Weights only load failed" in ln for ln in lines):
        import re

        names = re.findall(r"GLOBAL (\S+)", " ".join(lines))
        detail = f"it names {names[0]}" if names else "objects other than tensors and plain data"
        return CheckpointError(f"{path}: holds code-bearing pickles ({detail}) and was refused; "
                               "raylift loads only tensors and plain data")
    return CheckpointError(f"{path}: cannot be read as {what} ({type(e).__name__}: {lines[0] if lines else e})")


def load_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    return _torch_load(Path(directory) / "model.pt")


def load_train_state(directory: str | os.PathLike) -> Optional[dict[str, Any]]:
    path = Path(directory) / "train_state.pt"
    return _torch_load(path) if path.exists() else None


def load_model(
    directory: str | os.PathLike,
    expect_model: Optional[str] = None,
    expect_frames: Optional[int] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model and load its weights (eval mode).

    Refuses, with a message naming the checkpoint, a model of another name or window length than
    expected, and any state dict with missing, unexpected or mis-shaped keys.
    """
    from models.registry import build_model, parse_model_config

    meta = read_meta(directory)
    name = meta["model"].get("name")
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"{directory}: holds model {name!r}, expected {expect_model!r}")
    if expect_frames is not None and int(meta["frames"]) != int(expect_frames):
        raise CheckpointError(f"{directory}: trained for T={meta['frames']} frames, expected T={expect_frames}")
    try:
        cfg = parse_model_config(meta["model"], "meta.model")
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from None
    model = build_model(cfg, frames=int(meta["frames"]), joints=int(meta["joints"]))
    load_into(model, load_state(directory), str(directory))
    model.eval()
    return model, meta


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load `state` into `model`; any key or shape mismatch is a CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape mismatch at {k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)
