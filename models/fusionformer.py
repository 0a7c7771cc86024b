"""Fusionformer: Exploiting the Joint Motion Synergy with Fusion Network Based On Transformer (Yu & Zhang, 2022).

Seq2seq. Two feature branches run in parallel on the same 2D window and are fused:

- **GIM**, the global interaction module (PoseFormer-style): a spatial encoder (the J joints of a
  frame as tokens of width c) followed by a temporal encoder (the T frames as tokens of width J·c).
- **LIM**, the local interaction module (joint trajectories): a self-trajectory encoder (for each
  joint separately, its T frames as tokens of width c) followed by a cross-trajectory encoder (each
  joint's whole trajectory as one token of width T·c; the J trajectory tokens attend to each other,
  which is where the "joint motion synergy" is learned).
- **Fusion**: feature maps concatenated along frames, a LayerNorm over J·c and a Conv1d back to T
  frames; a head (LayerNorm + Linear c -> 3) regresses each joint of each frame: `pose` (B, T, J, 3).
- **Pose refinement** (`PoseRefinement`, after Cai et al. 2019): an MLP reads the predicted pose and
  the 2D input lifted to 3D with the predicted depth, and outputs sigmoid confidences that weigh
  the predicted x, y against the lifted x, y per joint; z is the predicted depth.

Depths: `L_s` is the number of blocks in each encoder of the global module (spatial and temporal),
`L_c` in each encoder of the local module (self- and cross-trajectory); the paper uses
L_s = L_c = 4. The released code has one `depth` for all four encoders (its `depth1..3` arguments
are unused), i.e. L_s = L_c = depth.

Variants (`variant`, default `official`)
----------------------------------------
`official` computes what the authors' released code computes (github.com/yuxinwei123/Fusionformer,
`common/Fusionformer.py` class `Fusionformer`, `common/refine.py` class `refine`, `run.py`); its two
checkpoints load key for key (`models/convert.py`) and the parity tests reproduce its outputs to
1e-5. `paper` follows the paper's text. The differences, code vs paper:

1. Fusion over 4T: the code concatenates all four encoder outputs along frames, [spatial,
   temporal, self-trajectory, cross-trajectory] (B, 4T, J, c), gates the 4T maps with a
   squeeze-excitation unit (`glf.fc`: mean over joints and channels -> Linear(4T, 1) -> ReLU ->
   Linear(1, 4T) -> sigmoid; one hidden unit, `reducion = 4T`), then LayerNorm + Conv1d(4T -> T).
   The paper fuses the two module outputs (temporal, cross-trajectory) over 2T with
   LayerNorm + Conv1d(2T -> T), no gate.
2. Cross-trajectory attention: the code multiplies q and k by two learned scalars (`q_mask`,
   `k_mask`); the paper's attention is plain.
3. LayerNorm eps 1e-5 in the code (plain `nn.LayerNorm`), the field's 1e-6 in `paper`.
4. Position leak: the code's `x += Temporal_pos_embed` (temporal encoder) and
   `x += Cross_Trajectory_pos_embed` (cross-trajectory encoder) act in place on views of the
   spatial and self-trajectory outputs, so those two maps enter the fusion with the next encoder's
   positions added. `official` adds them explicitly (out of place); `paper` fuses clean maps.
5. Refinement, as `run.py` runs it with `--refine`: one MLP over the WHOLE window
   (Linear(6·T·J -> 1024·T) -> ReLU -> Dropout(0.5) -> Linear(1024·T -> 2·T·J) -> sigmoid), and the
   2D is lifted by perspective back-projection (`common/camera.py get_uvd2xyz`): joint depths
   z_0 = root depth, z_j = predicted z_j + root depth, (x, y) = (uv − c)·z / f with the camera
   intrinsics, then made root-relative. Its training loss uses the refined pose of all T frames.
   The paper's reading (`paper`): a frame-wise MLP of `refine_hidden` units and a
   weak-perspective lift (per frame, the 2D shape scaled by least squares onto the predicted x, y);
   trained on the refined centre frame.

Ground truth in the refinement (`root_depth`, default `gt`, as the released code). The released
code feeds the GROUND-TRUTH absolute root depth to the back-projection: in training that of every
window frame (`gt_3D[:, t, 0, 2]`, run.py with `out_all=1`), at test time that of the centre frame
for all T frames; with the real camera intrinsics (normalised, cx and p1 negated for a mirrored
window). Its refined numbers (the 48.49 mm checkpoint) therefore use 3D ground truth, not 2D input
alone. Here the camera inputs are explicit arguments, `Fusionformer.forward(x, intrinsics=...,
root_depth=...)`; `camera_inputs` names what the pipelines must pass (`models.losses.camera_kwargs`
reads them from the windows' `intrinsics`, `image_size` and `trajectory` columns), and every
results header names the ground-truth dependence. `root_depth: estimate` reads 2D alone: the
refinement uses `estimate_root_depth`, the depth at which the predicted root-relative pose, seen
through the camera, has the size of the 2D pose, z_0 = f · rms(predicted x, y) / rms(2D) over the
window (each centred per frame on its joint mean). Called without camera inputs (e.g. `raylift
infer` on a user's 2D), the model uses that estimate and the mean of the four Human3.6M cameras in
normalised units (`H36M_MEAN_INTRINSICS`).

Test-time flip (run.py `input_augmentation`): the transformer runs on the input and on its mirror,
the two poses are averaged (the mirrored one un-flipped), and the refinement runs once, on the
unflipped 2D. `forward_pose` and `refine_pose` expose the two stages so that evaluation
(`pipelines/evaluate/prediction.py`) flips in between.

Parameters (J = 17, T = 9, c = 32, L_s = L_c = 4, 8 heads, MLP ratio 2):
- official: transformer 12,243,392 (the released state dict holds 12,244,813: the unused `fcn`
  LayerNorm + Conv1d, 1,421, are dropped on import), refinement 11,289,906 (1024·T hidden).
- paper: transformer 12,243,150 (GIM 9,534,752; LIM 2,706,976; fusion 1,259; head 163), refinement
  140,322 (1024 hidden). The paper's 12.26M matches the transformer alone.
The cross-trajectory token width is T·c, so its blocks grow as T².
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Union

import torch
from einops import rearrange
from torch import nn

from models.layers import Block, PoseHead, drop_path_schedule
from models.official import OfficialCheckpoint, State, block_count, block_options, mlp_options, tensor_shape

Variant = Literal["official", "paper"]

# Mean intrinsics of the four Human3.6M cameras, normalised like the keypoints (f / w · 2,
# c / w · 2 − [1, h / w]): [fx, fy, cx, cy] (from h36m_cameras.json).
H36M_MEAN_INTRINSICS = (2.2946886, 2.2924728, 0.0280871, 0.0124005)
ROOT = 0  # the released back-projection takes joint 0 as the root (H36M pelvis)


@dataclass(frozen=True)
class VariantSpec:
    """Everything that differs between the released code and the paper (module docstring, 1-5)."""

    fuse_all_encoders: bool  # fuse [spatial, temporal, self-, cross-trajectory] (4T) or [temporal, cross] (2T)
    fusion_gate: bool  # squeeze-excitation gate over the fused frame maps
    qk_gains: bool  # learned q/k scalars in the cross-trajectory attention
    position_leak: bool  # spatial / self-trajectory maps fused with the next encoder's positions added
    eps: float  # LayerNorm epsilon of the encoders and the fusion
    refine_window: bool  # refinement MLP over the whole window (code) or frame-wise (paper)
    perspective: bool  # lift 2D by perspective back-projection (code) or weak perspective (paper)


VARIANTS: dict[str, VariantSpec] = {
    "official": VariantSpec(True, True, True, True, 1e-5, True, True),
    "paper": VariantSpec(False, False, False, False, 1e-6, False, False),
}


@dataclass
class FusionformerConfig:
    """Fusionformer hyper-parameters (the window T comes from `data.windows.frames`)."""

    name: str = "fusionformer"
    variant: Variant = "official"  # official: the released code's computation; paper: the paper's text
    dim: int = 32  # per-joint channels c; temporal width J*c, cross-trajectory width T*c
    L_s: int = 4  # blocks in EACH encoder of the global module (spatial, temporal); paper L_s
    L_c: int = 4  # blocks in EACH encoder of the local module (self-, cross-trajectory); paper L_c
    heads: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    refine_hidden: int = 1024  # refinement hidden units per frame it reads (official: whole window, 1024·T)
    refine_drop: float = 0.5  # dropout between its two linear layers (released code: 0.5)
    # official variant: the back-projection's root depth. gt: the ground truth, as run.py (train: every
    # frame's, test: the centre frame's); estimate: from the 2D and the predicted pose (2D input alone).
    root_depth: Literal["gt", "estimate"] = "gt"

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def camera_inputs(self) -> tuple[str, ...]:
        """What the refinement reads besides the 2D (`models.losses.camera_kwargs` supplies it):
        official, the camera intrinsics and (root_depth: gt) the ground-truth root depth; the paper
        variant's weak-perspective lift reads nothing."""
        if not self.spec.perspective:
            return ()
        return ("intrinsics", "root_depth") if self.root_depth == "gt" else ("intrinsics",)

    def validate(self) -> None:
        if self.name != "fusionformer":
            raise ValueError(f"name: got {self.name!r}, expected 'fusionformer'")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: got {self.variant!r}, expected one of {', '.join(VARIANTS)}")
        for key in ("dim", "L_s", "L_c", "heads", "refine_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected >= 1")
        if self.root_depth not in ("gt", "estimate"):
            raise ValueError(f"root_depth: got {self.root_depth!r}, expected 'gt' or 'estimate'")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: got {self.mlp_ratio}, expected > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate", "refine_drop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: got {getattr(self, key)}, expected a probability in [0, 1)")


class Encoder(nn.Module):
    """Learned positions + pre-norm blocks + LayerNorm over a token axis: (N, tokens, width) -> same."""

    def __init__(self, tokens: int, width: int, depth: int, cfg: FusionformerConfig, qk_gains: bool = False) -> None:
        super().__init__()
        eps = cfg.spec.eps
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))  # (1, tokens, width)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(
            Block(width, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate, r,
                  eps=eps, qk_gains=qk_gains)
            for r in drop_path_schedule(cfg.drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(width, eps=eps)

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
        self.joints = joints
        self.encoder = Encoder(frames, joints * cfg.dim, cfg.L_s, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        j = x.shape[2]
        x = self.encoder(rearrange(x, "b t j c -> b t (j c)"))  # (B, T, J*c)
        return rearrange(x, "b t (j c) -> b t j c", j=j)

    def positions(self) -> torch.Tensor:
        """The learned frame positions laid out as a feature map: (1, T, J, c)."""
        return rearrange(self.encoder.pos, "o t (j c) -> o t j c", j=self.joints)


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
        self.frames = frames
        self.encoder = Encoder(joints, frames * cfg.dim, cfg.L_c, cfg, qk_gains=cfg.spec.qk_gains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = self.encoder(rearrange(x, "b t j c -> b j (t c)"))  # (B, J, T*c)
        return rearrange(x, "b j (t c) -> b t j c", t=t)

    def positions(self) -> torch.Tensor:
        """The learned trajectory positions laid out as a feature map: (1, T, J, c)."""
        return rearrange(self.encoder.pos, "o j (t c) -> o t j c", t=self.frames)


class GlobalInteractionModule(nn.Module):
    """GIM: spatial then temporal encoder. (B, T, J, 2) -> both feature maps, each (B, T, J, c).

    With `position_leak` (official) the spatial map comes back with the temporal encoder's frame
    positions added, as the released code leaves it: its `x += Temporal_pos_embed` acts in place
    on a view of the spatial encoder's output, which is then fused.
    """

    def __init__(self, frames: int, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.position_leak = cfg.spec.position_leak
        self.spatial = SpatialEncoder(joints, cfg)
        self.temporal = TemporalEncoder(frames, joints, cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spatial(x)
        t = self.temporal(s)
        return (s + self.temporal.positions() if self.position_leak else s), t


class LocalInteractionModule(nn.Module):
    """LIM: self-trajectory then cross-trajectory encoder. (B, T, J, 2) -> both maps, each (B, T, J, c).

    With `position_leak` (official) the self-trajectory map comes back with the cross-trajectory
    encoder's positions added (the released `x += Cross_Trajectory_pos_embed` acts in place on a
    view of it).
    """

    def __init__(self, frames: int, joints: int, cfg: FusionformerConfig) -> None:
        super().__init__()
        self.position_leak = cfg.spec.position_leak
        self.self_trajectory = SelfTrajectoryEncoder(frames, cfg)
        self.cross_trajectory = CrossTrajectoryEncoder(frames, joints, cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.self_trajectory(x)
        c = self.cross_trajectory(s)
        return (s + self.cross_trajectory.positions() if self.position_leak else s), c


class GlobalLocalFusion(nn.Module):
    """Fuse F = n·T frame maps back to T: [SE gate] -> LayerNorm(J·c) -> Conv1d(F -> T, k=1).

    (B, F, J, c) -> (B, T, J, c). The gate (released `glf.fc`, one hidden unit) scales each of the F
    maps by sigmoid(W2 ReLU(W1 m)), m (B, F) the maps' means over joints and channels.
    """

    def __init__(self, maps: int, frames: int, joints: int, dim: int, gate: bool, eps: float) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(maps, 1, bias=False), nn.ReLU(), nn.Linear(1, maps, bias=False), nn.Sigmoid()
        ) if gate else None
        self.norm = nn.LayerNorm(joints * dim, eps=eps)
        self.conv = nn.Conv1d(maps, frames, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, J, c)
        j = x.shape[2]
        if self.gate is not None:
            x = x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]  # (B, F, J, c)
        x = self.conv(self.norm(rearrange(x, "b f j c -> b f (j c)")))  # (B, T, J*c): maps are the channels
        return rearrange(x, "b t (j c) -> b t j c", j=j)


def back_project(pose: torch.Tensor, keypoints: torch.Tensor, intrinsics: torch.Tensor,
                 root_depth: torch.Tensor, root: int = ROOT) -> torch.Tensor:
    """Released `get_uvd2xyz` + `xyz[:, :, 0] = 0`: 2D lifted with the predicted relative depths.

    pose (B, T, J, 3) root-relative prediction, keypoints (B, T, J, 2) normalised 2D, intrinsics
    (B, ≥4) [fx, fy, cx, cy, ...] normalised, root_depth (B,) or (B, T) absolute root depth (m)
    -> (B, T, J, 3) root-relative camera-frame pose: z_root = root_depth, z_j = pose_z_j + root_depth,
    (x, y) = (uv − c) · z / f, minus the root joint (`root`: joint 0, the H36M pelvis, in the
    released code).
    """
    b, t, j, _ = pose.shape
    z0 = root_depth.reshape(b, -1, 1).to(pose.dtype).expand(b, t, 1)  # (B, T, 1)
    z = pose[..., 2] + z0  # (B, T, J): z_j = predicted z_j + root depth ...
    z = torch.cat([z[..., :root], z0, z[..., root + 1 :]], dim=2)[..., None]  # ... and the root's = root depth
    f = intrinsics[:, None, None, 0:2].to(pose.dtype)  # (B, 1, 1, 2)
    c = intrinsics[:, None, None, 2:4].to(pose.dtype)
    xyz = torch.cat([(keypoints - c) * z / f, z], dim=-1)  # (B, T, J, 3) absolute
    return xyz - xyz[:, :, root : root + 1]


def estimate_root_depth(pose: torch.Tensor, keypoints: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Root depth (B,) without ground truth: the depth at which the predicted pose has the 2D size.

    Under perspective, (u − ū) ≈ f (x − x̄) / z_0; over the window (each frame centred on its joint
    mean), z_0 = f̄ · rms(predicted x, y) / rms(2D), f̄ = (fx + fy) / 2. Detached: like the ground
    truth it replaces, it is an input of the refinement, not a path for gradients.
    """
    with torch.no_grad():
        p = pose[..., :2] - pose[..., :2].mean(dim=2, keepdim=True)  # (B, T, J, 2)
        d = keypoints - keypoints.mean(dim=2, keepdim=True)
        ratio = p.square().sum(dim=(1, 2, 3)).sqrt() / d.square().sum(dim=(1, 2, 3)).sqrt().clamp_min(1e-6)
        return intrinsics[:, :2].mean(dim=1).to(pose.dtype) * ratio  # (B,)


def weak_perspective_lift(pose: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """(B, F, J, 3), (B, F, J, 2) -> (B, F, J, 3): per frame, the 2D shape centred on its joint mean,
    scaled by the least-squares factor s = Σ⟨d, p⟩ / Σ|d|² onto the predicted x, y (also centred),
    re-placed at the predicted joint mean, with the predicted depth (float32)."""
    pose, keypoints = pose.float(), keypoints.float()
    xy_mean = pose[..., :2].mean(dim=2, keepdim=True)  # (B, F, 1, 2)
    d = keypoints - keypoints.mean(dim=2, keepdim=True)  # (B, F, J, 2) centred 2D
    p = pose[..., :2] - xy_mean  # (B, F, J, 2) centred predicted x, y
    s = (d * p).sum(dim=(2, 3), keepdim=True) / (d * d).sum(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    return torch.cat([s * d + xy_mean, pose[..., 2:]], dim=-1)  # (B, F, J, 3)


class PoseRefinement(nn.Module):
    """Confidences weigh predicted x, y against x, y lifted from the 2D: (B, T, J, 3) -> (B, T, J, 3).

    conf = σ(W2 Dropout(ReLU(W1 [pose, lifted]))) in (0, 1), one per joint and axis (x, y), computed
    over `window` frames at a time (official: the whole window, hidden = hidden_per_frame · T;
    paper: each frame); refined x, y = conf · predicted + (1 − conf) · lifted; z = predicted z.
    Lift: official, `back_project` with `intrinsics` (default H36M mean) and `root_depth`
    (default `estimate_root_depth`; the released test code passes the ground truth); paper,
    `weak_perspective_lift` (no camera, so no intrinsics / root depth).
    """

    def __init__(self, frames: int, joints: int, hidden_per_frame: int, drop: float, spec: VariantSpec) -> None:
        super().__init__()
        self.window = frames if spec.refine_window else 1
        self.perspective = spec.perspective
        self.fc1 = nn.Linear(self.window * joints * 6, self.window * hidden_per_frame)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(self.window * hidden_per_frame, self.window * joints * 2)
        self.register_buffer("default_intrinsics", torch.tensor(H36M_MEAN_INTRINSICS), persistent=False)

    def lifted(self, pose: torch.Tensor, keypoints: torch.Tensor, intrinsics: Optional[torch.Tensor] = None,
               root_depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The 2D input lifted to 3D, (B, T, J, 3), by this variant's projection model."""
        if not self.perspective:
            if intrinsics is not None or root_depth is not None:
                raise ValueError("the paper variant's weak-perspective lift takes no intrinsics or root depth")
            return weak_perspective_lift(pose, keypoints).to(pose.dtype)
        if intrinsics is None:
            intrinsics = self.default_intrinsics.expand(pose.shape[0], 4)
        if root_depth is None:
            root_depth = estimate_root_depth(pose, keypoints, intrinsics)
        return back_project(pose, keypoints, intrinsics, root_depth)

    def forward(self, pose: torch.Tensor, keypoints: torch.Tensor, intrinsics: Optional[torch.Tensor] = None,
                root_depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        lifted = self.lifted(pose, keypoints, intrinsics, root_depth)  # (B, T, J, 3)
        h = rearrange(torch.cat([pose, lifted], dim=-1), "b (n w) j c -> b n (w j c)", w=self.window)
        conf = torch.sigmoid(self.fc2(self.drop(self.act(self.fc1(h)))))  # (B, T / w, w*J*2)
        conf = rearrange(conf, "b n (w j c) -> b (n w) j c", w=self.window, c=2)  # (B, T, J, 2)
        xy = conf * pose[..., :2] + (1 - conf) * lifted[..., :2]
        return torch.cat([xy, pose[..., 2:]], dim=-1)  # (B, T, J, 3)


class Fusionformer(nn.Module):
    """x (B, T, J, 2) normalised 2D -> (B, T, J, 3) refined root-relative 3D (metres); see module doc."""

    output_mode = "seq2seq"
    multiview = False

    def __init__(self, cfg: FusionformerConfig, frames: int, joints: int = 17) -> None:
        super().__init__()
        cfg.validate()
        spec = cfg.spec
        self.cfg, self.spec, self.frames, self.joints = cfg, spec, int(frames), int(joints)
        self.gim = GlobalInteractionModule(frames, joints, cfg)
        self.lim = LocalInteractionModule(frames, joints, cfg)
        maps = (4 if spec.fuse_all_encoders else 2) * frames
        self.fusion = GlobalLocalFusion(maps, frames, joints, cfg.dim, spec.fusion_gate, spec.eps)
        self.head = PoseHead(cfg.dim, 3)
        self.refine = PoseRefinement(frames, joints, cfg.refine_hidden, cfg.refine_drop, spec)

    @property
    def camera_inputs(self) -> tuple[str, ...]:
        return self.cfg.camera_inputs

    def forward_pose(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer alone (the released `Fusionformer`): (B, T, J, 2) -> (B, T, J, 3) before refinement."""
        b, t, j, _ = x.shape
        if t != self.frames or j != self.joints:
            raise ValueError(f"Fusionformer built for T={self.frames}, J={self.joints}; got input {tuple(x.shape)}")
        spatial, temporal = self.gim(x)
        self_traj, cross_traj = self.lim(x)
        maps = [spatial, temporal, self_traj, cross_traj] if self.spec.fuse_all_encoders else [temporal, cross_traj]
        return self.head(self.fusion(torch.cat(maps, dim=1)))  # (B, T, J, 3)

    def forward(
        self,
        x: torch.Tensor,
        return_all: bool = False,
        intrinsics: Optional[torch.Tensor] = None,
        root_depth: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
        """Refined pose (B, T, J, 3); with `return_all`, {"pose": before refinement (B, T, J, 3),
        "refined": what the variant's refinement loss scores: official all T frames (B, T, J, 3),
        paper the centre frame (B, 1, J, 3)}. `intrinsics` (B, 4) and `root_depth` (B,) or (B, T)
        feed the official back-projection (pass the ground-truth root depth for the released test
        protocol); left out, the H36M mean camera and `estimate_root_depth` are used."""
        pose = self.forward_pose(x)  # (B, T, J, 3)
        refined = self.refine_pose(pose, x, intrinsics, root_depth)  # (B, T, J, 3)
        if not return_all:
            return refined
        if not self.spec.refine_window:
            c = self.frames // 2
            refined = refined[:, c : c + 1]  # (B, 1, J, 3)
        return {"pose": pose, "refined": refined}

    def refine_pose(self, pose: torch.Tensor, x: torch.Tensor, intrinsics: Optional[torch.Tensor] = None,
                    root_depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The refinement stage alone: (B, T, J, 3) pose, (B, T, J, 2) 2D -> (B, T, J, 3) refined."""
        return self.refine(pose, x, intrinsics, root_depth)


def _values_from_shapes(state: State, source: str) -> tuple[dict[str, Any], int]:
    """Fusionformer (official variant) config values and J read off the merged official state dicts
    (`OfficialCheckpoint.infer_values`); the refinement's hidden width is 1024·T in the code."""
    _, joints, dim = tensor_shape(state, "SE.Spatial_pos_embed", source)
    frames = tensor_shape(state, "TE.Temporal_pos_embed", source)[1]
    return {
        "dim": dim,
        "L_s": block_count(state, "SE.Spatial_blocks", "fusionformer", source),
        "L_c": block_count(state, "STE.Self_Trajectory_blocks", "fusionformer", source),
        "refine_hidden": tensor_shape(state, "post_refine.0.weight", source)[0] // frames,
        "variant": "official",
        **block_options(state, "SE.Spatial_blocks", dim, source),
    }, int(joints)


def _values_from_official(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Fusionformer config values from its constructor arguments (`OfficialCheckpoint.official_values`):
    the code builds all four encoders with `depth` (L_s = L_c = depth)."""
    depth = int(kwargs["depth"])
    return {"dim": int(kwargs["embed_dim_ratio"]), "L_s": depth, "L_c": depth, "variant": "official",
            **mlp_options(kwargs)}


# Released `Fusionformer` (common/Fusionformer.py) and `refine` (common/refine.py), whose two
# state dicts are merged on import (their keys do not overlap). Official key prefix -> raylift's,
# first match wins.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("SE.Spatial_patch_to_embedding.", "gim.spatial.embed."),
    ("SE.Spatial_pos_embed", "gim.spatial.encoder.pos"),
    ("SE.Spatial_blocks.", "gim.spatial.encoder.blocks."),
    ("SE.Spatial_norm.", "gim.spatial.encoder.norm."),
    ("TE.Temporal_pos_embed", "gim.temporal.encoder.pos"),
    ("TE.Temporal_blocks.", "gim.temporal.encoder.blocks."),
    ("TE.Temporal_norm.", "gim.temporal.encoder.norm."),
    ("STE.Self_Trajectory_patch_to_embedding.", "lim.self_trajectory.embed."),
    ("STE.Self_Trajectory_pos_embed", "lim.self_trajectory.encoder.pos"),
    ("STE.Self_Trajectory_blocks.", "lim.self_trajectory.encoder.blocks."),
    ("STE.Self_Trajectory_norm.", "lim.self_trajectory.encoder.norm."),
    ("CTE.Cross_Trajectory_pos_embed", "lim.cross_trajectory.encoder.pos"),
    ("CTE.Cross_Trajectory_blocks.", "lim.cross_trajectory.encoder.blocks."),
    ("CTE.Cross_Trajectory_norm.", "lim.cross_trajectory.encoder.norm."),
    ("glf.fc.", "fusion.gate."),
    ("glf.fusion.0.", "fusion.norm."),
    ("glf.fusion.1.", "fusion.conv."),
    ("head.0.", "head.norm."),
    ("head.1.", "head.proj."),
    ("post_refine.0.", "refine.fc1."),
    ("post_refine.3.", "refine.fc2."),
)
# How `models/convert.py` imports its checkpoints: two files, the transformer and the refinement.
OFFICIAL_CHECKPOINT = OfficialCheckpoint(
    OFFICIAL_PREFIXES, frames_at=("TE.Temporal_pos_embed", 1), refine_file=True,
    infer_values=_values_from_shapes, official_values=_values_from_official,
    unused=(r"fcn\.\d+\.\w+",),  # LayerNorm + Conv1d(4T -> T) built, never called (glf fuses)
)
