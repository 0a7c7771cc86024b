"""MPSTR stage 1: images -> 2D keypoints with a Swin spatial module and an image-relations module.

After "Towards Precise 3D Human Pose Estimation with Multi-Perspective Spatial-Temporal Relational
Transformers" (Jiao et al., arXiv 2401.16700) and its authors' code (WUJINHUAN/3D-human-pose,
`models/model.py` class `SwinPose`).

- **Spatial module**: timm's `SwinTransformer` (W-MSA / SW-MSA, patch merging), any size from a
  toy one to Swin-T/B. Each image becomes one token: final LayerNorm + global average pooling over
  the patch grid (width `embed_dim * 2**(stages-1)`, 768 for Swin-T), optionally projected to
  `token_dim`. ImageNet weights come only from a local file (`pretrained`); never downloaded.
  `token_pool: flatten` (raylift's option, not the paper's or the code's) instead flattens the
  final-stage grid and projects it to `token_dim`: average pooling makes the token (nearly)
  invariant to where things are in the crop, and at CPU scale (48-px crops, a tiny two-stage
  Swin) neither the Swin nor a small CNN learned past the mean pose through it, while both did
  with the grid kept (README, "Two stages", the token pool).
- **Input**: crops in [0, 1] are normalised inside the model with the ImageNet mean and std
  (`input_norm: imagenet`, the authors' `datasets/COCO_regression.py` transform, and what
  ImageNet-pretrained weights expect), so a checkpoint needs no separate preprocessing step.
- **Image-relations module** (`variant: paper`, paper eqs. (10)-(14)): learned frame embedding
  E_time is added and a temporal transformer attends over the T frames of each view; learned
  per-camera embedding E_3D is added and a cross-view transformer attends over the V views of each
  instant; pre-norm blocks, then a final LayerNorm. `baseline: true` drops this module (the
  paper's baseline): tokens go straight to the head. `masked_relations: true` keeps the module,
  every parameter included, but masks its attention so each image attends only to itself: the
  control that separates "cross-image relations help" from "a bigger model helps".
- **Head**: LayerNorm (eps 1e-5) + Linear(D -> 2J) per image: keypoints in pixels of the crop
  (its bias starts at the crop centre; checkpoints overwrite it).

`variant: official` reproduces `SwinPose` exactly, including its quirks: no cross-view module, no
time embedding (its positional embedding is a fresh zero tensor), and "the batch is the sequence":
the N images of ONE call form the token sequence of a 4-block ViT head (8 heads, MLP ratio 2,
LayerNorm eps 1e-6), so each prediction depends on the other images of the call. It takes
(N, 3, H, W) -> (N, J, 2); given paper-style (B, T, V, 3, H, W) it flattens all B·T·V images into
that one sequence (in b, t, v order) and returns (B, T, V, J, 2). Its checkpoints import through
`models.convert.convert_mpstr_state_dict`, with the key tables at the end of this file.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from einops import rearrange
from torch import nn

from models.checkpoint import CheckpointError
from models.layers import Block, LayerNorm, PoseHead, drop_path_schedule


@dataclass
class MPSTRConfig:
    """MPSTR hyper-parameters. Defaults: Swin-T at 224x224, 4 + 4 relation blocks, 4 views.

    The number of frames T comes from `data.windows.frames` and the joints J from the data layout
    (`build_model(cfg, frames, joints)`), as for every raylift model.
    """

    name: str = "mpstr"
    variant: Literal["paper", "official"] = "paper"
    baseline: bool = False  # paper's baseline: no image-relations module
    masked_relations: bool = False  # ablation: the module with each image attending only to itself
    # Spatial module (timm SwinTransformer)
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pretrained: Optional[str] = None  # local ImageNet Swin checkpoint (timm or Microsoft layout)
    timm_variant: str = "swin_tiny_patch4_window7_224"  # the timm model whose pretrained config reads `pretrained`
    input_norm: Literal["imagenet", "none"] = "imagenet"  # crops in [0, 1] -> (x - mean) / std (module doc)
    # Image tokens and relations module
    token_dim: Optional[int] = None  # None: the Swin's final width (768 for Swin-T); else a Linear projection
    token_pool: Literal["avg", "flatten"] = "avg"  # avg: paper and code; flatten: raylift's (module doc)
    relation_depth: int = 4  # blocks of the temporal and of the cross-view transformer (each)
    relation_heads: int = 8
    relation_mlp_ratio: float = 2.0
    views: int = 4  # rows of E_3D: views per instant (paper: 4 synchronised cameras)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1  # Swin stochastic depth (authors' default)
    relation_drop_path_rate: float = 0.2  # relations-module stochastic depth (authors' PoseTransformer)

    @property
    def swin_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def width(self) -> int:
        return self.token_dim or self.swin_width

    @property
    def final_grid(self) -> int:
        """Side of the last Swin stage's patch grid (7 for Swin-T at 224)."""
        return self.img_size // self.patch_size // 2 ** (len(self.depths) - 1)

    @property
    def pooled_width(self) -> int:
        """Features per image before the token projection."""
        return self.swin_width * (self.final_grid**2 if self.token_pool == "flatten" else 1)

    def validate(self) -> None:
        if self.name != "mpstr":
            raise ValueError(f"name: got {self.name!r}, expected 'mpstr'")
        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "window_size", "relation_depth",
                    "relation_heads", "views"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected >= 1")
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} need the same, non-zero length")
        if min(self.depths) < 1 or min(self.num_heads) < 1:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must be positive")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i} width {self.embed_dim * 2**i} is not divisible by num_heads[{i}]={heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.token_dim is not None and self.token_dim < 1:
            raise ValueError(f"token_dim: got {self.token_dim}, expected >= 1 or null")
        if self.token_pool not in ("avg", "flatten"):
            raise ValueError(f"token_pool: got {self.token_pool!r}, expected 'avg' or 'flatten'")
        if self.token_pool == "flatten":
            if self.token_dim is None:
                raise ValueError("token_pool: flatten needs token_dim (the flattened grid is projected to it)")
            if (self.img_size // self.patch_size) % 2 ** (len(self.depths) - 1):
                raise ValueError(f"token_pool: flatten needs a patch grid ({self.img_size // self.patch_size}) "
                                 f"divisible by 2^{len(self.depths) - 1} (the patch mergings)")
        if self.width % self.relation_heads:
            raise ValueError(f"token width {self.width} is not divisible by relation_heads {self.relation_heads}")
        if self.input_norm not in ("imagenet", "none"):
            raise ValueError(f"input_norm: got {self.input_norm!r}, expected 'imagenet' or 'none'")
        if self.masked_relations and self.baseline:
            raise ValueError("masked_relations: the baseline has no relations module to mask; set one of the two")
        if self.variant == "official":
            if self.masked_relations:
                raise ValueError("masked_relations: only the paper variant has the image-relations module")
            if self.baseline:
                raise ValueError("baseline: the official variant always has its temporal head; use variant 'paper'")
            if self.token_dim not in (None, self.swin_width):
                raise ValueError(f"token_dim: the official variant feeds the Swin's {self.swin_width}-d tokens "
                                 "to its head unprojected; leave it null")
            if self.token_pool != "avg":
                raise ValueError("token_pool: the official variant average-pools, as SwinPose does")
        for key in ("mlp_ratio", "relation_mlp_ratio"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate", "relation_drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected a probability in [0, 1)")


def build_swin(cfg: MPSTRConfig) -> nn.Module:
    """timm SwinTransformer returning one pooled token per image: (N, 3, H, W) -> (N, swin_width),
    or with `token_pool: flatten` its final-stage grid (N, g, g, swin_width).

    `num_classes=0` removes the classifier (timm's `head.fc` is Identity; average pooling stays
    unless `global_pool=""`).
    Stage windows shrink to the grid where the grid is not larger (no shift there), as in the
    original Swin; `strict_img_size` keeps the fixed input size the attention masks were built for.
    With `pretrained`, timm itself loads the local file (`pretrained_cfg_overlay=dict(file=...)`,
    the `timm_variant`'s checkpoint filter: timm or Microsoft layout, safetensors or torch; read
    with `weights_only=True`; nothing is ever downloaded), strictly: a backbone tensor the file lacks
    is an error naming the file.
    """
    from models.timm_loader import import_timm

    import_timm()
    import timm

    kwargs = dict(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=0,
        global_pool="avg" if cfg.token_pool == "avg" else "",  # "": the (N, g, g, C) grid
        embed_dim=cfg.embed_dim,
        depths=tuple(cfg.depths),
        num_heads=tuple(cfg.num_heads),
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        proj_drop_rate=cfg.drop_rate,
        attn_drop_rate=cfg.attn_drop_rate,
        drop_path_rate=cfg.drop_path_rate,
    )
    if not cfg.pretrained:
        from timm.models.swin_transformer import SwinTransformer

        return SwinTransformer(**kwargs)
    if not os.path.isfile(cfg.pretrained):
        raise CheckpointError(f"model.pretrained: {cfg.pretrained} is not a file (ImageNet Swin weights, timm or "
                              "Microsoft layout)")
    from timm.models import load_state_dict
    from timm.models.swin_transformer import checkpoint_filter_fn

    try:
        swin = timm.create_model(cfg.timm_variant, pretrained=True, pretrained_cfg_overlay={"file": cfg.pretrained},
                                 **kwargs)
        # timm loads non-strictly when the classifier is dropped (num_classes=0): check coverage here.
        covered = set(checkpoint_filter_fn(load_state_dict(cfg.pretrained), swin))
    except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"model.pretrained: {cfg.pretrained} does not fit the configured Swin "
                              f"({cfg.timm_variant}): {first}") from None
    missing = sorted(set(swin.state_dict()) - covered)
    if missing:
        raise CheckpointError(f"model.pretrained: {cfg.pretrained} lacks {len(missing)} tensors of the configured "
                              f"Swin ({cfg.timm_variant}), missing e.g. {missing[:3]}")
    return swin


def input_stats(cfg: MPSTRConfig, swin: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that `input_norm` applies: those of the pretrained weights' timm
    config when loaded, else ImageNet's (the authors' transform); identity for `none`."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if cfg.input_norm == "none":
        return (0.0,) * cfg.in_chans, (1.0,) * cfg.in_chans
    pretrained = getattr(swin, "pretrained_cfg", None) or {}
    mean = tuple(pretrained.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(pretrained.get("std", IMAGENET_DEFAULT_STD))
    if len(mean) != cfg.in_chans:
        raise ValueError(f"input_norm: imagenet has {len(mean)} channel statistics, in_chans is {cfg.in_chans}; "
                         "use input_norm: none")
    return mean, std


class SequenceRelations(nn.Module):
    """Official head body: pre-norm blocks over ONE sequence of image tokens, then LayerNorm.

    (1, N, D) -> (1, N, D). No positional embedding (the authors add zeros).
    """

    def __init__(self, cfg: MPSTRConfig) -> None:
        super().__init__()
        d = cfg.width
        rates = drop_path_schedule(cfg.relation_drop_path_rate, cfg.relation_depth)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.temporal_blocks = nn.ModuleList(
            Block(d, cfg.relation_heads, cfg.relation_mlp_ratio, True, cfg.drop_rate, cfg.attn_drop_rate, r)
            for r in rates
        )
        self.norm = LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, N, D)
        x = self.pos_drop(x)
        for blk in self.temporal_blocks:
            x = blk(x)
        return self.norm(x)


class ImageRelations(nn.Module):
    """Paper image-relations module: (B, T, V, D) -> (B, T, V, D).

    x + E_time -> temporal transformer over the T frames of each view -> + E_3D -> cross-view
    transformer over the V views of each instant -> LayerNorm. View v uses row v of E_3D, so a
    fixed camera order gives each camera its own embedding (the model can tell views apart).
    `masked_relations`: every attention sees only its own token (no image sees another).
    """

    def __init__(self, cfg: MPSTRConfig, frames: int) -> None:
        super().__init__()
        d = cfg.width
        self.time_embed = nn.Parameter(torch.zeros(1, frames, 1, d))  # E_time (1, T, 1, D)
        self.view_embed = nn.Parameter(torch.zeros(1, 1, cfg.views, d))  # E_3D (1, 1, V, D)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.view_embed, std=0.02)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = drop_path_schedule(cfg.relation_drop_path_rate, 2 * cfg.relation_depth)

        def block(rate: float) -> Block:
            return Block(d, cfg.relation_heads, cfg.relation_mlp_ratio, True, cfg.drop_rate, cfg.attn_drop_rate, rate,
                         self_only=cfg.masked_relations)

        self.temporal_blocks = nn.ModuleList(block(r) for r in rates[: cfg.relation_depth])
        self.view_blocks = nn.ModuleList(block(r) for r in rates[cfg.relation_depth :])
        self.norm = LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, v, _ = x.shape
        x = rearrange(self.pos_drop(x + self.time_embed), "b t v d -> (b v) t d")
        for blk in self.temporal_blocks:
            x = blk(x)  # (B*V, T, D): frames of one view
        x = rearrange(x, "(b v) t d -> b t v d", v=v)
        x = rearrange(self.pos_drop(x + self.view_embed[:, :, :v]), "b t v d -> (b t) v d")
        for blk in self.view_blocks:
            x = blk(x)  # (B*T, V, D): views of one instant
        return self.norm(rearrange(x, "(b t) v d -> b t v d", b=b))


class MPSTR(nn.Module):
    """Images -> 2D keypoints (pixels of the input crop). Images are crops in [0, 1] (`normalise`).

    paper:    x (B, T, V, 3, H, W) -> (B, T, V, J, 2)
    official: x (N, 3, H, W) -> (N, J, 2), the N images being one sequence; (B, T, V, 3, H, W)
              is flattened into one sequence of B·T·V images and reshaped back to (B, T, V, J, 2).
    """

    output_mode = "seq2seq"
    multiview = True
    input_kind = "images"  # the lifters take keypoints; this model takes image crops
    output_kind = "keypoints_2d"  # and predicts 2D keypoints, not 3D joints

    def __init__(self, cfg: MPSTRConfig, frames: int, joints: int = 17) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.frames, self.joints = cfg, int(frames), int(joints)
        self.backbone = build_swin(cfg)
        mean, std = input_stats(cfg, self.backbone)
        self.register_buffer("input_mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)  # (C, 1, 1)
        self.register_buffer("input_std", torch.tensor(std).view(-1, 1, 1), persistent=False)
        self.token_proj = nn.Linear(cfg.pooled_width, cfg.width) if cfg.width != cfg.pooled_width else nn.Identity()
        self.relations: Optional[nn.Module]
        if cfg.variant == "official":
            self.relations = SequenceRelations(cfg)
        else:
            self.relations = None if cfg.baseline else ImageRelations(cfg, self.frames)
        self.head = PoseHead(cfg.width, joints * 2)
        # Keypoints are regressed in crop pixels: start every prediction at the crop centre rather
        # than at its corner (0, 0), which an optimiser stepping ~lr per step takes thousands of
        # steps to leave. Loaded checkpoints (the authors' included) overwrite it.
        nn.init.constant_(self.head.proj.bias, cfg.img_size / 2)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Crops in [0, 1] (..., C, H, W) -> the backbone's input scale (`input_norm`)."""
        return (images - self.input_mean) / self.input_std

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W) -> (N, D): one pooled (or flattened) and projected token per image."""
        return self.token_proj(self.backbone(images).flatten(1))  # avg: (N, C); flatten: (N, g, g, C) -> (N, g·g·C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.variant == "official":
            return self._forward_official(x)
        if x.ndim != 6:
            raise ValueError(f"mpstr expects images (B, T, V, C, H, W); got {tuple(x.shape)}")
        b, t, v = x.shape[:3]
        if t != self.frames:
            raise ValueError(f"mpstr built for T={self.frames} frames; got input {tuple(x.shape)}")
        if v > self.cfg.views:
            raise ValueError(f"got {v} views, the model has E_3D for at most views={self.cfg.views}")
        f = self.tokens(self.normalise(rearrange(x, "b t v c h w -> (b t v) c h w")))  # (B*T*V, D)
        f = rearrange(f, "(b t v) d -> b t v d", b=b, t=t)  # (B, T, V, D)
        if self.relations is not None:
            f = self.relations(f)
        return rearrange(self.head(f), "b t v (j c) -> b t v j c", c=2)  # (B, T, V, J, 2)

    def _forward_official(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (4, 6):
            raise ValueError(f"mpstr (official) expects (N, C, H, W) or (B, T, V, C, H, W); got {tuple(x.shape)}")
        lead = x.shape[:-3]  # (N,) or (B, T, V)
        f = self.tokens(self.normalise(x.reshape(-1, *x.shape[-3:])))  # (N, D), N = all images of the call
        f = self.relations(f[None])[0]  # one sequence: (1, N, D) -> (N, D)
        return self.head(f).reshape(*lead, self.joints, 2)  # (N, J, 2) or (B, T, V, J, 2)


# --- The authors' checkpoints (`SwinPose`, WUJINHUAN/3D-human-pose) ------------------------------
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
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("backbone.", "backbone."),
    ("keypoint_head.blocks.", "relations.temporal_blocks."),
    ("keypoint_head.Temporal_norm.", "relations.norm."),
    ("keypoint_head.head.0.", "head.norm."),
    ("keypoint_head.head.1.", "head.proj."),
)
# Official keys dropped on import (full-match patterns): the config-derived buffers, then the
# tensors SwinPose never uses.
OFFICIAL_UNUSED: tuple[str, ...] = (
    r"(.*\.)?(relative_position_index|attn_mask)",
    r"backbone\.head\..*",
    r"keypoint_head\.Temporal_pos_embed.*",
    r"keypoint_head\.weighted_mean\..*",
)


def official_downsample_key(key: str) -> str:
    """A renamed key with the original Swin's PatchMerging moved to timm's place (stage i -> i+1)."""
    return re.sub(r"^backbone\.layers\.(\d+)\.downsample\.",
                  lambda m: f"backbone.layers.{int(m.group(1)) + 1}.downsample.", key)


def official_config(backbone: dict[str, Any], joints: int = 17) -> MPSTRConfig:
    """raylift `MPSTRConfig` (variant official) from the authors' `cfg.model['backbone']` dict.

    Missing entries take `SwinTransformerspace`'s defaults (Swin-T, 224, window 7), as their
    `configs/swin.py` does. The head is always `PoseTransformer()`: 4 blocks, 8 heads, MLP ratio 2,
    drop path 0.2; its width is the backbone's final width.
    """
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
