"""MixSTE: Seq2seq Mixed Spatio-Temporal Encoder (Zhang et al., CVPR 2022), the released `MixSTE2`.

Every 2D joint of every frame is a token. A joint embedding (Linear 2 -> C) plus a learned spatial
position (one per joint) feeds the first spatial transformer block (STE: attention across the J
joints of one frame); a learned temporal position (one per frame) is then added and the first
temporal block (TTE: attention across the T frames of one joint's trajectory) follows. The
remaining `depth - 1` STE/TTE pairs alternate the same way, each followed by the shared spatial /
temporal LayerNorm. A head (LayerNorm + Linear C -> 3) regresses every joint of every frame
(seq2seq). The order of the position embeddings and the shared norms match the official code
exactly, so the authors' checkpoints reproduce their outputs (`models/convert.py`).

Defaults are the paper's H36M model: C=512, depth 8, 8 heads, MLP ratio 2, drop-path 0 -> 0.1:
33,783,811 parameters at T=243 (33,700,867 at T=81).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from models.layers import Block, LayerNorm, PoseHead, drop_path_schedule
from models.official import poseformer_style_checkpoint


@dataclass
class MixSTEConfig:
    """MixSTE hyper-parameters (the window length T comes from `data.windows.frames`)."""

    name: str = "mixste"
    dim: int = 512  # channels of every joint token (the official `embed_dim_ratio`)
    depth: int = 8  # number of STE/TTE pairs
    heads: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # dropout after position embeddings, in MLPs and attention output
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.1  # stochastic depth, rising linearly 0 -> rate over the depth
    # Memory option, same maths: in training, recompute each block's activations in the backward
    # pass (torch.utils.checkpoint, non-reentrant, RNG state preserved so dropout/drop-path agree)
    # instead of keeping them: about one block's activations alive instead of 2*depth blocks'.
    checkpoint_blocks: bool = False

    def validate(self) -> None:
        if self.name != "mixste":
            raise ValueError(f"name: got {self.name!r}, expected 'mixste'")
        if self.dim < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(f"dim, depth and heads must be positive (got {self.dim}, {self.depth}, {self.heads})")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: got {self.mlp_ratio}, expected > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected a probability in [0, 1)")


class MixSTE(nn.Module):
    """x (B, T, J, 2) normalised 2D keypoints -> (B, T, J, 3) root-relative 3D joints in metres."""

    output_mode = "seq2seq"
    multiview = False

    def __init__(self, cfg: MixSTEConfig, frames: int, joints: int = 17) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.frames, self.joints = cfg, int(frames), int(joints)
        c = cfg.dim
        self.joint_embed = nn.Linear(2, c)
        # Zero-initialised like the official code (Linears keep PyTorch's default init).
        self.spatial_pos = nn.Parameter(torch.zeros(1, joints, c))  # (1, J, C)
        self.temporal_pos = nn.Parameter(torch.zeros(1, frames, c))  # (1, T, C)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = drop_path_schedule(cfg.drop_path_rate, cfg.depth)

        def block(rate: float) -> Block:
            return Block(c, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate, rate)

        self.spatial_blocks = nn.ModuleList(block(r) for r in rates)  # STE: attention over joints
        self.temporal_blocks = nn.ModuleList(block(r) for r in rates)  # TTE: attention over frames
        self.spatial_norm = LayerNorm(c)  # shared by every STE block
        self.temporal_norm = LayerNorm(c)  # shared by every TTE block
        self.head = PoseHead(c, 3)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.checkpoint_blocks and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _spatial(self, x: torch.Tensor, i: int) -> torch.Tensor:  # (B*T, J, C)
        return self.spatial_norm(self._block(self.spatial_blocks[i], x))

    def _temporal(self, x: torch.Tensor, i: int) -> torch.Tensor:  # (B*J, T, C)
        return self.temporal_norm(self._block(self.temporal_blocks[i], x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, j, _ = x.shape
        if t != self.frames or j != self.joints:
            raise ValueError(f"MixSTE built for T={self.frames}, J={self.joints}; got input {tuple(x.shape)}")
        x = rearrange(x, "b t j c -> (b t) j c")
        x = self.pos_drop(self.joint_embed(x) + self.spatial_pos)  # (B*T, J, C)
        x = self._spatial(x, 0)
        x = rearrange(x, "(b t) j c -> (b j) t c", t=t)
        x = self.pos_drop(x + self.temporal_pos)  # (B*J, T, C)
        x = self._temporal(x, 0)
        for i in range(1, len(self.spatial_blocks)):
            x = rearrange(x, "(b j) t c -> (b t) j c", j=j)
            x = self._spatial(x, i)  # (B*T, J, C)
            x = rearrange(x, "(b t) j c -> (b j) t c", t=t)
            x = self._temporal(x, i)  # (B*J, T, C)
        # The head acts on each token alone, so it runs before the final re-layout: the copy then
        # moves 3 channels per token instead of C (same values; tests/test_speed.py).
        x = self.head(x)  # (B*J, T, 3)
        return rearrange(x, "(b j) t c -> b t j c", j=j)  # (B, T, J, 3)


# The released `MixSTE2` (common/model_cross.py): official key prefix -> raylift's, first match wins.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Spatial_patch_to_embedding.", "joint_embed."),
    ("Spatial_pos_embed", "spatial_pos"),
    ("Temporal_pos_embed", "temporal_pos"),
    ("STEblocks.", "spatial_blocks."),
    ("TTEblocks.", "temporal_blocks."),
    ("Spatial_norm.", "spatial_norm."),
    ("Temporal_norm.", "temporal_norm."),
    ("head.0.", "head.norm."),
    ("head.1.", "head.proj."),
)
# `models/convert.py` imports MixSTE's checkpoints with it.
OFFICIAL_CHECKPOINT = poseformer_style_checkpoint(OFFICIAL_PREFIXES, name="mixste", blocks="STEblocks", dim_field="dim")
