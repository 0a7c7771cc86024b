"""CrossFormer: Cross Spatio-Temporal Transformer for 3D Human Pose Estimation (Hassanin et al., 2022).

Seq2frame. CrossFormer is PoseFormer (`models/poseformer.py`) with one extra module inside every
block, applied after the attention residual and before the MLP (paper eqs. (6) and (9); here
`Block.between`, each module carrying its own residual):

- spatial blocks (joints as tokens, width c): **Cross-Joint Interaction** (`CrossJointInteraction`),
  local exchange between neighbouring joints: LayerNorm -> Conv1d(k=5) over the joint axis -> GELU
  -> GroupNorm -> Conv1d(k=5) -> residual.
- temporal blocks (frames as tokens, width J·c): **Cross-Frame Interaction** (`CrossFrameInteraction`),
  with frames as convolution channels: K, Q, V from k=3 convolutions, a pooling of K and Q that
  weighs V, a grouped convolution + GroupNorm, residual.

The model is built by composition: `CrossFormer` is a `PoseFormer` whose blocks receive these modules.

Variants (`variant`, default `official`)
----------------------------------------
`official` computes what the authors' released code computes (github.com/mfawzy/CrossFormer,
`common/model_crossformer.py`, class `PoseTransformer`, the model behind the released 44.4 mm
checkpoint); its checkpoints load key for key (`models/convert.py`) and the parity tests
reproduce its output to 1e-5. `paper` follows the paper's text. The differences, code vs paper:

1. Cross-Frame Interaction: the code's `SpatialCGNL(81, 81, groups=3)` reduces ⟨K, Q⟩ over all
   frames × features of each of 3 frame groups to ONE scalar per sample and group, which scales V
   (compact generalised non-local kernel), then `gn(z(·)) + input`. The paper's C = K⊗Q is a T×T
   frame-frame map applied to V (here scaled by 1/D and 1/T, which the following GroupNorm
   cancels, to stay bounded under bf16), without the inner residual.
2. Cross-Joint Interaction: full c×c×5 convolutions and an inner residual to the normalised input
   (`LPI`: `conv2(gn(gelu(conv1 x))) + x`) in the code; depth-wise convolutions, no inner
   residual in the paper.
3. LayerScale (CaiT, init 1e-5) on all three residual branches (attention, interaction, MLP) in
   the code; none in the paper.
4. MLP ratio 4, no qkv bias, LayerNorm eps 1e-5 in the code: its constructor rebinds
   `mlp_ratio=4., qkv_bias=False, norm_layer=nn.LayerNorm` before building any block, whatever
   it is passed. The paper is PoseFormer's: MLP ratio 2, qkv bias, eps 1e-6. (`mlp_ratio` and
   `qkv_bias` left unset take the variant's value.)
5. One temporal position vector (`Temporal_pos_embed1`, (1, J·c)) added to every frame in the
   code; one learned position per frame in the paper (PoseFormer's).
6. Input frames 10-15 are zeroed in the code (`x[:, :, 10:16] = 0` after a permute, in place on
   the caller's tensor): the output does not depend on them. `official` zeroes the same frames on
   a copy, so the caller's tensor is never modified.
7. Window length: the code hard-wires 81 frames (CFI channels, and the zeroed frames index an
   81-frame window), so `official` accepts T = 81 only (ConfigError otherwise). `paper` runs at any
   T: CFI channels = T, frame groups = gcd(T, cfi_groups).
8. The released state dict holds ~60 unused tensors (second embeddings, `gamma4`, `norm4`,
   `local_mp.{conv3,bn,gn1}`, ...); the importer drops and reports them (`models/convert.py`).

Parameter counts (J = 17, c = 32, 4 + 4 blocks, 8 heads)
-------------------------------------------------------
- official, T = 81: 14,624,501 (the released state dict holds 14,790,259 parameters; the
  165,758 the code never uses are dropped on import).
- paper, T = 81: 9,872,373 (the paper reports 9.93M); T = 9: 9,573,357. PoseFormer 9,602,885 /
  9,563,645 plus per spatial block LN 2c + two depth-wise convs 2(5c + c) + GN 2c = 16c, per
  temporal block LN 2Jc + K, Q, V convs 3·3T² + grouped conv 3T²/g + GN 2T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal, Optional

import torch
from einops import rearrange
from torch import nn

from models.layers import DropPath, drop_path_schedule
from models.official import poseformer_style_checkpoint
from models.poseformer import PoseFormer, PoseFormerConfig

Variant = Literal["official", "paper"]


@dataclass(frozen=True)
class VariantSpec:
    """Everything that differs between the released code and the paper (module docstring, 1-7)."""

    mlp_ratio: float
    qkv_bias: bool
    eps: float  # LayerNorm epsilon
    layer_scale: Optional[float]  # LayerScale init on every residual branch (None: no LayerScale)
    depthwise_joint_conv: bool  # CJI convolutions depth-wise (paper) or full (code)
    inner_residual: bool  # CJI/CFI add their normalised input back (code's LPI / SpatialCGNL)
    frame_pooling: Literal["cgnl", "bilinear"]  # CFI: one ⟨K, Q⟩ scalar per group, or the T×T map
    frame_positions: bool  # one temporal position per frame (paper) or one shared vector (code)
    zeroed_frames: Optional[slice]  # input frames the code zeroes
    frames: Optional[int]  # the only window length supported (None: any)


VARIANTS: dict[str, VariantSpec] = {
    "official": VariantSpec(4.0, False, 1e-5, 1e-5, False, True, "cgnl", False, slice(10, 16), 81),
    "paper": VariantSpec(2.0, True, 1e-6, None, True, False, "bilinear", True, None, None),
}


@dataclass
class CrossFormerConfig(PoseFormerConfig):
    """CrossFormer hyper-parameters: PoseFormer's plus the variant and the interaction modules'."""

    name: str = "crossformer"
    variant: Variant = "official"  # official: the released code's computation; paper: the paper's text
    mlp_ratio: Optional[float] = None  # None: the variant's (official 4, forced by the released code; paper 2)
    qkv_bias: Optional[bool] = None  # None: the variant's (official False, forced by the released code; paper True)
    cji_kernel: int = 5  # conv kernel over the joint axis (paper and code: 5)
    cfi_kernel: int = 3  # conv kernel of the Cross-Frame Interaction (released code: 3)
    cfi_groups: int = 3  # frame groups of the CFI pooling/output conv/GroupNorm (code: 3; gcd with T is used)

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    def resolved(self) -> "CrossFormerConfig":
        """This config with `mlp_ratio` / `qkv_bias` left unset replaced by the variant's values."""
        spec = self.spec
        return replace(
            self,
            mlp_ratio=spec.mlp_ratio if self.mlp_ratio is None else self.mlp_ratio,
            qkv_bias=spec.qkv_bias if self.qkv_bias is None else self.qkv_bias,
        )

    def validate(self) -> None:
        if self.name != "crossformer":
            raise ValueError(f"name: got {self.name!r}, expected 'crossformer'")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: got {self.variant!r}, expected one of {', '.join(VARIANTS)}")
        # PoseFormer's checks on the shared fields (its own `validate` insists on name 'poseformer').
        resolved = self.resolved()
        shared = {f.name: getattr(resolved, f.name) for f in fields(PoseFormerConfig)}
        PoseFormerConfig(**{**shared, "name": "poseformer"}).validate()
        for key in ("cji_kernel", "cfi_kernel"):
            k = getattr(self, key)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{key}: got {k}, expected a positive odd kernel size")
        if self.cfi_groups < 1:
            raise ValueError(f"cfi_groups: got {self.cfi_groups}, expected >= 1")


def _scaled(x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
    return x if gamma is None else x * gamma


def _layer_scale(dim: int, init: Optional[float]) -> Optional[nn.Parameter]:
    return None if init is None else nn.Parameter(init * torch.ones(dim))


class CrossJointInteraction(nn.Module):
    """Cross-Joint Interaction (paper eq. (6)): local joint-to-joint exchange inside a spatial block.

    x (B*T, J, c) -> (B*T, J, c): h = LN(x); y = Conv(GN(GELU(Conv(h)))) with kernel k over the
    joint axis, zero-padded to keep J; GroupNorm with one group per channel (normalises each channel
    over the joints). official (released `LPI` under LayerScale): full convolutions,
    x + DropPath(γ ⊙ (y + h)); paper: depth-wise convolutions, x + DropPath(y).
    """

    def __init__(self, dim: int, kernel: int, drop_path: float, spec: VariantSpec) -> None:
        super().__init__()
        groups = dim if spec.depthwise_joint_conv else 1
        self.inner_residual = spec.inner_residual
        self.norm = nn.LayerNorm(dim, eps=spec.eps)
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.act = nn.GELU()
        self.group_norm = nn.GroupNorm(dim, dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.gamma = _layer_scale(dim, spec.layer_scale)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, J, c)
        h = self.norm(x)
        y = rearrange(h, "n j c -> n c j")  # channels first for Conv1d over joints
        y = rearrange(self.conv2(self.group_norm(self.act(self.conv1(y)))), "n c j -> n j c")  # (N, J, c)
        if self.inner_residual:
            y = y + h
        return x + self.drop_path(_scaled(y, self.gamma))


class CrossFrameInteraction(nn.Module):
    """Cross-Frame Interaction (paper eq. (9)): pooling across frames in a temporal block.

    x (B, T, D) -> (B, T, D), D = J·c, frames as the convolution channels (as released):
      h = LN(x); K, Q, V = Conv_k(h), Conv_q(h), Conv_v(h)        each (B, T, D), k-tap over features
      official ("cgnl", released `SpatialCGNL`): per group of T/g frames one scalar
          s = Σ_{frames, features} K·Q, and P = s·V                (B, T, D)
      paper ("bilinear"): C = K Qᵀ / D (B, T, T), P = C V / T      (B, T, D)
      Y = GN(Conv_z(P)), grouped over the g frame groups; official adds h (inner residual)
      out = x + DropPath(γ ⊙ Y)                                     (γ: official LayerScale only)
    Channel count = T, groups g = gcd(T, groups): valid for any T.
    """

    def __init__(self, dim: int, frames: int, kernel: int, groups: int, drop_path: float, spec: VariantSpec) -> None:
        super().__init__()
        self.groups = math.gcd(frames, groups)
        self.pooling = spec.frame_pooling
        self.inner_residual = spec.inner_residual
        self.norm = nn.LayerNorm(dim, eps=spec.eps)
        self.key = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, bias=False)
        self.query = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, bias=False)
        self.value = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, bias=False)
        self.out = nn.Conv1d(frames, frames, kernel, padding=kernel // 2, groups=self.groups, bias=False)
        self.group_norm = nn.GroupNorm(self.groups, frames)
        self.gamma = _layer_scale(dim, spec.layer_scale)
        self.drop_path = DropPath(drop_path)

    def pool(self, k: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, T, D) x 3 -> (B, T, D): V weighted by the K-Q affinity of the variant."""
        b, t, d = v.shape
        if self.pooling == "cgnl":
            s = (k * q).reshape(b, self.groups, -1).sum(-1)  # (B, g): one ⟨K, Q⟩ per frame group
            return v * s.repeat_interleave(t // self.groups, dim=1)[:, :, None]  # (B, T, D)
        c = torch.matmul(k, q.transpose(1, 2)) / d  # (B, T, T) C = K ⊗ Q
        return torch.matmul(c, v) / t  # (B, T, D) C ⊗ V

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        h = self.norm(x)  # (B, T, D): frames are the Conv1d channels, features the length
        y = self.group_norm(self.out(self.pool(self.key(h), self.query(h), self.value(h))))  # (B, T, D)
        if self.inner_residual:
            y = y + h
        return x + self.drop_path(_scaled(y, self.gamma))


class CrossFormer(PoseFormer):
    """x (B, T, J, 2) normalised 2D keypoints -> (B, 1, J, 3) centre-frame 3D pose (metres).

    PoseFormer with a `CrossJointInteraction` in every spatial block and a `CrossFrameInteraction`
    in every temporal block (between attention and MLP); same drop-path schedule as the blocks.
    The `official` variant accepts T = 81 only (ConfigError otherwise); see the module docstring.
    """

    output_mode = "seq2frame"
    multiview = False

    def __init__(self, cfg: CrossFormerConfig, frames: int, joints: int = 17) -> None:
        from preprocessing.schema import ConfigError

        cfg.validate()
        spec = cfg.spec
        if spec.frames is not None and int(frames) != spec.frames:
            raise ConfigError(
                f"CrossFormer variant {cfg.variant!r} runs at T={spec.frames} frames only (the released code "
                f"hard-wires it); got T={frames}. Use data.windows.frames={spec.frames} or model.variant=paper."
            )
        resolved = cfg.resolved()
        super().__init__(resolved, frames, joints, eps=spec.eps, layer_scale=spec.layer_scale,
                         frame_positions=spec.frame_positions)
        self.cfg, self.spec = cfg, spec
        rates = drop_path_schedule(cfg.drop_path_rate, cfg.depth)
        width = cfg.spatial_dim * joints
        for blk, rate in zip(self.spatial_blocks, rates):
            blk.between = CrossJointInteraction(cfg.spatial_dim, cfg.cji_kernel, rate, spec)
        for blk, rate in zip(self.temporal_blocks, rates):
            blk.between = CrossFrameInteraction(width, frames, cfg.cfi_kernel, cfg.cfi_groups, rate, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, J, 2)
        if self.spec.zeroed_frames is not None:
            x = x.clone()  # the released forward zeroes these frames in the caller's tensor; we do not
            x[:, self.spec.zeroed_frames] = 0.0
        return super().forward(x)  # (B, 1, J, 3)


# Released `PoseTransformer` (common/model_crossformer.py): `local_mp` is the Cross-Joint
# Interaction (LPI), `local` the Cross-Frame Interaction (SpatialCGNL: t scaled by <p, g>).
# Official key prefix -> raylift's, first match wins; `{i}` is a block index.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Spatial_patch_to_embedding.", "joint_embed."),
    ("Spatial_pos_embed", "spatial_pos"),
    ("Temporal_pos_embed1", "temporal_pos"),
    ("Spatial_blocks.{i}.norm3.", "spatial_blocks.{i}.between.norm."),
    ("Spatial_blocks.{i}.gamma3", "spatial_blocks.{i}.between.gamma"),
    ("Spatial_blocks.{i}.local_mp.conv1.", "spatial_blocks.{i}.between.conv1."),
    ("Spatial_blocks.{i}.local_mp.gn.", "spatial_blocks.{i}.between.group_norm."),
    ("Spatial_blocks.{i}.local_mp.conv2.", "spatial_blocks.{i}.between.conv2."),
    ("blocks1.{i}.norm3.", "temporal_blocks.{i}.between.norm."),
    ("blocks1.{i}.gamma3", "temporal_blocks.{i}.between.gamma"),
    ("blocks1.{i}.local.t.", "temporal_blocks.{i}.between.value."),
    ("blocks1.{i}.local.p.", "temporal_blocks.{i}.between.key."),
    ("blocks1.{i}.local.g.", "temporal_blocks.{i}.between.query."),
    ("blocks1.{i}.local.z.", "temporal_blocks.{i}.between.out."),
    ("blocks1.{i}.local.gn.", "temporal_blocks.{i}.between.group_norm."),
    ("Spatial_blocks.", "spatial_blocks."),
    ("blocks1.", "temporal_blocks."),
    ("Spatial_norm.", "spatial_norm."),
    ("Temporal_norm1.", "temporal_norm."),
    ("weighted_mean.", "frame_weights."),
    ("head.0.", "head.norm."),
    ("head.1.", "head.proj."),
)
# Official tensors built but never called (the module docstring's difference 8: second embeddings
# and projections, `gamma4` / `norm4`, `local_mp.{conv3,bn,gn1}`), full-match patterns.
OFFICIAL_UNUSED: tuple[str, ...] = (
    r"(Temporal_pos_embed|chennels_pos_embed|top_pos_embed|outer_tokens|outer_pos|outer_temp|inner_pos"
    r"|inner_temp|spatial_embed|Temporal_embed)",
    r"(Spatial_patch_to_embedding1|temporal_patch_to_embedding1|proj_norm1|proj|proj_norm2|proj_norm12"
    r"|proj12|proj_norm13|lins|Temporal_norm|channels_norm|Temporal|channels|weighted_mean1|weighted_mean2)\.\w+",
    r"(Spatial_blocks|blocks1)\.\d+\.(gamma4|norm4\.\w+)",
    r"Spatial_blocks\.\d+\.local_mp\.(conv3|bn|gn1)\.\w+",
)
# `models/convert.py` imports CrossFormer's checkpoints with it. T is read off `weighted_mean`
# (Conv1d(T, 1, 1)): the one temporal position vector does not show it. The released constructor
# ignores the `mlp_ratio` and `qkv_bias` it is passed (it rebinds 4 and False), so they are left to
# the `official` variant.
OFFICIAL_CHECKPOINT = poseformer_style_checkpoint(
    OFFICIAL_PREFIXES, name="crossformer", blocks="Spatial_blocks", dim_field="spatial_dim",
    frames_at=("weighted_mean.weight", 1), unused=OFFICIAL_UNUSED, constructor_mlp=False, variant="official",
)
