"""Import the checkpoints released by the MixSTE, PoseFormer, CrossFormer and Fusionformer authors.

The official files are `torch.save`d dicts: `model_pos` (a `DataParallel` state dict, every key
prefixed `module.`), `epoch`, `lr`, `optimizer` and `random_state` (NumPy's MT19937 state, a
pickled ndarray, or for CrossFormer a pickled `RandomState`); Fusionformer saves a bare state dict
(transformer and refinement network in two files). They are read with `torch.load(weights_only=True)` and only the NumPy
reconstructors, array/dtype classes and scalar constructor such a file needs allowlisted for the
duration of the call (`torch.serialization.safe_globals`): no global outside that list is ever
resolved, so a malicious pickle cannot run code; it is refused with a `CheckpointError`.

Official parameter names map onto raylift's readable module names with the prefix tables in
`OFFICIAL_PREFIXES` (block internals `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2` are identical). Tensors a released code stores but never uses (`OFFICIAL_UNUSED`:
CrossFormer's leftover layers, Fusionformer's `fcn`) are dropped and reported; any other
missing or unexpected key is an error. Window length, joint count, widths, depth, MLP ratio and qkv bias are
inferred from the tensor shapes, so importing needs no config; only the number of attention heads
is invisible in the weights (the paper's 8 unless told otherwise).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from models.checkpoint import CheckpointError, load_error, load_into, save_checkpoint

log = logging.getLogger(__name__)

# model name -> [(official key prefix, raylift key prefix)], first match wins. `{i}` stands for a
# block index (digits), carried over to the same place in the other name.
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
    # Released `PoseTransformer` (common/model_crossformer.py): `local_mp` is the Cross-Joint
    # Interaction (LPI), `local` the Cross-Frame Interaction (SpatialCGNL: t scaled by <p, g>).
    "crossformer": [
        ("Spatial_patch_to_embedding.", "joint_embed."),
        ("Spatial_pos_embed", "spatial_pos"),
        ("Temporal_pos_embed1", "temporal_pos"),
        ("Spatial_blocks.{i}.norm3.", "spatial_blocks.{i}.between.norm."),
        ("Spatial_blocks.{i}.gamma3", "spatial_blocks.{i}.between.gamma"),
        ("Spatial_blocks.{i}.local_mp.conv1.", "spatial_blocks.{i}.between.conv1."),
        ("Spatial_blocks.{i}.local_mp.gn.", "spatial_blocks.{i}.between.group_norm."),
        ("Spatial_blocks.{i}.local_mp.conv2.", "spatial_blocks.{i}.between.conv2."),
        ("blocks1.{i}.norm3.", "temporal_blocks.{i}.between.norm."),
        ("blocks1.{i}.gamma3", "temporal_blocks.{i}.between.gamma"),
        ("blocks1.{i}.local.t.", "temporal_blocks.{i}.between.value."),
        ("blocks1.{i}.local.p.", "temporal_blocks.{i}.between.key."),
        ("blocks1.{i}.local.g.", "temporal_blocks.{i}.between.query."),
        ("blocks1.{i}.local.z.", "temporal_blocks.{i}.between.out."),
        ("blocks1.{i}.local.gn.", "temporal_blocks.{i}.between.group_norm."),
        ("Spatial_blocks.", "spatial_blocks."),
        ("blocks1.", "temporal_blocks."),
        ("Spatial_norm.", "spatial_norm."),
        ("Temporal_norm1.", "temporal_norm."),
        ("weighted_mean.", "frame_weights."),
        ("head.0.", "head.norm."),
        ("head.1.", "head.proj."),
    ],
    # Released `Fusionformer` (common/Fusionformer.py) and `refine` (common/refine.py), whose two
    # state dicts are merged on import (their keys do not overlap).
    "fusionformer": [
        ("SE.Spatial_patch_to_embedding.", "gim.spatial.embed."),
        ("SE.Spatial_pos_embed", "gim.spatial.encoder.pos"),
        ("SE.Spatial_blocks.", "gim.spatial.encoder.blocks."),
        ("SE.Spatial_norm.", "gim.spatial.encoder.norm."),
        ("TE.Temporal_pos_embed", "gim.temporal.encoder.pos"),
        ("TE.Temporal_blocks.", "gim.temporal.encoder.blocks."),
        ("TE.Temporal_norm.", "gim.temporal.encoder.norm."),
        ("STE.Self_Trajectory_patch_to_embedding.", "lim.self_trajectory.embed."),
        ("STE.Self_Trajectory_pos_embed", "lim.self_trajectory.encoder.pos"),
        ("STE.Self_Trajectory_blocks.", "lim.self_trajectory.encoder.blocks."),
        ("STE.Self_Trajectory_norm.", "lim.self_trajectory.encoder.norm."),
        ("CTE.Cross_Trajectory_pos_embed", "lim.cross_trajectory.encoder.pos"),
        ("CTE.Cross_Trajectory_blocks.", "lim.cross_trajectory.encoder.blocks."),
        ("CTE.Cross_Trajectory_norm.", "lim.cross_trajectory.encoder.norm."),
        ("glf.fc.", "fusion.gate."),
        ("glf.fusion.0.", "fusion.norm."),
        ("glf.fusion.1.", "fusion.conv."),
        ("head.0.", "head.norm."),
        ("head.1.", "head.proj."),
        ("post_refine.0.", "refine.fc1."),
        ("post_refine.3.", "refine.fc2."),
    ],
}

# Tensors the released code keeps in its state dict but never uses in `forward` (the READMEs of
# the parity fixtures list them): accepted, dropped and reported on import. Full-match patterns.
OFFICIAL_UNUSED: dict[str, list[str]] = {
    "crossformer": [
        r"(Temporal_pos_embed|chennels_pos_embed|top_pos_embed|outer_tokens|outer_pos|outer_temp|inner_pos"
        r"|inner_temp|spatial_embed|Temporal_embed)",
        r"(Spatial_patch_to_embedding1|temporal_patch_to_embedding1|proj_norm1|proj|proj_norm2|proj_norm12"
        r"|proj12|proj_norm13|lins|Temporal_norm|channels_norm|Temporal|channels|weighted_mean1|weighted_mean2)\.\w+",
        r"(Spatial_blocks|blocks1)\.\d+\.(gamma4|norm4\.\w+)",
        r"Spatial_blocks\.\d+\.local_mp\.(conv3|bn|gn1)\.\w+",
    ],
    "fusionformer": [r"fcn\.\d+\.\w+"],  # LayerNorm + Conv1d(4T -> T) built, never called (glf fuses)
}

# Official spatial block lists (their count is the depth).
_SPATIAL_BLOCKS = {"mixste": "STEblocks", "poseformer": "Spatial_blocks", "crossformer": "Spatial_blocks"}
# Where the official window length T is visible: (key, axis).
_FRAMES_FROM = {
    "mixste": ("Temporal_pos_embed", 1),
    "poseformer": ("Temporal_pos_embed", 1),
    "crossformer": ("weighted_mean.weight", 1),
    "fusionformer": ("TE.Temporal_pos_embed", 1),
}


def _check_name(name: str) -> None:
    if name not in OFFICIAL_PREFIXES:
        raise CheckpointError(f"no official checkpoint format known for model {name!r} "
                              f"(expected one of {', '.join(OFFICIAL_PREFIXES)})")


def _pattern(prefix: str) -> str:
    return re.escape(prefix).replace(re.escape("{i}"), r"(\d+)")


def _rename(key: str, table: list[tuple[str, str]]) -> Optional[str]:
    for old, new in table:
        m = re.match(_pattern(old), key)
        if m:
            for index in m.groups():
                new = new.replace("{i}", index, 1)
            return new + key[m.end():]
    return None


def to_raylift_key(name: str, key: str) -> Optional[str]:
    """Official parameter name (without `module.`) -> raylift's, or None when it has no counterpart."""
    _check_name(name)
    return _rename(key, OFFICIAL_PREFIXES[name])


def to_official_key(name: str, key: str) -> Optional[str]:
    """raylift parameter name -> the official one, or None when it has no counterpart."""
    _check_name(name)
    return _rename(key, [(new, old) for old, new in OFFICIAL_PREFIXES[name]])


def is_unused_official_key(name: str, key: str) -> bool:
    """Whether `key` is one of the tensors the released code stores but never uses."""
    return any(re.fullmatch(p, key) for p in OFFICIAL_UNUSED.get(name, []))


_TENSOR_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def key_group(key: str) -> str:
    """`Spatial_blocks.3.local_mp.bn.running_mean` -> `Spatial_blocks.N.local_mp.bn.*`,
    `blocks1.2.gamma4` -> `blocks1.N.gamma4` (module groups for reports)."""
    key = re.sub(r"\.\d+(?=\.|$)", ".N", key)
    module, _, leaf = key.rpartition(".")
    return f"{module}.*" if module and leaf in _TENSOR_NAMES else key


def _numpy_safe_globals() -> list[Any]:
    """What NumPy arrays, scalars and a legacy `RandomState` need to unpickle: constructors and
    plain numeric dtypes only.

    Files written under NumPy 1.x name the reconstructors `numpy.core.multiarray.*`; NumPy 2 moved
    them to `numpy._core.multiarray`; both spellings are admitted for the same functions.
    """
    import numpy as np
    from numpy._core import multiarray
    from numpy.random import _pickle as random_pickle
    from numpy.random import MT19937, RandomState

    dtypes = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
              np.float16, np.float32, np.float64)
    return [
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        np.dtype,
        # A pickled `RandomState` object (CrossFormer's `random_state`): constructors of NumPy's
        # MT19937 generator only; they build an RNG and set its state, nothing else.
        random_pickle.__randomstate_ctor,
        random_pickle.__bit_generator_ctor,
        MT19937,
        RandomState,
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
    """The model's state dict with DataParallel's `module.` prefixes stripped.

    Accepts the VideoPose3D-style layout (`model_pos` next to `epoch`, `lr`, ... : MixSTE,
    PoseFormer, CrossFormer) and a bare state dict (Fusionformer's `torch.save(model.state_dict())`).
    """
    state = obj.get("model_pos")
    if state is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
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


def _depth(state: dict[str, Any], prefix: str, name: str, source: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    if not indices:
        raise CheckpointError(f"{source}: no {prefix}.* keys: not a {name} checkpoint")
    return max(indices) + 1


def _inferred_values(name: str, state: dict[str, Any], source: str) -> tuple[dict[str, Any], int]:
    """(config values, joints) read off an official state dict's shapes."""
    if name == "fusionformer":
        _, joints, dim = _shape(state, "SE.Spatial_pos_embed", source)
        frames = _shape(state, "TE.Temporal_pos_embed", source)[1]
        blocks = "SE.Spatial_blocks"
        values = {
            "dim": dim,
            "L_s": _depth(state, blocks, name, source),
            "L_c": _depth(state, "STE.Self_Trajectory_blocks", name, source),
            "refine_hidden": _shape(state, "post_refine.0.weight", source)[0] // frames,
            "variant": "official",
        }
    else:
        _, joints, dim = _shape(state, "Spatial_pos_embed", source)
        blocks = _SPATIAL_BLOCKS[name]
        values = {"depth": _depth(state, blocks, name, source), ("dim" if name == "mixste" else "spatial_dim"): dim}
        if name == "crossformer":
            values["variant"] = "official"
    hidden = _shape(state, f"{blocks}.0.mlp.fc1.weight", source)[0]
    values.update(mlp_ratio=hidden / dim, qkv_bias=f"{blocks}.0.attn.qkv.bias" in state)
    return values, int(joints)


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
    key, axis = _FRAMES_FROM[name]
    frames = _shape(state, key, source)[axis]
    values, joints = _inferred_values(name, state, source)
    values["name"] = name
    if heads is not None:
        values["heads"] = heads
    try:
        cfg = config_class(name)(**values)
        cfg.validate()
    except (ValueError, ConfigError) as e:
        raise CheckpointError(f"{source}: inferred {name} config {values} is invalid: {e}") from None
    return cfg, int(frames), joints


def config_from_official(name: str, kwargs: dict[str, Any]) -> tuple[Any, int, int]:
    """(raylift config, T, J) from the official constructor's keyword arguments
    (`num_frame`, `num_joints`, `embed_dim_ratio`, `depth`, `num_heads`, `mlp_ratio`, ...).

    CrossFormer's released constructor ignores the `mlp_ratio` and `qkv_bias` it is passed (it
    rebinds 4 and False), so they are left to the `official` variant. Fusionformer builds all four
    encoders with `depth` (L_s = L_c = depth) and a refinement of 1024·T hidden units.
    """
    from models.registry import config_class

    _check_name(name)
    if kwargs.get("in_chans", 2) != 2:
        raise CheckpointError(f"official {name} config: in_chans={kwargs['in_chans']}, raylift lifts 2D input only")
    if kwargs.get("qk_scale") is not None:
        raise CheckpointError(f"official {name} config: qk_scale={kwargs['qk_scale']}, only the default is supported")
    depth = int(kwargs["depth"])
    values: dict[str, Any] = {
        "heads": int(kwargs.get("num_heads", 8)),
        "drop_rate": float(kwargs.get("drop_rate", 0.0)),
        "attn_drop_rate": float(kwargs.get("attn_drop_rate", 0.0)),
        "drop_path_rate": float(kwargs.get("drop_path_rate", 0.1)),
    }
    if name != "crossformer":
        values.update(mlp_ratio=float(kwargs.get("mlp_ratio", 2.0)), qkv_bias=bool(kwargs.get("qkv_bias", True)))
    if name == "fusionformer":
        values.update(dim=int(kwargs["embed_dim_ratio"]), L_s=depth, L_c=depth, variant="official")
    else:
        values.update({"dim" if name == "mixste" else "spatial_dim": int(kwargs["embed_dim_ratio"]), "depth": depth})
    if name == "crossformer":
        values["variant"] = "official"
    cfg = config_class(name)(**values)
    cfg.validate()
    return cfg, int(kwargs["num_frame"]), int(kwargs.get("num_joints", 17))


def unused_official_keys(name: str, state: dict[str, Any]) -> list[str]:
    """The keys of `state` the released code stores but never uses (`OFFICIAL_UNUSED`), sorted."""
    return sorted(k for k in state if is_unused_official_key(name, k))


def convert_state_dict(name: str, state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict:
    """Rename an official state dict to `model`'s keys; any key mismatch is a CheckpointError
    listing the missing and unexpected keys in official names.

    Tensors the released code never uses (`OFFICIAL_UNUSED`) are dropped, and their groups
    logged at WARNING (`unused_official_keys` lists them).
    """
    _check_name(name)
    own = model.state_dict()
    mapped, unmatched = {}, []
    dropped = unused_official_keys(name, state)
    for key, value in state.items():
        if is_unused_official_key(name, key):
            continue
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
    if dropped:
        log.warning("%s: dropped %d tensors the released %s code never uses: %s", source, len(dropped), name,
                    ", ".join(sorted({key_group(k) for k in dropped})))
    return mapped


def load_official(
    name: str,
    path: str | os.PathLike,
    frames: Optional[int] = None,
    heads: Optional[int] = None,
    refine: Optional[str | os.PathLike] = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build raylift's model for an official checkpoint and load its weights (eval mode).

    Fusionformer's weights come in two files, the transformer (`path`) and the refinement network
    (`refine`, required for it). Returns (model, info) with info = {"config", "frames", "joints",
    "epoch", "lr", "dropped"}; "dropped" lists the groups of unused official tensors left out.
    `frames`, when given, must equal the window length the checkpoint was trained for.
    """
    from models.registry import build_model

    source = str(path)
    obj = load_official_file(path)
    state = official_state_dict(obj, source)
    if name == "fusionformer":
        if refine is None:
            raise CheckpointError(f"{source}: a Fusionformer import needs the refinement checkpoint too (--refine FILE)")
        state.update(official_state_dict(load_official_file(refine), str(refine)))
    elif refine is not None:
        raise CheckpointError(f"--refine applies to fusionformer checkpoints only, not {name}")
    cfg, t, j = infer_config(name, state, source, heads)
    if frames is not None and int(frames) != t:
        raise CheckpointError(f"{source}: trained for T={t} frames ({_FRAMES_FROM[name][0]}), expected T={frames}")
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
        "dropped": sorted({key_group(k) for k in unused_official_keys(name, state)}),
    }


def import_official(
    name: str,
    path: str | os.PathLike,
    out: str | os.PathLike,
    frames: Optional[int] = None,
    heads: Optional[int] = None,
    refine: Optional[str | os.PathLike] = None,
) -> Path:
    """Convert an official checkpoint into a raylift checkpoint directory `out` (H36M layout).

    meta["imported_from"]["dropped_unused"] lists the groups of official tensors left out because
    the released code never uses them.
    """
    model, info = load_official(name, path, frames, heads, refine)
    meta = {
        "model": dataclasses.asdict(info["config"]),
        "frames": info["frames"],
        "joints": info["joints"],
        "layout": "h36m",
        "epoch": info["epoch"],
        "dataset_id": None,
        "metrics": {},
        "config": None,
        "imported_from": {"format": name, "file": str(Path(path).resolve()), "lr": info["lr"],
                          "refine_file": str(Path(refine).resolve()) if refine is not None else None,
                          "dropped_unused": info["dropped"]},
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
