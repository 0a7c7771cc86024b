"""How one model's released checkpoint maps onto raylift's: the spec each model file exports.

Each lifter with released weights (`mixste.py`, `poseformer.py`, `crossformer.py`,
`fusionformer.py`) defines an `OfficialCheckpoint` beside the model it describes, as timm keeps a
`checkpoint_filter_fn` in each model file: a renamed module and its key table change together.
`models/convert.py` holds the one engine that applies these specs (safe loading, renaming,
dropping, building, saving). This module sits below both, so the imports run one way: model
files -> here, convert.py -> model files and here.

The helpers read an official state dict's shapes for the spec functions. "State" maps official
keys (without DataParallel's `module.`) to tensors or to shapes, so a key layout listed in a JSON
file converts like the checkpoint itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import torch

from models.checkpoint import CheckpointError

State = Mapping[str, Any]


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One lifter's official checkpoint format, as the generic importer needs it."""

    # (official key prefix, raylift key prefix), first match wins. `{i}` stands for a block index
    # (digits), carried over to the same place in the other name.
    prefixes: tuple[tuple[str, str], ...]
    # Where the official window length T is visible: (key, axis).
    frames_at: tuple[str, int]
    # (state, source) -> (config field values, joints J): everything in the config that the
    # tensor shapes show. The engine adds `name` and `heads`, which the weights do not show.
    infer_values: Callable[[State, str], tuple[dict[str, Any], int]]
    # The official constructor's model-specific keyword arguments (`embed_dim_ratio`, `depth`, ...)
    # -> config field values; the engine checks and maps the arguments every lifter shares.
    official_values: Callable[[Mapping[str, Any]], dict[str, Any]]
    # Tensors the released code keeps in its state dict but never uses in `forward` (the READMEs
    # of the parity fixtures list them): accepted, dropped and reported on import. Full-match
    # patterns.
    unused: tuple[str, ...] = ()
    # Whether the weights come in two files, the transformer and a refinement network.
    refine_file: bool = False


def tensor_shape(state: State, key: str, source: str) -> tuple[int, ...]:
    """The shape stored under `key`; CheckpointError naming it when it is absent."""
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r} (needed to infer the model's size)")
    value = state[key]
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def block_count(state: State, prefix: str, name: str, source: str) -> int:
    """How many blocks the official list `prefix` holds (`prefix.0.*` ... `prefix.{n-1}.*`)."""
    indices = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    if not indices:
        raise CheckpointError(f"{source}: no {prefix}.* keys: not a {name} checkpoint")
    return max(indices) + 1


def block_options(state: State, blocks: str, dim: int, source: str) -> dict[str, Any]:
    """`mlp_ratio` and `qkv_bias` of the official block list `blocks` (width `dim`), from block 0."""
    hidden = tensor_shape(state, f"{blocks}.0.mlp.fc1.weight", source)[0]
    return {"mlp_ratio": hidden / dim, "qkv_bias": f"{blocks}.0.attn.qkv.bias" in state}


def mlp_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`mlp_ratio` and `qkv_bias` as an official constructor takes them (its defaults: 2 and True)."""
    return {"mlp_ratio": float(kwargs.get("mlp_ratio", 2.0)), "qkv_bias": bool(kwargs.get("qkv_bias", True))}


def _values_from_shapes(
    state: State, source: str, *, name: str, blocks: str, dim_field: str, **fixed: Any
) -> tuple[dict[str, Any], int]:
    """`infer_values` of `poseformer_style_checkpoint`, keywords bound by it."""
    _, joints, dim = tensor_shape(state, "Spatial_pos_embed", source)
    values = {"depth": block_count(state, blocks, name, source), dim_field: dim, **fixed}
    return {**values, **block_options(state, blocks, dim, source)}, int(joints)


def _values_from_kwargs(kwargs: Mapping[str, Any], *, dim_field: str, mlp: bool, **fixed: Any) -> dict[str, Any]:
    """`official_values` of `poseformer_style_checkpoint`, keywords bound by it."""
    values = {dim_field: int(kwargs["embed_dim_ratio"]), "depth": int(kwargs["depth"]), **fixed}
    return {**values, **mlp_options(kwargs)} if mlp else values


def poseformer_style_checkpoint(
    prefixes: tuple[tuple[str, str], ...],
    *,
    name: str,
    blocks: str,
    dim_field: str,
    frames_at: tuple[str, int] = ("Temporal_pos_embed", 1),
    unused: tuple[str, ...] = (),
    constructor_mlp: bool = True,
    **fixed: Any,
) -> OfficialCheckpoint:
    """The spec of a lifter whose released code keeps PoseFormer's layout (MixSTE, PoseFormer,
    CrossFormer), so that one recipe reads every such checkpoint.

    Shapes: joints J and per-joint width from `Spatial_pos_embed` (1, J, c), the depth from the
    spatial block list `blocks`, MLP ratio and qkv bias from its block 0. Constructor: width
    `embed_dim_ratio`, `depth`, and `mlp_ratio` / `qkv_bias` unless `constructor_mlp` is False (a
    constructor that ignores them). The width is the config field `dim_field`; `fixed` config
    values (e.g. the variant) are added as given.
    """
    return OfficialCheckpoint(
        prefixes,
        frames_at,
        infer_values=partial(_values_from_shapes, name=name, blocks=blocks, dim_field=dim_field, **fixed),
        official_values=partial(_values_from_kwargs, dim_field=dim_field, mlp=constructor_mlp, **fixed),
        unused=unused,
    )
