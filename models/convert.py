"""Import the checkpoints released by the MixSTE and PoseFormer authors into raylift checkpoints.

The official files are `torch.save`d dicts: `model_pos` (a `DataParallel` state dict, every key
prefixed `module.`), `epoch`, `lr`, `optimizer` and `random_state` (NumPy's MT19937 state, a
pickled ndarray). They are read with `torch.load(weights_only=True)` and only the NumPy
reconstructors, array/dtype classes and scalar constructor such a file needs allowlisted for the
duration of the call (`torch.serialization.safe_globals`): no global outside that list is ever
resolved, so a malicious pickle cannot run code; it is refused with a `CheckpointError`.

Official parameter names map onto raylift's readable module names with the prefix tables in
`OFFICIAL_PREFIXES` (block internals `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2` are identical). Window length, joint count, widths, depth, MLP ratio and qkv bias are
inferred from the tensor shapes, so importing needs no config; only the number of attention heads
is invisible in the weights (the paper's 8 unless told otherwise).
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from models.checkpoint import CheckpointError, load_error, load_into, save_checkpoint

# model name -> [(official key prefix, raylift key prefix)], first match wins.
OFFICIAL_PREFIXES: dict[str, list[tuple[str, str]]] = {
    "mixste": [
        ("Spatial_patch_to_embedding.", "joint_embed."),
        ("Spatial_pos_embed", "spatial_pos"),
        ("Temporal_pos_embed", "temporal_pos"),
        ("STEblocks.", "spatial_blocks."),
        ("TTEblocks.", "temporal_blocks."),
        ("Spatial_norm.", "spatial_norm."),
        ("Temporal_norm.", "temporal_norm."),
        ("head.0.", "head.norm."),
        ("head.1.", "head.proj."),
    ],
    "poseformer": [
        ("Spatial_patch_to_embedding.", "joint_embed."),
        ("Spatial_pos_embed", "spatial_pos"),
        ("Temporal_pos_embed", "temporal_pos"),
        ("Spatial_blocks.", "spatial_blocks."),
        ("blocks.", "temporal_blocks."),
        ("Spatial_norm.", "spatial_norm."),
        ("Temporal_norm.", "temporal_norm."),
        ("weighted_mean.", "frame_weights."),
        ("head.0.", "head.norm."),
        ("head.1.", "head.proj."),
    ],
}

# Official spatial / temporal block lists (their count is the depth).
_SPATIAL_BLOCKS = {"mixste": "STEblocks", "poseformer": "Spatial_blocks"}


def _check_name(name: str) -> None:
    if name not in OFFICIAL_PREFIXES:
        raise CheckpointError(f"no official checkpoint format known for model {name!r} "
                              f"(expected one of {', '.join(OFFICIAL_PREFIXES)})")


def _rename(key: str, table: list[tuple[str, str]]) -> Optional[str]:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def to_raylift_key(name: str, key: str) -> Optional[str]:
    """Official parameter name (without `module.`) -> raylift's, or None when it has no counterpart."""
    _check_name(name)
    return _rename(key, OFFICIAL_PREFIXES[name])


def to_official_key(name: str, key: str) -> Optional[str]:
    """raylift parameter name -> the official one, or None when it has no counterpart."""
    _check_name(name)
    return _rename(key, [(new, old) for old, new in OFFICIAL_PREFIXES[name]])


def _numpy_safe_globals() -> list[Any]:
    """What NumPy arrays and scalars need to unpickle: constructors and plain numeric dtypes only.

    Files written under NumPy 1.x name the reconstructors `numpy.core.multiarray.*`; NumPy 2 moved
    them to `numpy._core.multiarray`; both spellings are admitted for the same functions.
    """
    import numpy as np
    from numpy._core import multiarray

    dtypes = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
              np.float16, np.float32, np.float64)
    return [
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in dtypes),
    ]


def load_official_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read an official checkpoint file without executing code; CheckpointError on anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for refused globals, RuntimeError/EOFError for corrupt files
        raise load_error(path, e, "an official checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict with 'model_pos', got {type(obj).__name__}")
    return obj


def official_state_dict(obj: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The `model_pos` state dict with DataParallel's `module.` prefixes stripped."""
    state = obj.get("model_pos")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: no 'model_pos' state dict (keys: {', '.join(map(str, obj))})")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: model_pos[{key!r}] is {type(value).__name__}, expected a tensor")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def _shape(state: dict[str, Any], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r} (needed to infer the model's size)")
    value = state[key]
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def infer_config(
    name: str, state: dict[str, Any], source: str, heads: Optional[int] = None
) -> tuple[Any, int, int]:
    """(raylift config, frames T, joints J) from an official state dict's shapes.

    `state` maps official keys (no `module.`) to tensors or shapes. Drop rates are the paper's
    training defaults; they do not change the weights.
    """
    from models.registry import config_class
    from preprocessing.schema import ConfigError

    _check_name(name)
    _, joints, dim = _shape(state, "Spatial_pos_embed", source)
    frames = _shape(state, "Temporal_pos_embed", source)[1]
    prefix = _SPATIAL_BLOCKS[name]
    indices = {int(m.group(1)) for k in state if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    if not indices:
        raise CheckpointError(f"{source}: no {prefix}.* keys: not a {name} checkpoint")
    hidden = _shape(state, f"{prefix}.0.mlp.fc1.weight", source)[0]
    values = {
        "name": name,
        "depth": max(indices) + 1,
        "mlp_ratio": hidden / dim,
        "qkv_bias": f"{prefix}.0.attn.qkv.bias" in state,
        ("dim" if name == "mixste" else "spatial_dim"): dim,
    }
    if heads is not None:
        values["heads"] = heads
    try:
        cfg = config_class(name)(**values)
        cfg.validate()
    except (ValueError, ConfigError) as e:
        raise CheckpointError(f"{source}: inferred {name} config {values} is invalid: {e}") from None
    return cfg, int(frames), int(joints)


def config_from_official(name: str, kwargs: dict[str, Any]) -> tuple[Any, int, int]:
    """(raylift config, T, J) from the official constructor's keyword arguments
    (`num_frame`, `num_joints`, `embed_dim_ratio`, `depth`, `num_heads`, `mlp_ratio`, ...)."""
    from models.registry import config_class

    _check_name(name)
    if kwargs.get("in_chans", 2) != 2:
        raise CheckpointError(f"official {name} config: in_chans={kwargs['in_chans']}, raylift lifts 2D input only")
    if kwargs.get("qk_scale") is not None:
        raise CheckpointError(f"official {name} config: qk_scale={kwargs['qk_scale']}, only the default is supported")
    cfg = config_class(name)(
        **{"dim" if name == "mixste" else "spatial_dim": int(kwargs["embed_dim_ratio"])},
        depth=int(kwargs["depth"]),
        heads=int(kwargs.get("num_heads", 8)),
        mlp_ratio=float(kwargs.get("mlp_ratio", 2.0)),
        qkv_bias=bool(kwargs.get("qkv_bias", True)),
        drop_rate=float(kwargs.get("drop_rate", 0.0)),
        attn_drop_rate=float(kwargs.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(kwargs.get("drop_path_rate", 0.1)),
    )
    cfg.validate()
    return cfg, int(kwargs["num_frame"]), int(kwargs.get("num_joints", 17))


def convert_state_dict(name: str, state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict:
    """Rename an official state dict to `model`'s keys; any key mismatch is a CheckpointError
    listing the missing and unexpected keys in official names."""
    _check_name(name)
    own = model.state_dict()
    mapped, unmatched = {}, []
    for key, value in state.items():
        new = to_raylift_key(name, key)
        if new is None or new not in own:
            unmatched.append(key)
        else:
            mapped[new] = value
    missing = sorted(to_official_key(name, k) or k for k in own if k not in mapped)
    if missing or unmatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unmatched:
            parts.append(f"unexpected keys: {', '.join(sorted(unmatched))}")
        raise CheckpointError(f"{source}: does not fit {name} ({'; '.join(parts)})")
    return mapped


def load_official(
    name: str, path: str | os.PathLike, frames: Optional[int] = None, heads: Optional[int] = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build raylift's model for an official checkpoint and load its weights (eval mode).

    Returns (model, info) with info = {"config", "frames", "joints", "epoch", "lr"}. `frames`, when
    given, must equal the window length the checkpoint was trained for.
    """
    from models.registry import build_model

    source = str(path)
    obj = load_official_file(path)
    state = official_state_dict(obj, source)
    cfg, t, j = infer_config(name, state, source, heads)
    if frames is not None and int(frames) != t:
        raise CheckpointError(f"{source}: trained for T={t} frames (Temporal_pos_embed), expected T={frames}")
    model = build_model(cfg, frames=t, joints=j)
    load_into(model, convert_state_dict(name, state, model, source), source)
    model.eval()
    epoch = obj.get("epoch")
    lr = obj.get("lr")
    return model, {
        "config": cfg,
        "frames": t,
        "joints": j,
        "epoch": int(epoch) if isinstance(epoch, int) else None,
        "lr": float(lr) if isinstance(lr, (int, float)) else None,
    }


def import_official(
    name: str,
    path: str | os.PathLike,
    out: str | os.PathLike,
    frames: Optional[int] = None,
    heads: Optional[int] = None,
) -> Path:
    """Convert an official checkpoint into a raylift checkpoint directory `out` (H36M layout)."""
    model, info = load_official(name, path, frames, heads)
    meta = {
        "model": dataclasses.asdict(info["config"]),
        "frames": info["frames"],
        "joints": info["joints"],
        "layout": "h36m",
        "epoch": info["epoch"],
        "dataset_id": None,
        "metrics": {},
        "config": None,
        "imported_from": {"format": name, "file": str(Path(path).resolve()), "lr": info["lr"]},
    }
    return save_checkpoint(out, model.state_dict(), meta)
