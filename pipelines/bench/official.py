"""The authors' model classes, imported from a directory the user gives, built like a raylift model.

raylift never vendors the authors' code: `raylift bench fidelity` (and GPU speed comparisons) point
`--official-dir` at a checkout of the authors' repository and this module imports the class from
it. Which file and class each raylift model corresponds to:

| raylift      | repository                     | file                        | class             |
|--------------|--------------------------------|-----------------------------|-------------------|
| mixste       | JinluZhang1126/MixSTE          | common/model_cross.py       | `MixSTE2`         |
| poseformer   | zczcwh/PoseFormer              | common/model_poseformer.py  | `PoseTransformer` |
| crossformer  | mfawzy/CrossFormer             | common/model_crossformer.py | `PoseTransformer` |
| fusionformer | yuxinwei123/Fusionformer       | common/Fusionformer.py      | `Fusionformer`    |

Import shims (no official file is edited; each stub is registered only when the real module
cannot be imported, and its names raise if anything calls them):
- `symbol` (`from symbol import parameters`, Fusionformer): a stdlib module removed in Python 3.10.
- `thop` (`from thop import profile`, Fusionformer): a FLOP counter, imported but unused.
- `local_attention` (`from local_attention import LocalAttention`, MixSTE's
  `common/routing_transformer.py`): a pip package MixSTE2 never uses.
- `common/` itself is put on `sys.path` as well as the repository root, because Fusionformer.py
  says `from VIT import *`.
Every repository calls its package `common`, so any `common*` modules already imported (from
another official directory) are dropped from `sys.modules` before the import.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from preprocessing.schema import ConfigError


@dataclass(frozen=True)
class OfficialModel:
    """Where one raylift model's official class lives, and how a raylift config maps onto it."""

    module: str  # dotted module inside the repository, e.g. "common.model_cross"
    cls: str
    kwargs: Callable[[Any, int, int], dict]  # (raylift model config, frames T, joints J) -> ctor kwargs


def _mixste_kwargs(m: Any, frames: int, joints: int) -> dict:
    # MixSTE run.py: MixSTE2(num_frame, num_joints, in_chans=2, embed_dim_ratio=-cs, depth=-dep,
    # num_heads=8, mlp_ratio=2., qkv_bias=True, qk_scale=None, drop_path_rate=0.1)
    return dict(num_frame=frames, num_joints=joints, in_chans=2, embed_dim_ratio=m.dim, depth=m.depth,
                num_heads=m.heads, mlp_ratio=m.mlp_ratio, qkv_bias=m.qkv_bias, qk_scale=None,
                drop_rate=m.drop_rate, attn_drop_rate=m.attn_drop_rate, drop_path_rate=m.drop_path_rate)


def _poseformer_kwargs(m: Any, frames: int, joints: int) -> dict:
    # PoseFormer run_poseformer.py: PoseTransformer(num_frame, num_joints, in_chans=2,
    # embed_dim_ratio=32, depth=4, num_heads=8, mlp_ratio=2., qkv_bias=True, qk_scale=None,
    # drop_path_rate=0.1); CrossFormer's class takes the same arguments (most are overridden
    # inside its constructor: see ../shared/reference/parity/crossformer.README.md).
    return dict(num_frame=frames, num_joints=joints, in_chans=2, embed_dim_ratio=m.spatial_dim, depth=m.depth,
                num_heads=m.heads, mlp_ratio=m.mlp_ratio, qkv_bias=m.qkv_bias, qk_scale=None,
                drop_rate=m.drop_rate, attn_drop_rate=m.attn_drop_rate, drop_path_rate=m.drop_path_rate)


def _fusionformer_kwargs(m: Any, frames: int, joints: int) -> dict:
    # Fusionformer run.py: Fusionformer(num_frame=9, num_joints=17, in_chans=2, embed_dim_ratio=32,
    # depth=4, ...). Its `depth` sizes all four encoders (depth1..3 are accepted and unused), so the
    # official class can only express L_s == L_c.
    if m.L_s != m.L_c:
        raise ConfigError(f"model.L_s={m.L_s} and model.L_c={m.L_c}: the official Fusionformer has one "
                          "`depth` for all four encoders, so it needs L_s == L_c")
    return dict(num_frame=frames, num_joints=joints, in_chans=2, embed_dim_ratio=m.dim, depth=m.L_s,
                num_heads=m.heads, mlp_ratio=m.mlp_ratio, qkv_bias=m.qkv_bias, qk_scale=None,
                drop_rate=m.drop_rate, attn_drop_rate=m.attn_drop_rate, drop_path_rate=m.drop_path_rate)


OFFICIAL: dict[str, OfficialModel] = {
    "mixste": OfficialModel("common.model_cross", "MixSTE2", _mixste_kwargs),
    "poseformer": OfficialModel("common.model_poseformer", "PoseTransformer", _poseformer_kwargs),
    "crossformer": OfficialModel("common.model_crossformer", "PoseTransformer", _poseformer_kwargs),
    "fusionformer": OfficialModel("common.Fusionformer", "Fusionformer", _fusionformer_kwargs),
}

# Modules the authors import but never use, with the names they import from them.
_STUBS: dict[str, tuple[str, ...]] = {
    "symbol": ("parameters",),
    "thop": ("profile",),
    "local_attention": ("LocalAttention",),
}


def _unusable(module: str, name: str) -> Callable[..., Any]:
    def stub(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"{module}.{name} is an import stub registered by pipelines/bench/official.py; "
                           "install the real package if the official code needs it")

    stub.__name__ = name
    return stub


def register_stubs() -> list[str]:
    """Register stub modules for the unused imports that cannot be imported here; returns their names."""
    added = []
    for module, names in _STUBS.items():
        if module in sys.modules or importlib.util.find_spec(module) is not None:
            continue
        stub = types.ModuleType(module)
        stub.__doc__ = "import stub (pipelines/bench/official.py): the official code imports it and never uses it"
        for name in names:
            setattr(stub, name, _unusable(module, name))
        sys.modules[module] = stub
        added.append(module)
    return added


_OFFICIAL_PATHS: list[str] = []  # the sys.path entries the last official_class call added


def _file_of(official_dir: str, module: str) -> str:
    return os.path.join(official_dir, *module.split(".")) + ".py"


def official_class(model: str, official_dir: str) -> type:
    """The authors' model class for raylift model `model`, imported from `official_dir`."""
    if model not in OFFICIAL:
        raise ConfigError(f"no official class known for model {model!r}; expected one of {sorted(OFFICIAL)}")
    spec = OFFICIAL[model]
    root = os.path.abspath(os.path.expanduser(official_dir))
    path = _file_of(root, spec.module)
    if not os.path.isfile(path):
        raise ConfigError(f"--official-dir {official_dir}: {path} not found (expected the authors' "
                          f"{model} repository with {spec.module.replace('.', '/')}.py, class {spec.cls})")
    register_stubs()
    from models.timm_loader import import_timm

    import_timm()  # the official files import timm, which needs this next to a CPU-only torch
    for name in [n for n in sys.modules if n == "common" or n.startswith("common.")]:
        del sys.modules[name]  # every repository calls its package `common`
    # Drop the folders an earlier call added: Fusionformer's `common/` is a regular package (it has
    # an __init__.py), which Python prefers to the others' namespace `common/` wherever it sits.
    for entry in _OFFICIAL_PATHS:
        while entry in sys.path:
            sys.path.remove(entry)
    _OFFICIAL_PATHS[:] = [os.path.join(root, "common"), root]
    sys.path[:0] = _OFFICIAL_PATHS
    importlib.invalidate_caches()
    module = importlib.import_module(spec.module)
    if not os.path.samefile(getattr(module, "__file__", ""), path):
        raise ConfigError(f"--official-dir {official_dir}: {spec.module} resolved to {module.__file__}, not {path}")
    cls = getattr(module, spec.cls, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{path} has no class {spec.cls}")
    return cls


def official_kwargs(model_cfg: Any, frames: int, joints: int = 17) -> dict:
    """The official constructor's keyword arguments for a raylift model config."""
    return OFFICIAL[model_cfg.name].kwargs(model_cfg, frames, joints)


def build_official(model_cfg: Any, official_dir: str, frames: int, joints: int = 17) -> torch.nn.Module:
    """The authors' model with the same hyper-parameters as raylift's `model_cfg` at T = `frames`."""
    cls = official_class(model_cfg.name, official_dir)
    return cls(**official_kwargs(model_cfg, frames, joints))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
