"""Fusionformer: Exploiting the Joint Motion Synergy with Fusion Network Based On Transformer (Yu & Zhang, 2022).

Seq2seq. Two feature branches run in parallel on the same 2D window and are fused:

- **GIM**, the global interaction module (PoseFormer-style): a spatial encoder (the J joints of a
  frame as tokens of width c) followed by a temporal encoder (the T frames as tokens of width J·c).
- **LIM**, the local interaction module (joint trajectories): a self-trajectory encoder (for each
  joint separately, its T frames as tokens of width c) followed by a cross-trajectory encoder (each
  joint's whole trajectory as one token of width T·c; the J trajectory tokens attend to each other,
  which is where the "joint motion synergy" is learned).
- **Fusion**: the two (B, T, J·c) feature sequences are concatenated along frames (2T), a LayerNorm
  and a 1D convolution (Conv1d(2T, T, 1)) map them back to T frames, and a head (LayerNorm + Linear
  c -> 3) regresses each joint of each frame: `pose` (B, T, J, 3).
- **Pose refinement** (`PoseRefinement`, after Cai et al. 2019, used by the released code): two
  linear layers read the predicted pose and the input 2D lifted to 3D with the predicted depth, and
  output sigmoid confidences that weigh the predicted x, y against the lifted x, y per joint.

Final prediction
----------------
The paper reports the pose after refinement (its test code evaluates the refined pose); the
refinement network sees one frame at a time here, so `forward(x)` applies it to every frame and
returns the refined (B, T, J, 3). `forward(x, return_all=True)` returns {"pose": (B, T, J, 3) before
refinement, "refined": (B, 1, J, 3) the centre frame after refinement}; the training loss is the
paper's λm·MPJPE(pose, all frames) + λr·MPJPE(refined, centre frame) (`models/losses.py`), so the
refinement is trained on centre frames and, being frame-wise, applied to all.

Lifting without a camera: the released code back-projects (u, v, predicted depth) with the camera
intrinsics and the ground-truth root depth. A raylift model sees only normalised 2D, so the lift is
weak-perspective: per frame the 2D shape (centred on its joint mean) is scaled by the least-squares
factor that best matches the predicted x, y, and placed at the predicted joint mean; z is the
predicted depth. This ignores the per-joint perspective term u·z/f (tens of millimetres at the
extremities), which the learned confidences weigh against.

Differences from the released code (`common/Fusionformer.py`): it concatenates four feature maps
(spatial, temporal, self- and cross-trajectory: 4T) and adds a squeeze-excitation gate over them,
scales q and k of the cross-trajectory attention by two learned scalars (absorbable into the qkv
weights), and builds its refinement on all T frames jointly with a (1024·T)-unit hidden layer; this
module follows the paper's 2T fusion and a frame-wise refinement of `refine_hidden` units.

Parameters (J = 17, T = 9, c = 32, L_s = L_c = 4, 8 heads, MLP ratio 2): 12,243,150 for the
transformer (GIM 9,534,752; LIM 2,706,976; fusion 1,259; head 163) + 140,322 for the refinement
(1024 hidden) = 12,383,472. The paper's 12.26M matches the transformer alone: by our count the
released transformer has 12,244,813 parameters (its 4T fusion conv, SE gate, q/k scalars and an
unused LayerNorm + Conv1d add 1,663 to ours); the refinement network is a separate model there.
The cross-trajectory token width is T·c, so its blocks grow as T²: 9.7M parameters at T = 1, 33.7M
at T = 27, 225M at T = 81 (the paper uses T = 9).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from einops import rearrange
from torch import nn

from models.layers import Block, LayerNorm, PoseHead, drop_path_schedule


@dataclass
class FusionformerConfig:
    """Fusionformer hyper-parameters (the window T comes from `data.windows.frames`)."""

    name: str = "fusionformer"
    dim: int = 32  # per-joint channels c; temporal width J*c, cross-trajectory width T*c
    L_s: int = 4  # blocks in each GIM encoder (spatial, temporal)
    L_c: int = 4  # blocks in each LIM encoder (self-trajectory, cross-trajectory)
    heads: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    refine_hidden: int = 1024  # hidden units of the pose refinement network
    refine_drop: float = 0.5  # dropout between its two linear layers (released code: 0.5)

    def validate(self) -> None:
        if self.name != "fusionformer":
            raise ValueError(f"name: got {self.name!r}, expected 'fusionformer'")
        for key in ("dim", "L_s", "L_c", "heads", "refine_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected >= 1")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: got {self.mlp_ratio}, expected > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate", "refine_drop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected a probability in [0, 1)")


class Encoder(nn.Module):
    """Learned positions + pre-norm blocks + LayerNorm over a token axis: (N, tokens, width) -> same."""

    def __init__(self, tokens: int, width: int, depth: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))  # (1, tokens, width)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(
            Block(width, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate, r)
            for r in drop_path_schedule(cfg.drop_path_rate, depth)
        )
        self.norm = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, tokens, width)
        x = self.pos_drop(x + self.pos)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class SpatialEncoder(nn.Module):
    """(B, T, J, 2) -> (B, T, J, c): the joints of each frame as tokens."""

    def __init__(self, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(2, cfg.dim)
        self.encoder = Encoder(joints, cfg.dim, cfg.L_s, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = self.encoder(self.embed(rearrange(x, "b t j c -> (b t) j c")))  # (B*T, J, c)
        return rearrange(x, "(b t) j c -> b t j c", t=t)


class TemporalEncoder(nn.Module):
    """(B, T, J, c) -> (B, T, J, c): each frame (all joints flattened, J*c) as one token."""

    def __init__(self, frames: int, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.encoder = Encoder(frames, joints * cfg.dim, cfg.L_s, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        j = x.shape[2]
        x = self.encoder(rearrange(x, "b t j c -> b t (j c)"))  # (B, T, J*c)
        return rearrange(x, "b t (j c) -> b t j c", j=j)


class SelfTrajectoryEncoder(nn.Module):
    """(B, T, J, 2) -> (B, T, J, c): each joint's own trajectory, its frames as tokens."""

    def __init__(self, frames: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(2, cfg.dim)
        self.encoder = Encoder(frames, cfg.dim, cfg.L_c, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        j = x.shape[2]
        x = self.encoder(self.embed(rearrange(x, "b t j c -> (b j) t c")))  # (B*J, T, c)
        return rearrange(x, "(b j) t c -> b t j c", j=j)


class CrossTrajectoryEncoder(nn.Module):
    """(B, T, J, c) -> (B, T, J, c): each joint's whole trajectory (T*c) as one token."""

    def __init__(self, frames: int, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.encoder = Encoder(joints, frames * cfg.dim, cfg.L_c, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = self.encoder(rearrange(x, "b t j c -> b j (t c)"))  # (B, J, T*c)
        return rearrange(x, "b j (t c) -> b t j c", t=t)


class GlobalInteractionModule(nn.Module):
    """GIM: spatial then temporal encoder. (B, T, J, 2) -> (B, T, J, c)."""

    def __init__(self, frames: int, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.spatial = SpatialEncoder(joints, cfg)
        self.temporal = TemporalEncoder(frames, joints, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.spatial(x))


class LocalInteractionModule(nn.Module):
    """LIM: self-trajectory then cross-trajectory encoder. (B, T, J, 2) -> (B, T, J, c)."""

    def __init__(self, frames: int, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.self_trajectory = SelfTrajectoryEncoder(frames, cfg)
        self.cross_trajectory = CrossTrajectoryEncoder(frames, joints, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cross_trajectory(self.self_trajectory(x))


class GlobalLocalFusion(nn.Module):
    """Concatenate GIM and LIM features along frames (2T), LayerNorm, Conv1d(2T -> T, k=1).

    (B, T, J, c) x 2 -> (B, T, J, c).
    """

    def __init__(self, frames: int, joints: int, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(joints * dim)
        self.conv = nn.Conv1d(2 * frames, frames, kernel_size=1)

    def forward(self, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        j = g.shape[2]
        x = rearrange(torch.cat([g, l], dim=1), "b t j c -> b t (j c)")  # (B, 2T, J*c)
        x = self.conv(self.norm(x))  # (B, T, J*c): frames are the Conv1d channels
        return rearrange(x, "b t (j c) -> b t j c", j=j)


class PoseRefinement(nn.Module):
    """Frame-wise pose refinement: confidences weigh predicted x, y against the lifted 2D.

    pose (B, F, J, 3), keypoints (B, F, J, 2) -> (B, F, J, 3). Lifted pose: the 2D shape centred on
    its joint mean, scaled by the per-frame least-squares factor s = Σ⟨d, p⟩ / Σ|d|² onto the
    predicted x, y (also centred), re-placed at the predicted joint mean, with the predicted depth.
    Confidences σ(W2 Dropout(ReLU(W1 [pose, lifted]))) in (0, 1), one per joint and axis (x, y):
    refined x, y = σ · predicted + (1 - σ) · lifted; refined z = predicted z.
    """

    def __init__(self, joints: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(joints * 6, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, joints * 2)

    @staticmethod
    def lift(pose: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """(B, F, J, 3), (B, F, J, 2) -> (B, F, J, 3) weak-perspective lift of the 2D (float32)."""
        pose, keypoints = pose.float(), keypoints.float()
        xy_mean = pose[..., :2].mean(dim=2, keepdim=True)  # (B, F, 1, 2)
        d = keypoints - keypoints.mean(dim=2, keepdim=True)  # (B, F, J, 2) centred 2D
        p = pose[..., :2] - xy_mean  # (B, F, J, 2) centred predicted x, y
        s = (d * p).sum(dim=(2, 3), keepdim=True) / (d * d).sum(dim=(2, 3), keepdim=True).clamp_min(1e-8)
        return torch.cat([s * d + xy_mean, pose[..., 2:]], dim=-1)  # (B, F, J, 3)

    def forward(self, pose: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        lifted = self.lift(pose, keypoints).to(pose.dtype)  # (B, F, J, 3)
        h = rearrange(torch.cat([pose, lifted], dim=-1), "b f j c -> b f (j c)")  # (B, F, 6J)
        conf = torch.sigmoid(self.fc2(self.drop(self.act(self.fc1(h)))))  # (B, F, 2J)
        conf = rearrange(conf, "b f (j c) -> b f j c", c=2)  # (B, F, J, 2)
        xy = conf * pose[..., :2] + (1 - conf) * lifted[..., :2]
        return torch.cat([xy, pose[..., 2:]], dim=-1)  # (B, F, J, 3)


class Fusionformer(nn.Module):
    """x (B, T, J, 2) normalised 2D -> (B, T, J, 3) refined root-relative 3D (metres); see module doc."""

    output_mode = "seq2seq"
    multiview = False

    def __init__(self, cfg: FusionformerConfig, frames: int, joints: int = 17) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.frames, self.joints = cfg, int(frames), int(joints)
        self.gim = GlobalInteractionModule(frames, joints, cfg)
        self.lim = LocalInteractionModule(frames, joints, cfg)
        self.fusion = GlobalLocalFusion(frames, joints, cfg.dim)
        self.head = PoseHead(cfg.dim, 3)
        self.refine = PoseRefinement(joints, cfg.refine_hidden, cfg.refine_drop)

    def forward(
        self, x: torch.Tensor, return_all: bool = False
    ) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
        b, t, j, _ = x.shape
        if t != self.frames or j != self.joints:
            raise ValueError(f"Fusionformer built for T={self.frames}, J={self.joints}; got input {tuple(x.shape)}")
        pose = self.head(self.fusion(self.gim(x), self.lim(x)))  # (B, T, J, 3)
        if not return_all:
            return self.refine(pose, x)  # (B, T, J, 3)
        c = t // 2
        refined = self.refine(pose[:, c : c + 1], x[:, c : c + 1])  # (B, 1, J, 3)
        return {"pose": pose, "refined": refined}
