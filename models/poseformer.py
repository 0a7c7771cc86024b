"""PoseFormer: 3D Human Pose Estimation with Spatial and Temporal Transformers (Zheng et al., ICCV 2021).

Seq2frame. The spatial transformer treats the J joints of each frame as tokens (Linear 2 -> c,
learned joint positions, `depth` blocks, LayerNorm); each frame's J·c features are flattened into
one frame token of width C = J·c. The temporal transformer adds learned frame positions and runs
`depth` blocks over the T frame tokens; a learned weighted mean over frames (Conv1d(T, 1, 1))
collapses them into one vector, and a head (LayerNorm + Linear C -> 3J) regresses the centre
frame's pose. Module layout and operation order follow the released `PoseTransformer` exactly so
its checkpoints map 1:1 (`models/convert.py`).

Defaults are the paper's: c=32, 4 + 4 blocks, 8 heads, MLP ratio 2, drop-path 0 -> 0.1:
9,563,645 / 9,573,455 / 9,602,885 parameters at T = 9 / 27 / 81 (J=17).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from einops import rearrange
from torch import nn

from models.layers import Block, PoseHead, drop_path_schedule
from models.official import poseformer_style_checkpoint


@dataclass
class PoseFormerConfig:
    """PoseFormer hyper-parameters (the receptive field T comes from `data.windows.frames`)."""

    name: str = "poseformer"
    spatial_dim: int = 32  # per-joint channels (official `embed_dim_ratio`); temporal width = J * this
    depth: int = 4  # blocks in the spatial and in the temporal transformer (each)
    heads: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    def validate(self) -> None:
        if self.name != "poseformer":
            raise ValueError(f"name: got {self.name!r}, expected 'poseformer'")
        if self.spatial_dim < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(
                f"spatial_dim, depth and heads must be positive (got {self.spatial_dim}, {self.depth}, {self.heads})"
            )
        if self.spatial_dim % self.heads:
            raise ValueError(f"spatial_dim {self.spatial_dim} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: got {self.mlp_ratio}, expected > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected a probability in [0, 1)")


class PoseFormer(nn.Module):
    """x (B, T, J, 2) normalised 2D keypoints -> (B, 1, J, 3) 3D pose of the centre frame (metres)."""

    output_mode = "seq2frame"
    multiview = False

    def __init__(
        self,
        cfg: PoseFormerConfig,
        frames: int,
        joints: int = 17,
        eps: float = 1e-6,
        layer_scale: Optional[float] = None,
        frame_positions: bool = True,
    ) -> None:
        """`eps`, `layer_scale` and `frame_positions` are for descendants (CrossFormer's released
        code): LayerNorm epsilon, LayerScale on the blocks' residuals, and one learned position per
        frame (True, PoseFormer) or a single vector added to every frame (False)."""
        super().__init__()
        cfg.validate()
        self.cfg, self.frames, self.joints = cfg, int(frames), int(joints)
        c, width = cfg.spatial_dim, cfg.spatial_dim * joints
        rates = drop_path_schedule(cfg.drop_path_rate, cfg.depth)

        def block(dim: int, rate: float) -> Block:
            return Block(dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate, rate,
                         eps=eps, layer_scale=layer_scale)

        # Spatial transformer: joints of one frame as tokens.
        self.joint_embed = nn.Linear(2, c)
        self.spatial_pos = nn.Parameter(torch.zeros(1, joints, c))  # (1, J, c), zero-init as official
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.spatial_blocks = nn.ModuleList(block(c, r) for r in rates)
        self.spatial_norm = nn.LayerNorm(c, eps=eps)
        # Temporal transformer: frames as tokens of width J * c.
        # (1, T, J*c) one position per frame, or (1, J*c) one vector for all frames (as CrossFormer's code)
        self.temporal_pos = nn.Parameter(torch.zeros((1, frames, width) if frame_positions else (1, width)))
        self.temporal_blocks = nn.ModuleList(block(width, r) for r in rates)
        self.temporal_norm = nn.LayerNorm(width, eps=eps)
        self.frame_weights = nn.Conv1d(frames, 1, kernel_size=1)  # learned weighted mean over T
        self.head = PoseHead(width, joints * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, j, _ = x.shape
        if t != self.frames or j != self.joints:
            raise ValueError(f"PoseFormer built for T={self.frames}, J={self.joints}; got input {tuple(x.shape)}")
        x = rearrange(x, "b t j c -> (b t) j c")
        x = self.pos_drop(self.joint_embed(x) + self.spatial_pos)  # (B*T, J, c)
        for blk in self.spatial_blocks:
            x = blk(x)
        x = self.spatial_norm(x)
        x = rearrange(x, "(b t) j c -> b t (j c)", t=t)  # (B, T, J*c)
        x = self.pos_drop(x + self.temporal_pos)
        for blk in self.temporal_blocks:
            x = blk(x)
        x = self.temporal_norm(x)
        x = self.frame_weights(x)  # (B, 1, J*c)
        x = self.head(x)  # (B, 1, J*3)
        return rearrange(x, "b 1 (j c) -> b 1 j c", j=j)  # (B, 1, J, 3)


# The released `PoseTransformer` (common/model_poseformer.py): official key prefix -> raylift's,
# first match wins.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
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
)
# `models/convert.py` imports PoseFormer's checkpoints with it.
OFFICIAL_CHECKPOINT = poseformer_style_checkpoint(
    OFFICIAL_PREFIXES, name="poseformer", blocks="Spatial_blocks", dim_field="spatial_dim"
)
