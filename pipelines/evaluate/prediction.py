"""Prediction with test-time flip augmentation, per batch and over whole arrays of windows.

Test-time flip (VideoPose3D, MixSTE, PoseFormer): run the model on the input and on its mirror
image (2D x negated, left/right keypoints swapped with the skeleton's own lists), mirror the second
output back (3D x negated, left/right joints swapped) and average the two. The joint axis is -2
for every shape the models use: (B, T, J, 2) in, (B, T|1, J, 3) out; multi-view (B, T, V, J, 2)
in, (B, T, V, J, 3) out.

Models with a refinement stage (`forward_pose` + `refine_pose`: Fusionformer) are flipped as their
authors' test code does (Fusionformer run.py `input_augmentation`): the first stage runs on the
input and on its mirror, the two poses are averaged, and the refinement runs once, on the
unflipped 2D, with the camera inputs (`models.losses.camera_kwargs`) of the unflipped window.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from preprocessing.skeleton import Skeleton, get_skeleton


def _skeleton(skeleton: Union[str, Skeleton]) -> Skeleton:
    return skeleton if isinstance(skeleton, Skeleton) else get_skeleton(skeleton)


def flip_poses(x: torch.Tensor, skeleton: Union[str, Skeleton]) -> torch.Tensor:
    """Mirror 2D keypoints or 3D joints (..., J, C): negate x, swap left and right joints.

    Its own inverse: flipping twice gives back `x`.
    """
    skel = _skeleton(skeleton)
    if x.shape[-2] != skel.num_joints:
        raise ValueError(f"expected {skel.num_joints} joints ({skel.name}), got shape {tuple(x.shape)}")
    perm = torch.as_tensor(skel.flip_permutation(), device=x.device)
    sign = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    sign[0] = -1
    return x.index_select(-2, perm) * sign


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; a no-op on CPU (CPU bf16 is slower than fp32 here)."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(model: nn.Module, x: torch.Tensor, skeleton: Union[str, Skeleton], flip: bool = True,
            camera: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
    """Model output for `x`, averaged with the un-flipped output of the flipped input if `flip`
    (for a refining model: its first stage averaged, then refined once; module doc). `camera`:
    the model's camera inputs for `x` (`models.losses.camera_kwargs`).

    Runs under whatever grad/autocast mode the caller set (use `predict_windows` for inference).
    """
    from models.losses import unwrap

    camera = dict(camera or {})
    inner = unwrap(model)
    if hasattr(inner, "refine_pose"):
        pose = inner.forward_pose(x)
        if flip:
            pose = (pose + flip_poses(inner.forward_pose(flip_poses(x, skeleton)), skeleton)) / 2
        return inner.refine_pose(pose, x, **camera)
    if camera:
        raise ValueError(f"{type(inner).__name__} takes no camera inputs ({', '.join(camera)})")
    out = model(x)
    if not flip:
        return out
    out_flip = flip_poses(model(flip_poses(x, skeleton)), skeleton)
    return (out + out_flip) / 2


def predict_windows(
    model: nn.Module,
    keypoints_2d: np.ndarray,
    skeleton: Union[str, Skeleton],
    flip: bool = True,
    batch_size: int = 64,
    device: Union[str, torch.device] = "cpu",
    bf16: bool = False,
    columns: Optional[Mapping[str, np.ndarray]] = None,
    root_frame: Optional[int] = None,
) -> np.ndarray:
    """Predict every window of `keypoints_2d` (N, T, J, 2) or (N, T, V, J, 2) -> float32 numpy.

    Batches of `batch_size` go to `device` under `torch.inference_mode` with the model in eval
    mode (its previous train/eval mode is restored afterwards); `bf16` autocasts on CUDA only.
    `columns`: the windows' `intrinsics`, `image_size` and `trajectory` (one row per window), from
    which a model that declares `camera_inputs` gets them (`models.losses.camera_kwargs`, with
    `root_frame`: the window frame whose root depth it reads, None = every target frame's). Without
    `columns` (a user's 2D, no camera) such a model falls back to its own defaults.
    """
    from models.losses import camera_kwargs

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs: list[np.ndarray] = []
    try:
        with torch.inference_mode(), autocast(device, bf16):
            for start in range(0, len(keypoints_2d), batch_size):
                xb = torch.as_tensor(np.ascontiguousarray(keypoints_2d[start : start + batch_size]), dtype=torch.float32)
                camera = {}
                if columns is not None:
                    cols = {k: torch.as_tensor(np.asarray(v[start : start + batch_size])) for k, v in columns.items()}
                    camera = {k: v.to(device) for k, v in camera_kwargs(model, cols, root_frame).items()}
                out = predict(model, xb.to(device), skeleton, flip=flip, camera=camera)
                outputs.append(out.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("predict_windows: no windows to predict")
    return np.concatenate(outputs, axis=0)


def default_device(device: Optional[str] = None) -> torch.device:
    """`device` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
