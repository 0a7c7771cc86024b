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

from models.checkpoint import CheckpointError, load_into, save_checkpoint

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
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch wraps the reason ("Unsupported global: GLOBAL builtins.open ...") in advice text.
        reason = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else "")
        raise CheckpointError(
            f"{path}: refused or unreadable as a weights-only checkpoint ({type(e).__name__}: {reason})"
        ) from None
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
    from pipelines.schema import ConfigError

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


# --- MPSTR (the authors' `SwinPose`, WUJINHUAN/3D-human-pose) ------------------------------------
#
# Their checkpoint is `{'model': state_dict, 'epoch', ...}` with no `module.` prefix. The backbone
# is the original Microsoft Swin (`SwinTransformerspace`), the head `PoseTransformer`. Mapping onto
# raylift's `MPSTR` (timm SwinTransformer + `SequenceRelations` + `PoseHead`):
# - original Swin puts PatchMerging at the END of stage i, timm at the START of stage i+1:
#   `layers.i.downsample.*` -> `layers.{i+1}.downsample.*`. Both concatenate the 2x2 neighbours in
#   the order x0 (even row, even col), x1 (odd, even), x2 (even, odd), x3 (odd, odd): timm's
#   reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5) flattens column-parity-major, which
#   is that same order, so the reduction / norm weights are copied unpermuted (the parity test
#   would expose a swap: 0.82 at the fixture's output).
# - `relative_position_index` and `attn_mask` are config-derived buffers (timm rebuilds them,
#   non-persistent): dropped.
# - unused by the authors' forward: `backbone.head` (Linear 768 -> 34), `keypoint_head.
#   Temporal_pos_embed` (replaced by zeros at run time) and `keypoint_head.weighted_mean`: dropped.
MPSTR_PREFIXES: list[tuple[str, str]] = [
    ("backbone.", "backbone."),
    ("keypoint_head.blocks.", "relations.temporal_blocks."),
    ("keypoint_head.Temporal_norm.", "relations.norm."),
    ("keypoint_head.head.0.", "head.norm."),
    ("keypoint_head.head.1.", "head.proj."),
]
_MPSTR_BUFFERS = ("relative_position_index", "attn_mask")
_MPSTR_UNUSED = ("backbone.head.", "keypoint_head.Temporal_pos_embed", "keypoint_head.weighted_mean.")


def _mpstr_dropped(key: str) -> bool:
    """Whether an authors' SwinPose key is a config-derived buffer or a tensor it never uses."""
    return key.rsplit(".", 1)[-1] in _MPSTR_BUFFERS or key.startswith(_MPSTR_UNUSED)


def mpstr_key(key: str) -> Optional[str]:
    """Authors' SwinPose key -> raylift MPSTR key; None for dropped keys and unknown ones."""
    if _mpstr_dropped(key):
        return None
    new = _rename(key, MPSTR_PREFIXES)
    if new is None:
        return None
    return re.sub(r"^backbone\.layers\.(\d+)\.downsample\.",
                  lambda m: f"backbone.layers.{int(m.group(1)) + 1}.downsample.", new)


def mpstr_official_state_dict(obj: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The `model` state dict of a SwinPose training checkpoint (`module.` stripped if present)."""
    state = obj.get("model")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: no 'model' state dict (keys: {', '.join(map(str, obj))})")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: model[{key!r}] is {type(value).__name__}, expected a tensor")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def convert_mpstr_state_dict(
    state: dict[str, Any], model: torch.nn.Module, source: str
) -> tuple[dict[str, Any], list[str]]:
    """(raylift state dict, dropped official keys) for an authors' SwinPose state dict.

    Dropped keys are only the config-derived buffers and the tensors SwinPose never uses; any
    other key without a counterpart, any model key left unfilled, or a shape mismatch is a
    CheckpointError naming them.
    """
    own = model.state_dict()
    mapped, dropped, unmatched = {}, [], []
    for key, value in state.items():
        new = mpstr_key(key)
        if _mpstr_dropped(key):
            dropped.append(key)
        elif new is None or new not in own:
            unmatched.append(key)
        else:
            mapped[new] = value
    missing = sorted(k for k in own if k not in mapped)
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if tuple(v.shape) != tuple(own[k].shape)]
    if missing or unmatched or shapes:
        parts = [f"{what}: {', '.join(keys[:8])}" for what, keys in
                 (("missing keys", missing), ("unexpected keys", sorted(unmatched)), ("shape mismatches", shapes))
                 if keys]
        raise CheckpointError(f"{source}: does not fit mpstr ({'; '.join(parts)})")
    return mapped, sorted(dropped)


def mpstr_config_from_official(backbone: dict[str, Any], joints: int = 17) -> Any:
    """raylift `MPSTRConfig` (variant official) from the authors' `cfg.model['backbone']` dict.

    Missing entries take `SwinTransformerspace`'s defaults (Swin-T, 224, window 7), as their
    `configs/swin.py` does. The head is always `PoseTransformer()`: 4 blocks, 8 heads, MLP ratio 2,
    drop path 0.2; its width is the backbone's final width.
    """
    from models.mpstr import MPSTRConfig

    if backbone.get("qk_scale") is not None:
        raise CheckpointError(f"official mpstr config: qk_scale={backbone['qk_scale']}, only the default is supported")
    if backbone.get("ape", False) or not backbone.get("patch_norm", True):
        raise CheckpointError("official mpstr config: ape=True / patch_norm=False are not supported by timm's Swin")
    if joints != 17:
        raise CheckpointError(f"official mpstr config: SwinPose hard-wires 17 keypoints, got joints={joints}")
    cfg = MPSTRConfig(
        variant="official",
        img_size=int(backbone.get("img_size", 224)),
        patch_size=int(backbone.get("patch_size", 4)),
        in_chans=int(backbone.get("in_chans", 3)),
        embed_dim=int(backbone.get("embed_dim", 96)),
        depths=tuple(int(d) for d in backbone.get("depths", (2, 2, 6, 2))),
        num_heads=tuple(int(h) for h in backbone.get("num_heads", (3, 6, 12, 24))),
        window_size=int(backbone.get("window_size", 7)),
        mlp_ratio=float(backbone.get("mlp_ratio", 4.0)),
        qkv_bias=bool(backbone.get("qkv_bias", True)),
        relation_depth=4,
        relation_heads=8,
        relation_mlp_ratio=2.0,
        drop_rate=float(backbone.get("drop_rate", 0.0)),
        attn_drop_rate=float(backbone.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(backbone.get("drop_path_rate", 0.1)),
        relation_drop_path_rate=0.2,
    )
    cfg.validate()
    return cfg


def load_official_mpstr(
    path: str | os.PathLike, backbone: Optional[dict[str, Any]] = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build raylift's official-variant MPSTR for an authors' SwinPose checkpoint and load it (eval).

    `backbone` is their `cfg.model['backbone']` (None: the Swin-T defaults). Returns (model, info)
    with info = {"config", "epoch", "dropped"} (dropped: official keys not carried over).
    """
    from models.registry import build_model

    source = str(path)
    obj = load_official_file(path)
    cfg = mpstr_config_from_official(backbone or {})
    model = build_model(cfg, frames=1, joints=17)
    state, dropped = convert_mpstr_state_dict(mpstr_official_state_dict(obj, source), model, source)
    load_into(model, state, source)
    model.eval()
    epoch = obj.get("epoch")
    return model, {"config": cfg, "epoch": int(epoch) if isinstance(epoch, int) else None, "dropped": dropped}
