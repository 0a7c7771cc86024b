"""Multi-view spatial-temporal relation transformer, on keypoints.

After "Towards Precise 3D Human Pose Estimation with Multi-Perspective Spatial-Temporal Relational
Transformers" (Jiao et al., 2024). The paper works on images; here its structure applies to 2D
keypoints from V synchronised cameras. Seq2seq: x (B, T, V, J, 2) -> (B, T, V, J, 3), each view's
camera-space root-relative 3D pose (metres).

- **Spatial module** (`SpatialModule`), per image (frame t, view v), weights shared across views:
  Linear(2 -> c) joint embedding + learned joint positions, `spatial_depth` pre-norm blocks with
  the joints as tokens, LayerNorm. The paper's (shifted-)window attention is an option:
  `spatial_window = w > 0` restricts attention to groups of w consecutive joints, and every second
  block shifts the grouping by w // 2 (Swin's shifted windows in 1D; the end groups are shorter
  rather than wrapped around, so no padding or masking of fake tokens is needed). `0` = global.
- **Image relations module** (`ImageRelationModule`): each image becomes one compact token (its J·c
  features, as the paper aggregates each frame into a token), to which the learned frame embedding
  E_time[t] and the learned per-camera embedding E_3D[v] are added. `relation_depth` pairs of
  blocks then alternate temporal attention (the T frames of one view) and cross-view attention
  (the V views of one frame).
- **Head**: LayerNorm + Linear(J·c -> 3J) per image.

V may be anything from 1 to `max_views` at run time (E_3D has `max_views` rows; view v uses row v,
so a fixed camera order gives each camera its own embedding). With `view_embedding: false` the
model has no notion of camera identity and is exactly permutation-equivariant over views.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.layers import Attention, Block, LayerNorm, PoseHead, drop_path_schedule


@dataclass
class MultiViewConfig:
    """Multi-view relation transformer hyper-parameters (T from `data.windows.frames`)."""

    name: str = "multiview"
    dim: int = 32  # per-joint channels c; image-token width J*c
    spatial_depth: int = 4
    relation_depth: int = 4  # (temporal, cross-view) block pairs
    heads: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    spatial_window: int = 0  # joints per attention window in the spatial module; 0 = global attention
    max_views: int = 4  # rows of the per-camera embedding E_3D
    view_embedding: bool = True  # add E_3D (camera identity); false: permutation-equivariant over views
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    def validate(self) -> None:
        if self.name != "multiview":
            raise ValueError(f"name: got {self.name!r}, expected 'multiview'")
        for key in ("dim", "spatial_depth", "relation_depth", "heads", "max_views"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected >= 1")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.spatial_window < 0:
            raise ValueError(f"spatial_window: got {self.spatial_window}, expected >= 0 (0 = global)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: got {self.mlp_ratio}, expected > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected a probability in [0, 1)")


def joint_windows(joints: int, window: int, shift: int) -> torch.Tensor:
    """(J, J) bool mask: joints i and j attend to each other iff (i + shift) // w == (j + shift) // w."""
    group = (torch.arange(joints) + shift) // window
    return group[:, None] == group[None, :]


class WindowAttention(Attention):
    """`Attention` (same parameters) restricted by a fixed (N, N) boolean mask, still through SDPA."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float, mask: torch.Tensor):
        super().__init__(dim, heads, qkv_bias, attn_drop, proj_drop)
        self.register_buffer("mask", mask, persistent=False)  # (N, N), True = may attend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, C/H)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))  # (B, N, C)


class SpatialModule(nn.Module):
    """(N, J, 2) -> (N, J, c), N = B*T*V images; optional (shifted) joint-window attention."""

    def __init__(self, joints: int, cfg: MultiViewConfig) -> None:
        super().__init__()
        c = cfg.dim
        self.embed = nn.Linear(2, c)
        self.pos = nn.Parameter(torch.zeros(1, joints, c))  # (1, J, c)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList()
        for i, rate in enumerate(drop_path_schedule(cfg.drop_path_rate, cfg.spatial_depth)):
            blk = Block(c, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate, rate)
            if cfg.spatial_window:
                shift = (cfg.spatial_window // 2) * (i % 2)  # shifted windows in every second block
                mask = joint_windows(joints, cfg.spatial_window, shift)
                blk.attn = WindowAttention(c, cfg.heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate, mask)
            self.blocks.append(blk)
        self.norm = LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.embed(x) + self.pos)  # (N, J, c)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class ImageRelationModule(nn.Module):
    """(B, T, V, D) image tokens -> (B, T, V, D): E_time + E_3D, then temporal / cross-view block pairs."""

    def __init__(self, frames: int, width: int, cfg: MultiViewConfig) -> None:
        super().__init__()
        self.time_embed = nn.Parameter(torch.zeros(1, frames, 1, width))  # E_time (1, T, 1, D)
        self.view_embed = (
            nn.Parameter(torch.zeros(1, 1, cfg.max_views, width)) if cfg.view_embedding else None
        )  # E_3D (1, 1, max_views, D)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = drop_path_schedule(cfg.drop_path_rate, 2 * cfg.relation_depth)
        block = partial(Block, width, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate)
        self.temporal_blocks = nn.ModuleList(block(r) for r in rates[0::2])  # frames of one view
        self.view_blocks = nn.ModuleList(block(r) for r in rates[1::2])  # views of one frame
        self.norm = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, v = x.shape[1], x.shape[2]
        x = x + self.time_embed
        if self.view_embed is not None:
            x = x + self.view_embed[:, :, :v]
        x = self.pos_drop(x)  # (B, T, V, D)
        for temporal, cross_view in zip(self.temporal_blocks, self.view_blocks):
            x = rearrange(temporal(rearrange(x, "b t v d -> (b v) t d")), "(b v) t d -> b t v d", v=v)
            x = rearrange(cross_view(rearrange(x, "b t v d -> (b t) v d")), "(b t) v d -> b t v d", t=t)
        return self.norm(x)


class MultiViewRelationTransformer(nn.Module):
    """x (B, T, V, J, 2) normalised 2D from V cameras -> (B, T, V, J, 3) per-view root-relative 3D."""

    output_mode = "seq2seq"
    multiview = True

    def __init__(self, cfg: MultiViewConfig, frames: int, joints: int = 17) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.frames, self.joints = cfg, int(frames), int(joints)
        width = joints * cfg.dim  # divisible by heads because dim is
        self.spatial = SpatialModule(joints, cfg)
        self.relations = ImageRelationModule(frames, width, cfg)
        self.head = PoseHead(width, joints * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, v, j, _ = x.shape
        if t != self.frames or j != self.joints:
            raise ValueError(f"multiview model built for T={self.frames}, J={self.joints}; got input {tuple(x.shape)}")
        if v > self.cfg.max_views and self.relations.view_embed is not None:
            raise ValueError(f"got {v} views, the model has E_3D for at most max_views={self.cfg.max_views}")
        f = self.spatial(rearrange(x, "b t v j c -> (b t v) j c"))  # (B*T*V, J, c)
        f = rearrange(f, "(b t v) j c -> b t v (j c)", b=b, t=t)  # (B, T, V, J*c) image tokens
        f = self.head(self.relations(f))  # (B, T, V, J*3)
        return rearrange(f, "b t v (j c) -> b t v j c", j=j)  # (B, T, V, J, 3)
