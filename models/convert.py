"""Import the checkpoints released by the MixSTE, PoseFormer, CrossFormer and Fusionformer authors.

The official files are `torch.save`d dicts: `model_pos` (a `DataParallel` state dict, every key
prefixed `module.`), `epoch`, `lr`, `optimizer` and `random_state` (NumPy's MT19937 state, a
pickled ndarray, or for CrossFormer a pickled `RandomState`); Fusionformer saves a bare state dict
(transformer and refinement network in two files). They are read with `torch.load(weights_only=True)` and only the NumPy
reconstructors, array/dtype classes and scalar constructor such a file needs allowlisted for the
duration of the call (`torch.serialization.safe_globals`): no global outside that list is ever
resolved, so a malicious pickle cannot run code; it is refused with a `CheckpointError`.

What is specific to one model lives beside it: each lifter's file exports an `OfficialCheckpoint`
(`models/official.py`), registered here in `OFFICIAL_CHECKPOINTS`, and `models/mpstr.py` holds
the tables of the authors' SwinPose (MPSTR, images -> 2D). This module is the one engine that
applies them. Official parameter names map onto raylift's readable module names with the
model's prefix table (block internals `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2` are identical). Tensors a released code stores but never uses (the model's `unused`
patterns: CrossFormer's leftover layers, Fusionformer's `fcn`) are dropped and reported; any other
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
from typing import Any, Callable, Iterable, Optional

import torch

from models import crossformer, fusionformer, mixste, mpstr, poseformer
from models.checkpoint import CheckpointError, load_error, load_into, save_checkpoint
from models.official import OfficialCheckpoint, tensor_shape

log = logging.getLogger(__name__)

# model name -> its released checkpoint format, defined beside the model (`OFFICIAL_CHECKPOINT`).
OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "mixste": mixste.OFFICIAL_CHECKPOINT,
    "poseformer": poseformer.OFFICIAL_CHECKPOINT,
    "crossformer": crossformer.OFFICIAL_CHECKPOINT,
    "fusionformer": fusionformer.OFFICIAL_CHECKPOINT,
}


def _spec(name: str) -> OfficialCheckpoint:
    """The registered format of model `name`; CheckpointError listing the known ones otherwise."""
    if name not in OFFICIAL_CHECKPOINTS:
        raise CheckpointError(f"no official checkpoint format known for model {name!r} "
                              f"(expected one of {', '.join(OFFICIAL_CHECKPOINTS)})")
    return OFFICIAL_CHECKPOINTS[name]


def _pattern(prefix: str) -> str:
    """A table prefix as a regex: `{i}` captures a block index."""
    return re.escape(prefix).replace(re.escape("{i}"), r"(\d+)")


def _rename(key: str, table: Iterable[tuple[str, str]]) -> Optional[str]:
    """`key` renamed by the first (old, new) prefix pair of `table` it starts with; None if none."""
    for old, new in table:
        m = re.match(_pattern(old), key)
        if m:
            for index in m.groups():
                new = new.replace("{i}", index, 1)
            return new + key[m.end():]
    return None


def _listed(patterns: Iterable[str], key: str) -> bool:
    """Whether `key` fully matches one of the regexes `patterns`."""
    return any(re.fullmatch(p, key) for p in patterns)


def to_raylift_key(name: str, key: str) -> Optional[str]:
    """Official parameter name (without `module.`) -> raylift's, or None when it has no counterpart."""
    return _rename(key, _spec(name).prefixes)


def to_official_key(name: str, key: str) -> Optional[str]:
    """raylift parameter name -> the official one, or None when it has no counterpart."""
    return _rename(key, [(new, old) for old, new in _spec(name).prefixes])


def is_unused_official_key(name: str, key: str) -> bool:
    """Whether `key` is one of the tensors the released code stores but never uses."""
    return _listed(_spec(name).unused, key)


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


def _tensors(state: Any, field: str, obj: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """`state` (the checkpoint's `field`) checked to hold tensors, DataParallel's `module.` stripped."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: no {field!r} state dict (keys: {', '.join(map(str, obj))})")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {field}[{key!r}] is {type(value).__name__}, expected a tensor")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def official_state_dict(obj: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The model's state dict with DataParallel's `module.` prefixes stripped.

    Accepts the VideoPose3D-style layout (`model_pos` next to `epoch`, `lr`, ... : MixSTE,
    PoseFormer, CrossFormer) and a bare state dict (Fusionformer's `torch.save(model.state_dict())`).
    """
    state = obj.get("model_pos")
    if state is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    return _tensors(state, "model_pos", obj, source)


def infer_config(
    name: str, state: dict[str, Any], source: str, heads: Optional[int] = None
) -> tuple[Any, int, int]:
    """(raylift config, frames T, joints J) from an official state dict's shapes.

    `state` maps official keys (no `module.`) to tensors or shapes. Drop rates are the paper's
    training defaults; they do not change the weights.
    """
    from models.registry import config_class
    from preprocessing.schema import ConfigError

    spec = _spec(name)
    key, axis = spec.frames_at
    frames = tensor_shape(state, key, source)[axis]
    values, joints = spec.infer_values(state, source)
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

    Heads and drop rates mean the same in every lifter; the model's own arguments are mapped by
    its `OfficialCheckpoint.official_values`.
    """
    from models.registry import config_class

    spec = _spec(name)
    if kwargs.get("in_chans", 2) != 2:
        raise CheckpointError(f"official {name} config: in_chans={kwargs['in_chans']}, raylift lifts 2D input only")
    if kwargs.get("qk_scale") is not None:
        raise CheckpointError(f"official {name} config: qk_scale={kwargs['qk_scale']}, only the default is supported")
    values: dict[str, Any] = {
        "heads": int(kwargs.get("num_heads", 8)),
        "drop_rate": float(kwargs.get("drop_rate", 0.0)),
        "attn_drop_rate": float(kwargs.get("attn_drop_rate", 0.0)),
        "drop_path_rate": float(kwargs.get("drop_path_rate", 0.1)),
        **spec.official_values(kwargs),
    }
    cfg = config_class(name)(**values)
    cfg.validate()
    return cfg, int(kwargs["num_frame"]), int(kwargs.get("num_joints", 17))


def unused_official_keys(name: str, state: dict[str, Any]) -> list[str]:
    """The keys of `state` the released code stores but never uses (`OfficialCheckpoint.unused`), sorted."""
    return sorted(k for k in state if is_unused_official_key(name, k))


def _split(
    state: dict[str, Any], own: dict[str, Any], dropped: Callable[[str], bool], rename: Callable[[str], Optional[str]]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """(tensors under `own`'s keys, dropped official keys, official keys with no place in `own`)."""
    mapped, skipped, unmatched = {}, [], []
    for key, value in state.items():
        if dropped(key):
            skipped.append(key)
            continue
        new = rename(key)
        if new is None or new not in own:
            unmatched.append(key)
        else:
            mapped[new] = value
    return mapped, sorted(skipped), sorted(unmatched)


def _check_fit(source: str, name: str, problems: dict[str, list[str]], shown: Optional[int] = None) -> None:
    """CheckpointError listing each non-empty list of `problems` (its first `shown` entries)."""
    parts = [f"{what}: {', '.join(keys[:shown])}" for what, keys in problems.items() if keys]
    if parts:
        raise CheckpointError(f"{source}: does not fit {name} ({'; '.join(parts)})")


def convert_state_dict(name: str, state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict:
    """Rename an official state dict to `model`'s keys; any key mismatch is a CheckpointError
    listing the missing and unexpected keys in official names.

    Tensors the released code never uses (`OfficialCheckpoint.unused`) are dropped, and their
    groups logged at WARNING (`unused_official_keys` lists them).
    """
    spec = _spec(name)
    own = model.state_dict()
    mapped, dropped, unmatched = _split(state, own, lambda k: _listed(spec.unused, k),
                                        lambda k: _rename(k, spec.prefixes))
    missing = sorted(to_official_key(name, k) or k for k in own if k not in mapped)
    _check_fit(source, name, {"missing keys": missing, "unexpected keys": unmatched})
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

    spec = _spec(name)
    source = str(path)
    obj = load_official_file(path)
    state = official_state_dict(obj, source)
    if spec.refine_file:
        if refine is None:
            raise CheckpointError(f"{source}: a {name} import needs the refinement checkpoint too (--refine FILE)")
        state.update(official_state_dict(load_official_file(refine), str(refine)))
    elif refine is not None:
        with_refine = ", ".join(n for n, other in OFFICIAL_CHECKPOINTS.items() if other.refine_file)
        raise CheckpointError(f"--refine applies to {with_refine} checkpoints only, not {name}")
    cfg, t, j = infer_config(name, state, source, heads)
    if frames is not None and int(frames) != t:
        raise CheckpointError(f"{source}: trained for T={t} frames ({spec.frames_at[0]}), expected T={frames}")
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


# --- MPSTR (the authors' `SwinPose`): its key tables and config mapping are in models/mpstr.py ---


def mpstr_key(key: str) -> Optional[str]:
    """Authors' SwinPose key -> raylift MPSTR key; None for dropped keys and unknown ones."""
    if _listed(mpstr.OFFICIAL_UNUSED, key):
        return None
    new = _rename(key, mpstr.OFFICIAL_PREFIXES)
    return None if new is None else mpstr.official_downsample_key(new)


def mpstr_official_state_dict(obj: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The `model` state dict of a SwinPose training checkpoint (`module.` stripped if present)."""
    return _tensors(obj.get("model"), "model", obj, source)


def convert_mpstr_state_dict(
    state: dict[str, Any], model: torch.nn.Module, source: str
) -> tuple[dict[str, Any], list[str]]:
    """(raylift state dict, dropped official keys) for an authors' SwinPose state dict.

    Dropped keys are only the config-derived buffers and the tensors SwinPose never uses
    (`models.mpstr.OFFICIAL_UNUSED`); any other key without a counterpart, any model key left
    unfilled, or a shape mismatch is a CheckpointError naming them (the first 8 of each).
    """
    own = model.state_dict()
    mapped, dropped, unmatched = _split(state, own, lambda k: _listed(mpstr.OFFICIAL_UNUSED, k), mpstr_key)
    missing = sorted(k for k in own if k not in mapped)
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if tuple(v.shape) != tuple(own[k].shape)]
    _check_fit(source, "mpstr", {"missing keys": missing, "unexpected keys": unmatched, "shape mismatches": shapes},
               shown=8)
    return mapped, dropped


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
    cfg = mpstr.official_config(backbone or {})
    model = build_model(cfg, frames=1, joints=17)
    state, dropped = convert_mpstr_state_dict(mpstr_official_state_dict(obj, source), model, source)
    load_into(model, state, source)
    model.eval()
    epoch = obj.get("epoch")
    return model, {"config": cfg, "epoch": int(epoch) if isinstance(epoch, int) else None, "dropped": dropped}
