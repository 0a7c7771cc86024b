"""Losses on constructed tensors: hand-checked values, masks, root handling, gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.losses import build_loss, forward_for_loss, joint_weights, supports_return_all
from preprocessing.skeleton import H36M_JOINT_WEIGHTS, MPI17


def batch_of(target: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    b = {"positions_3d": target}
    if mask is not None:
        b["mask"] = mask
    return b


def test_mpjpe_loss_known_offset_and_padding_excluded():
    target = torch.zeros(2, 1, 17, 3)
    pred = torch.zeros(2, 1, 17, 3)
    pred[0, :, :, :2] = torch.tensor([0.03, 0.04])  # 50 mm everywhere in window 0
    pred[1] = 7.0  # window 1 is padding (mask 0): must not count
    pred.requires_grad_(True)
    loss_fn = build_loss("poseformer")
    loss, logs = loss_fn(pred, batch_of(target, torch.tensor([[1.0], [0.0]])))
    assert loss.item() == pytest.approx(0.05)
    assert logs["mpjpe_mm"] == pytest.approx(50.0)
    loss.backward()
    # d/dpred of the mean norm: unit direction / (17 counted joints); zero on padding.
    expected = torch.tensor([0.6, 0.8, 0.0]) / 17
    torch.testing.assert_close(pred.grad[0, 0, 5], expected)
    assert pred.grad[1].abs().sum() == 0
    assert build_loss("crossformer")(pred, batch_of(target, torch.tensor([[1.0], [0.0]])))[0].item() == pytest.approx(0.05)


def test_target_root_is_zeroed():
    target = torch.zeros(1, 1, 17, 3)
    target[..., 0, :] = 1.0  # a root trajectory left in the target is ignored
    assert build_loss("poseformer")(torch.zeros(1, 1, 17, 3), batch_of(target))[0].item() == 0.0
    # MPI layout: the root is the pelvis, joint 14.
    target_mpi = torch.zeros(1, 1, 17, 3)
    target_mpi[..., MPI17.root, :] = 1.0
    assert build_loss("poseformer", layout="mpi_inf_3dhp")(torch.zeros(1, 1, 17, 3), batch_of(target_mpi))[0].item() == 0.0
    assert build_loss("poseformer")(torch.zeros(1, 1, 17, 3), batch_of(target_mpi))[0].item() > 0


def test_mixste_weights():
    w = joint_weights("h36m", 17)
    assert w.tolist() == list(map(float, H36M_JOINT_WEIGHTS))
    assert w[12] == 4.0 and w[2] == 2.5 and w[0] == 1.0
    assert joint_weights("mpi_inf_3dhp", 17).tolist() == [1.0] * 17
    assert joint_weights("h36m", 16).tolist() == [1.0] * 16


def test_mixste_loss_hand_values():
    loss_fn = build_loss("mixste")
    target = torch.zeros(1, 3, 17, 3)
    # Static 0.1 m error on joint 2 (weight 2.5): WMPJPE = 2.5*0.1/17, no TC, no velocity error.
    pred = torch.zeros(1, 3, 17, 3)
    pred[:, :, 2, 1] = 0.1
    loss, logs = loss_fn(pred, batch_of(target))
    assert logs["wmpjpe"] == pytest.approx(0.25 / 17)
    assert logs["tc"] == pytest.approx(0.0) and logs["mpjve"] == pytest.approx(0.0)
    assert loss.item() == pytest.approx(0.25 / 17)
    # Joint 12 (weight 4) moving 0.1 m per frame in x, target still.
    pred = torch.zeros(1, 3, 17, 3)
    pred[0, :, 12, 0] = torch.tensor([0.0, 0.1, 0.2])
    pred.requires_grad_(True)
    loss, logs = loss_fn(pred, batch_of(target))
    wmpjpe = 4 * (0.0 + 0.1 + 0.2) / (3 * 17)
    tc = 4 * (0.01 + 0.01) / (2 * 17 * 3)  # mean over steps, joints and xyz of w * diff^2
    vel = (0.1 + 0.1) / (2 * 17)
    assert logs["wmpjpe"] == pytest.approx(wmpjpe)
    assert logs["tc"] == pytest.approx(tc)
    assert logs["mpjve"] == pytest.approx(vel)
    assert loss.item() == pytest.approx(wmpjpe + 0.5 * tc + 2.0 * vel)
    assert logs["mpjpe_mm"] == pytest.approx(1000 * 0.3 / (3 * 17))
    loss.backward()
    assert pred.grad is not None and pred.grad[0, :, 12].abs().sum() > 0
    assert pred.grad[0, :, 3].abs().sum() == 0  # joints without error get no gradient


def test_mixste_loss_masks_padding_frames_and_steps():
    loss_fn = build_loss("mixste")
    target = torch.zeros(1, 3, 17, 3)
    pred = torch.zeros(1, 3, 17, 3)
    pred[0, :, 12, 0] = torch.tensor([0.0, 0.1, 9.0])  # frame 2 is padding with garbage
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, logs = loss_fn(pred, batch_of(target, mask))
    assert logs["wmpjpe"] == pytest.approx(4 * 0.1 / (2 * 17))
    assert logs["tc"] == pytest.approx(4 * 0.01 / (1 * 17 * 3))  # only step 0 -> 1 counts
    assert logs["mpjve"] == pytest.approx(0.1 / 17)
    # An all-padding batch gives a zero loss that still backpropagates.
    pred.requires_grad_(True)
    zero, _ = loss_fn(pred, batch_of(target, torch.zeros(1, 3)))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.all(pred.grad == 0)


def test_mixste_gradient_is_the_true_gradient():
    # Unlike MixSTE's backward(loss.detach()), gradients must not be scaled by the loss value.
    loss_fn = build_loss("mixste")
    target = torch.zeros(1, 2, 17, 3)
    pred = torch.zeros(1, 2, 17, 3)
    pred[0, :, 0, 0] = 0.5  # static error on joint 0 (weight 1): only WMPJPE contributes
    pred.requires_grad_(True)
    loss, _ = loss_fn(pred, batch_of(target))
    loss.backward()
    assert pred.grad[0, 0, 0, 0].item() == pytest.approx(1 / (2 * 17))


def test_fusionformer_loss_two_terms():
    loss_fn = build_loss("fusionformer")
    target = torch.zeros(2, 5, 17, 3)
    pose = torch.zeros(2, 5, 17, 3)
    pose[..., 0] = 0.02  # 20 mm everywhere
    refined = torch.zeros(2, 1, 17, 3)
    refined[..., 2] = 0.01  # 10 mm on the centre frame
    mask = torch.ones(2, 5)
    mask[1, 2] = 0.0  # window 1's centre is padding: only window 0 counts for the refined term
    refined[1] = 3.0
    loss, logs = loss_fn({"pose": pose, "refined": refined}, batch_of(target, mask))
    assert logs["mpjpe_pose"] == pytest.approx(0.02)
    assert logs["mpjpe_refined"] == pytest.approx(0.01)
    assert loss.item() == pytest.approx(0.03)
    weighted = build_loss("fusionformer", lambda_m=2.0, lambda_r=0.5)
    assert weighted({"pose": pose, "refined": refined}, batch_of(target, mask))[0].item() == pytest.approx(0.045)
    with pytest.raises(ValueError, match="return_all"):
        loss_fn(pose, batch_of(target, mask))


def test_multiview_loss_averages_views():
    loss_fn = build_loss("multiview")
    target = torch.zeros(1, 2, 4, 17, 3)
    pred = torch.zeros(1, 2, 4, 17, 3)
    for v in range(4):
        pred[:, :, v, :, 0] = 0.01 * (v + 1)  # view v off by 10(v+1) mm
    pred[:, 1] = 5.0  # frame 1 padding
    loss, logs = loss_fn(pred, batch_of(target, torch.tensor([[1.0, 0.0]])))
    assert loss.item() == pytest.approx(0.025)
    assert logs["mpjpe_view3"] == pytest.approx(0.04)


def test_unknown_names_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("mixste", "l2")
    with pytest.raises(ValueError, match="no automatic loss"):
        build_loss("nope")
    with pytest.raises(ValueError, match="shape"):
        build_loss("poseformer")(torch.zeros(1, 3, 17, 3), batch_of(torch.zeros(1, 1, 17, 3)))


class PlainNet(nn.Module):
    def forward(self, x):
        return torch.cat([x, x[..., :1]], dim=-1)


class AllNet(nn.Module):
    def forward(self, x, return_all: bool = False):
        pose = torch.cat([x, x[..., :1]], dim=-1)
        if return_all:
            return {"pose": pose, "refined": pose[:, pose.shape[1] // 2 :][:, :1]}
        return pose


class Wrapper(nn.Module):
    """Stands in for DDP: exposes the wrapped model as `.module` and forwards kwargs."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_forward_for_loss_picks_the_call():
    x = torch.zeros(2, 5, 17, 2)
    assert not supports_return_all(PlainNet())
    assert isinstance(forward_for_loss(PlainNet(), x), torch.Tensor)
    out = forward_for_loss(AllNet(), x)
    assert set(out) == {"pose", "refined"} and out["refined"].shape == (2, 1, 17, 3)
    assert supports_return_all(Wrapper(AllNet()))
    assert set(forward_for_loss(Wrapper(AllNet()), x)) == {"pose", "refined"}
    loss, _ = build_loss("fusionformer")(forward_for_loss(Wrapper(AllNet()), x), batch_of(torch.zeros(2, 5, 17, 3)))
    assert loss.item() == 0.0


def test_real_mixste_model_trains_through_the_loss():
    from models import registry

    cfg = registry.parse_model_config({"name": "mixste", "dim": 16, "depth": 1, "heads": 2})
    model = registry.build_model(cfg, frames=9, joints=17)
    x = torch.randn(2, 9, 17, 2)
    target = torch.randn(2, 9, 17, 3) * 0.1
    mask = torch.ones(2, 9)
    mask[1, 7:] = 0
    loss, logs = build_loss("mixste")(forward_for_loss(model, x), batch_of(target, mask))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert set(logs) == {"loss", "wmpjpe", "tc", "mpjve", "mpjpe_mm"}


# ----------------------------------------------------------------------------- precision
def _reference_mixste(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MixSTE's loss in float64 from the exact targets (root zeroed), all frames real."""
    p, t = pred.double(), target.double().clone()
    t[..., 0, :] = 0.0
    w = torch.tensor(H36M_JOINT_WEIGHTS, dtype=torch.float64)
    wmpjpe = (torch.linalg.vector_norm(p - t, dim=-1) * w).mean()
    dp, dt = p[:, 1:] - p[:, :-1], t[:, 1:] - t[:, :-1]
    tc = (dp.square() * w[:, None]).mean()
    vel = torch.linalg.vector_norm(dp - dt, dim=-1).mean()
    return wmpjpe + 0.5 * tc + 2.0 * vel


def test_losses_are_fp32_from_fp32_targets_under_bf16_autocast():
    """A bf16 prediction (what an autocast forward returns) must be scored in fp32 against the
    fp32 targets: bf16 rounds metres in 2-4 mm steps, the size of the velocity terms."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 9, 17, 3, generator=g) * 0.4 + 1.0  # metres, as in a camera frame
    x = torch.randn(2, 9, 17, 3, generator=g)
    lin = nn.Linear(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = lin(x)  # bf16, like a model's autocast forward
        assert pred.dtype == torch.bfloat16
        loss, logs = build_loss("mixste")(pred, batch_of(target))
    assert loss.dtype == torch.float32
    expected = _reference_mixste(pred.float(), target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    value, _ = build_loss("poseformer")(pred[:, :1], batch_of(target[:, :1]))
    t = target[:, :1].double().clone()
    t[..., 0, :] = 0.0
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(torch.linalg.vector_norm(pred[:, :1].double() - t, dim=-1).mean().item(), rel=1e-5)


def test_camera_kwargs_from_the_windows_columns():
    """Fusionformer's refinement reads the normalised intrinsics and the ground-truth root depth
    (model.root_depth: gt, as the authors' run.py) from the batch's columns; a model without
    `camera_inputs` reads nothing."""
    from models.fusionformer import Fusionformer, FusionformerConfig
    from models.losses import camera_kwargs, normalised_intrinsics
    from preprocessing.errors import DataError

    intr = torch.tensor([[1145.0449, 1143.7811, 512.5415, 515.4515, 0, 0, 0, 0, 0]])
    size = torch.tensor([[1000.0, 1002.0]])
    # VideoPose3D's h36m_dataset.py: f / w * 2, normalize_screen_coordinates(c): c / w * 2 - [1, h / w]
    expected = [1145.0449 / 500, 1143.7811 / 500, 512.5415 / 500 - 1, 515.4515 / 500 - 1.002]
    torch.testing.assert_close(normalised_intrinsics(intr, size)[0], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    tiny = dict(dim=8, L_s=1, L_c=1, heads=2, refine_hidden=16)
    model = Fusionformer(FusionformerConfig(**tiny), 9, 17)
    batch = {"intrinsics": intr.expand(2, 9), "image_size": size.expand(2, 2),
             "trajectory": torch.tensor([0.1, -0.2, 5.0]).repeat(2, 9, 1) + torch.linspace(0, 0.8, 9)[None, :, None]}
    kw = camera_kwargs(model, batch)
    assert kw["root_depth"].shape == (2, 9) and float(kw["root_depth"][0, 4]) == pytest.approx(5.4)
    assert camera_kwargs(model, batch, root_frame=4)["root_depth"].tolist() == pytest.approx([5.4, 5.4])
    x = torch.randn(2, 9, 17, 2) * 0.1
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward_for_loss(model, x, kw)["refined"],
                                   model(x, intrinsics=kw["intrinsics"], root_depth=kw["root_depth"]))
    estimate = Fusionformer(FusionformerConfig(**tiny, root_depth="estimate"), 9, 17)
    assert set(camera_kwargs(estimate, batch)) == {"intrinsics"}
    assert camera_kwargs(Fusionformer(FusionformerConfig(**tiny, variant="paper"), 9, 17), batch) == {}
    with pytest.raises(DataError, match="no trajectory column"):
        camera_kwargs(model, {k: v for k, v in batch.items() if k != "trajectory"})
    with pytest.raises(DataError, match="no camera intrinsics"):
        camera_kwargs(model, {**batch, "intrinsics": torch.zeros(2, 9)})
    with pytest.raises(DataError, match="model.root_depth=estimate"):
        camera_kwargs(model, {**batch, "trajectory": torch.zeros(2, 9, 3)})
