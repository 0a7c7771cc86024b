"""Test-time flip: mirror maths, equivariant models, manual averaging, whole-array prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.evaluate.prediction import flip_poses, predict, predict_windows
from preprocessing.skeleton import H36M17, MPI17


class JointwiseLift(nn.Module):
    """(x, y) -> (a x, b y, c y + d), the same for every joint: commutes with flipping."""

    def forward(self, x):
        return torch.stack([2.0 * x[..., 0], -0.5 * x[..., 1], 3.0 * x[..., 1] + 0.25], dim=-1)


class MixingLift(nn.Module):
    """A linear map over all joints and frames at once: not flip-equivariant."""

    def __init__(self, frames: int, joints: int, out_frames: int):
        super().__init__()
        torch.manual_seed(0)
        self.out = (out_frames, joints, 3)
        self.fc = nn.Linear(frames * joints * 2, out_frames * joints * 3)

    def forward(self, x):
        return self.fc(x.flatten(1)).view(x.shape[0], *self.out)


def test_flip_swaps_sides_negates_x_and_is_an_involution():
    x = torch.randn(3, 4, 17, 2)
    f = flip_poses(x, H36M17)
    torch.testing.assert_close(f[..., 4, 0], -x[..., 1, 0])  # LHip <- mirrored RHip
    torch.testing.assert_close(f[..., 4, 1], x[..., 1, 1])
    torch.testing.assert_close(f[..., 0, :], x[..., 0, :] * torch.tensor([-1.0, 1.0]))  # centre joint
    torch.testing.assert_close(flip_poses(f, H36M17), x)
    y = torch.randn(2, 5, 4, 17, 3)  # multi-view 3D
    torch.testing.assert_close(flip_poses(flip_poses(y, "mpi_inf_3dhp"), "mpi_inf_3dhp"), y)
    torch.testing.assert_close(flip_poses(y, MPI17)[..., 5, 2], y[..., 2, 2])  # z kept, LShoulder <- RShoulder
    with pytest.raises(ValueError, match="joints"):
        flip_poses(torch.zeros(1, 16, 2), H36M17)


def test_flip_equivariant_model_is_unchanged_by_test_time_flip():
    model = JointwiseLift()
    x = torch.randn(2, 9, 17, 2)
    torch.testing.assert_close(predict(model, x, H36M17, flip=True), model(x))
    xm = torch.randn(2, 9, 4, 17, 2)  # multi-view input
    torch.testing.assert_close(predict(model, xm, H36M17, flip=True), model(xm))


def test_flip_averages_with_the_unflipped_mirror_prediction():
    model = MixingLift(frames=5, joints=17, out_frames=1)
    x = torch.randn(3, 5, 17, 2)
    with torch.no_grad():
        direct = model(x)
        mirror_in = x.clone()
        mirror_in[..., 0] *= -1
        left, right = list(H36M17.left), list(H36M17.right)
        mirror_in[..., left + right, :] = mirror_in[..., right + left, :]
        mirror_out = model(mirror_in)
        mirror_out[..., 0] *= -1
        mirror_out[..., left + right, :] = mirror_out[..., right + left, :]
        manual = (direct + mirror_out) / 2
        got = predict(model, x, H36M17, flip=True)
    torch.testing.assert_close(got, manual)
    assert not torch.allclose(got, direct)  # the model is not equivariant: flip matters
    torch.testing.assert_close(predict(model, x, H36M17, flip=False), direct)


def test_predict_windows_batches_modes_and_dtype():
    model = MixingLift(frames=5, joints=17, out_frames=1)
    model.train()
    kp = np.random.default_rng(1).normal(size=(10, 5, 17, 2)).astype(np.float32)
    whole = predict_windows(model, kp, H36M17, flip=True, batch_size=64)
    chunks = predict_windows(model, kp, H36M17, flip=True, batch_size=3)
    assert whole.shape == (10, 1, 17, 3) and whole.dtype == np.float32
    np.testing.assert_allclose(chunks, whole, rtol=1e-5, atol=1e-6)
    assert model.training  # mode restored
    with torch.no_grad():
        ref = predict(model.eval(), torch.from_numpy(kp), H36M17, flip=True).numpy()
    np.testing.assert_allclose(whole, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        predict_windows(model, kp, H36M17, batch_size=0)


def test_predict_windows_with_a_registry_model():
    from models import registry

    cfg = registry.parse_model_config({"name": "poseformer", "spatial_dim": 8, "depth": 1, "heads": 2})
    model = registry.build_model(cfg, frames=9, joints=17)
    kp = np.random.default_rng(2).normal(size=(4, 9, 17, 2)).astype(np.float32)
    out = predict_windows(model, kp, H36M17, flip=True, batch_size=3)
    assert out.shape == (4, 1, 17, 3) and np.isfinite(out).all()
    plain = predict_windows(model, kp, H36M17, flip=False, batch_size=3)
    assert not np.allclose(out, plain)
