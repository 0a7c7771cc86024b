"""The optimiser's parameter groups: weight decay groups (`train.decay_groups`) and layer-wise lr
decay (`train.layer_decay`), both built by timm's `timm.optim` helpers.

- `decay_groups: all` without layer decay: one group of every trainable parameter, what the
  lifters' authors pass to Adam/AdamW (and what checkpoints written before these keys hold).
- `decay_groups: skip_1d_and_bias`: no weight decay for 1-D parameters (norm weights, biases) and
  any parameter named `*.bias`; the rule of WUJINHUAN/3D-human-pose utils/optimizer.py
  `set_weight_decay`, which timm's `param_groups_weight_decay` implements the same way.
- `layer_decay: d`: timm's `param_groups_layer_decay` (BEiT's recipe) over the layers of the
  model's timm `group_matcher`; layer i of L gets `lr_scale = d ** (L - 1 - i)`, parameters no
  layer matches (a head) the last layer's scale 1. A model without a `group_matcher` of its own
  may hold one child that has one (MPSTR's timm Swin `backbone`): its layers are then the model's.

Every group's `lr` is `train.lr * lr_scale`, so per-epoch torch schedulers scale each group from
there; timm's per-step scheduler multiplies its value by `lr_scale` itself (schedules.py).
"""
from __future__ import annotations

import re
from typing import Any

from torch import nn

from models.timm_loader import import_timm
from pipelines.config import TrainConfig
from preprocessing.schema import ConfigError


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for `train.decay_groups` and `train.layer_decay`.

    Groups without their own `weight_decay` use the optimiser's (`train.weight_decay`).
    """
    skip = train.decay_groups == "skip_1d_and_bias"
    if train.layer_decay is None:
        if not skip:
            return [{"params": [p for p in model.parameters() if p.requires_grad]}]
        import_timm()
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(model, train.weight_decay, weight_decay_exclude_1d=True)
    import_timm()
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(
        _LayerGrouped(model, _group_matcher(model)), weight_decay=train.weight_decay,
        no_weight_decay_list=("*.bias",) if skip else (), weight_decay_exclude_1d=skip,
        layer_decay=train.layer_decay,
    )
    for group in groups:
        group["lr"] = train.lr * group["lr_scale"]
    return groups


class _LayerGrouped:
    """What timm's `param_groups_layer_decay` reads of a model (`named_parameters`,
    `group_matcher`), with the matcher `_group_matcher` found for it."""

    def __init__(self, model: nn.Module, matcher: dict[str, Any]) -> None:
        self.model, self.matcher = model, matcher

    def named_parameters(self, *args: Any, **kwargs: Any):
        return self.model.named_parameters(*args, **kwargs)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return self.matcher


def _group_matcher(model: nn.Module) -> dict[str, Any]:
    """The fine-grained timm group matcher of `model`, or of its one child that has one (its
    patterns prefixed with the child's name); a ConfigError naming train.layer_decay otherwise."""
    if hasattr(model, "group_matcher"):
        return model.group_matcher(coarse=False)
    owners = [(name, child) for name, child in model.named_children() if hasattr(child, "group_matcher")]
    if len(owners) != 1:
        found = f"{len(owners)} children with one" if owners else "none in its children either"
        raise ConfigError(f"train.layer_decay needs a model with layer groups (a timm group_matcher): "
                          f"{type(model).__name__} has no group_matcher ({found}); expected null")
    name, child = owners[0]
    return {key: _prefixed(spec, f"{name}.") for key, spec in child.group_matcher(coarse=False).items()}


def _prefixed(spec: Any, prefix: str) -> Any:
    """A timm matcher spec (a regex, a list of (regex, suffix) pairs, or None) for parameter names
    under `prefix`."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return _prefixed_regex(spec, prefix)
    return [(_prefixed_regex(regex, prefix), suffix) for regex, suffix in spec]


def _prefixed_regex(regex: str, prefix: str) -> str:
    """`regex` (matched at the start of a name, as timm does) for names starting with `prefix`."""
    return re.escape(prefix) + "(?:" + regex.removeprefix("^") + ")"

