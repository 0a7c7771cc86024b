"""CrossFormer: Cross Spatio-Temporal Transformer for 3D Human Pose Estimation (Hassanin et al., 2022).

Seq2frame. CrossFormer is PoseFormer (`models/poseformer.py`) with one extra module inside every
block, applied after the attention residual and before the MLP (paper eqs. (6) and (9); here
`Block.between`, each module carrying its own residual):

- spatial blocks (joints as tokens, width c): **Cross-Joint Interaction** (`CrossJointInteraction`),
  local exchange between neighbouring joints: LayerNorm -> depth-wise Conv1d(k=5) over the joint
  axis -> GELU -> GroupNorm -> depth-wise Conv1d(k=5) -> residual.
- temporal blocks (frames as tokens, width J·c): **Cross-Frame Interaction** (`CrossFrameInteraction`),
  bilinear pooling over frames: K, Q, V from convolutions whose channels are the frames, C = K⊗Q
  (a T×T frame-frame matrix), C⊗V, a grouped convolution + GroupNorm, residual.

The model is built by composition: `CrossFormer` is a `PoseFormer` whose blocks receive these modules,
so the embedding, both transformers, the weighted mean over frames and the head are PoseFormer's own.

Any T (the released code only runs at T = 81)
---------------------------------------------
The released CFI (`SpatialCGNL(81, 81, groups=3)`, `norm_layer(81)`, `gamma4` of size 81, and the
block test `dim_conv == 81`) hard-codes 81 frames as the convolution/GroupNorm channel count. Here the
channel count is the model's window length T (a constructor argument, exactly like PoseFormer's
frame positions and its Conv1d(T, 1, 1) weighted mean), and the number of frame groups is
`gcd(T, cfi_groups)` so that the grouped convolution and GroupNorm are valid for every T (3 groups at
T = 9, 27, 81, 243; 1 group at T = 1 or any T not divisible by 3). Nothing else depends on T.

Parameter count (J = 17, paper settings c = 32, 4 + 4 blocks, 8 heads, MLP ratio 2)
-------------------------------------------------------------------------------------
PoseFormer 9,602,885 (T=81) / 9,563,645 (T=9), plus
- CJI, per spatial block: LN 2c + two depth-wise convs 2(5c + c) + GN 2c = 16c = 512;
- CFI, per temporal block: LN 2·J·c + K, Q, V convs 3·(3·T²) + grouped conv 3·T²/g + GN 2T.
At T = 81 (g = 3): 4·512 + 4·(1,088 + 59,049 + 6,561 + 162) = 269,488 -> **9,872,373** parameters,
against the paper's 9.93M. At T = 9: 4·512 + 4·(1,088 + 729 + 81 + 18) = 9,712 -> **9,573,357**.
The paper's 9.93M is PoseFormer plus the released blocks' additions at T = 81: 9,602,885 +
4·12,361 (spatial) + 4·68,735 (temporal) = 9,927,269. Ours is 54,896 smaller, exactly: the released
CJI convolutions are full c×c×5 rather than depth-wise as the paper says (4·9,920), each spatial
block also holds an unused 17-channel conv, BatchNorm and GroupNorm (4·1,590), and every block has
LayerScale vectors and an unused 81-wide LayerNorm (4·339 + 4·1,875).
Structure as released: a LayerNorm before each interaction, CJI's order conv -> GELU -> GN -> conv,
CFI's k=3 convolutions with frames as channels. Where the released CFI uses the compact kernel of
CGNL (one scalar ⟨Q, K⟩ per group of frames scaling V) this follows the paper's T×T map C = K⊗Q.
Design choices beyond the released code: the frame-frame matrix is scaled by 1/D and the
aggregation by 1/T (the GroupNorm that follows makes the output invariant to that scale, while it
keeps activations bounded under bf16 autocast); stochastic depth applies to both new residuals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from einops import rearrange
from torch import nn

from models.layers import DropPath, LayerNorm, drop_path_schedule
from models.poseformer import PoseFormer, PoseFormerConfig


@dataclass
class CrossFormerConfig(PoseFormerConfig):
    """CrossFormer hyper-parameters: PoseFormer's plus the two interaction modules'."""

    name: str = "crossformer"
    cji_kernel: int = 5  # depth-wise conv kernel over the joint axis (paper: 5)
    cfi_kernel: int = 3  # conv kernel of the Cross-Frame Interaction (released code: 3)
    cfi_groups: int = 3  # frame groups of the CFI output conv/GroupNorm (gcd with T is used)

    def validate(self) -> None:
        if self.name != "crossformer":
            raise ValueError(f"name: got {self.name!r}, expected 'crossformer'")
        # PoseFormer's checks on the shared fields (its own `validate` insists on name 'poseformer').
        shared = {f.name: getattr(self, f.name) for f in fields(PoseFormerConfig)}
        PoseFormerConfig(**{**shared, "name": "poseformer"}).validate()
        for key in ("cji_kernel", "cfi_kernel"):
            k = getattr(self, key)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{key}: got {k}, expected a positive odd kernel size")
        if self.cfi_groups < 1:
            raise ValueError(f"cfi_groups: got {self.cfi_groups}, expected >= 1")


class CrossJointInteraction(nn.Module):
    """Cross-Joint Interaction (paper eq. (6)): local joint-to-joint exchange inside a spatial block.

    x (B*T, J, c) -> (B*T, J, c): x + DropPath(DWConv(GN(GELU(DWConv(LN(x)))))), convolutions
    depth-wise (one filter per channel) with kernel k over the joint axis, zero-padded to keep J.
    GroupNorm has one group per channel (as released), i.e. it normalises each channel over the joints.
    """

    def __init__(self, dim: int, kernel: int = 5, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.act = nn.GELU()
        self.group_norm = nn.GroupNorm(dim, dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, J, c)
        y = rearrange(self.norm(x), "n j c -> n c j")  # channels first for Conv1d over joints
        y = self.conv2(self.group_norm(self.act(self.conv1(y))))  # (N, c, J)
        return x + self.drop_path(rearrange(y, "n c j -> n j c"))


class CrossFrameInteraction(nn.Module):
    """Cross-Frame Interaction (paper eq. (9)): bilinear pooling across frames in a temporal block.

    x (B, T, D) -> (B, T, D), D = J·c. With frames as convolution channels (as released):
      K, Q, V = Conv_k(LN(x)), Conv_q(LN(x)), Conv_v(LN(x))      each (B, T, D), k-tap over features
      C = K ⊗ Q = K Qᵀ / D                                       (B, T, T) frame-frame bilinear map
      Y = GN(Conv_z(C ⊗ V / T))                                  (B, T, D), grouped conv over frames
      out = x + DropPath(Y)
    Channel count = T (the model's window), groups = gcd(T, groups): valid for any T.
    """

    def __init__(self, dim: int, frames: int, kernel: int = 3, groups: int = 3, drop_path: float = 0.0) -> None:
        super().__init__()
        g = math.gcd(frames, groups)
        self.norm = LayerNorm(dim)
        self.key = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, bias=False)
        self.query = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, bias=False)
        self.value = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, bias=False)
        self.out = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, groups=g, bias=False)
        self.group_norm = nn.GroupNorm(g, frames)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        b, t, d = x.shape
        h = self.norm(x)  # (B, T, D): frames are the Conv1d channels, features the length
        k, q, v = self.key(h), self.query(h), self.value(h)  # each (B, T, D)
        c = torch.matmul(k, q.transpose(1, 2)) / d  # (B, T, T) C = K ⊗ Q
        y = torch.matmul(c, v) / t  # (B, T, D) C ⊗ V
        y = self.group_norm(self.out(y))  # (B, T, D)
        return x + self.drop_path(y)


class CrossFormer(PoseFormer):
    """x (B, T, J, 2) normalised 2D keypoints -> (B, 1, J, 3) centre-frame 3D pose (metres).

    PoseFormer with a `CrossJointInteraction` in every spatial block and a `CrossFrameInteraction`
    in every temporal block (between attention and MLP); same drop-path schedule as the blocks.
    """

    output_mode = "seq2frame"
    multiview = False

    def __init__(self, cfg: CrossFormerConfig, frames: int, joints: int = 17) -> None:
        super().__init__(cfg, frames, joints)
        rates = drop_path_schedule(cfg.drop_path_rate, cfg.depth)
        for blk, rate in zip(self.spatial_blocks, rates):
            blk.between = CrossJointInteraction(cfg.spatial_dim, cfg.cji_kernel, rate)
        for blk, rate in zip(self.temporal_blocks, rates):
            blk.between = CrossFrameInteraction(cfg.spatial_dim * joints, frames, cfg.cfi_kernel, cfg.cfi_groups, rate)
