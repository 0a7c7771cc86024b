"""Model registry: `name` in the `model:` config section -> config dataclass and model class.

Each model module defines a config dataclass (with a `name` field fixed to its registry name) and
an `nn.Module` built as `Model(cfg, frames=T, joints=J)`. Model classes declare `output_mode`
("seq2seq": (B, T, J, 3) out; "seq2frame": (B, 1, J, 3) out) and `multiview` (input
(B, T, V, J, 2)). The window length T is not a model-config field: it comes from
`data.windows.frames`, so data and model can never disagree about it.
"""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# name -> (module, model class, config class)
MODELS: dict[str, tuple[str, str, str]] = {
    "mixste": ("models.mixste", "MixSTE", "MixSTEConfig"),
    "poseformer": ("models.poseformer", "PoseFormer", "PoseFormerConfig"),
    "crossformer": ("models.crossformer", "CrossFormer", "CrossFormerConfig"),
    "fusionformer": ("models.fusionformer", "Fusionformer", "FusionformerConfig"),
    "multiview": ("models.multiview", "MultiViewRelationTransformer", "MultiViewConfig"),
}

# Image -> 2D keypoint models (stage 1 of a two-stage system; class attributes `input_kind =
# "images"`, `output_kind = "keypoints_2d"`). Built and configured like the lifters, but kept out
# of MODELS: the keypoint tools (training data, evaluation, inference, `models summary`, benches)
# iterate MODELS and feed 2D keypoints.
IMAGE_MODELS: dict[str, tuple[str, str, str]] = {
    "mpstr": ("models.mpstr", "MPSTR", "MPSTRConfig"),
}


def _lookup(name: str, where: str = "model.name") -> tuple[type, type]:
    entry = MODELS.get(name) or IMAGE_MODELS.get(name)
    if entry is None:
        raise ValueError(f"{where}: unknown model {name!r} (expected one of {', '.join([*MODELS, *IMAGE_MODELS])})")
    module, model_cls, cfg_cls = entry
    mod = importlib.import_module(module)
    return getattr(mod, model_cls), getattr(mod, cfg_cls)


def model_class(name: str) -> type:
    return _lookup(name)[0]


def config_class(name: str) -> type:
    return _lookup(name)[1]


def parse_model_config(value: Any, where: str = "model") -> Any:
    """Build the model's config dataclass from a mapping; `name` picks the model."""
    from preprocessing.schema import ConfigError, parse_dataclass

    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'name' key")
    name = value.get("name", "mixste")
    try:
        cfg_cls = config_class(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return parse_dataclass(cfg_cls, {**value, "name": name}, where)


def build_model(cfg: Any, frames: int, joints: int = 17) -> nn.Module:
    """Instantiate the model described by `cfg` for windows of `frames` frames and `joints` joints."""
    return model_class(cfg.name)(cfg, frames=frames, joints=joints)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_image_model(model_cls: type) -> bool:
    """True for models that take image crops (class attribute `input_kind = "images"`), not 2D keypoints."""
    return getattr(model_cls, "input_kind", "keypoints") == "images"
