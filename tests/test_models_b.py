"""Model-specific tests for CrossFormer, Fusionformer and the multi-view relation transformer.

Parameter counts are checked against closed-form counts written out here from each paper's
structure (independent of the module code); behaviour on tiny models: shapes across T, J, V,
gradients to every parameter, eval determinism, bf16 autocast, view equivariance, windowed
attention locality, and that a tiny model memorises a handful of windows.
"""
from __future__ import annotations

import math

import pytest
import torch

from models.crossformer import CrossFormer, CrossFormerConfig, CrossFrameInteraction, CrossJointInteraction
from models.fusionformer import Fusionformer, FusionformerConfig, weak_perspective_lift
from models.multiview import MultiViewConfig, MultiViewRelationTransformer, SpatialModule
from models.poseformer import PoseFormer, PoseFormerConfig
from models.registry import build_model, count_parameters, parse_model_config

TINY_CROSS = dict(spatial_dim=8, depth=2, heads=2, variant="paper")  # the official variants: test_parity_*.py
TINY_FUSION = dict(dim=8, L_s=1, L_c=1, heads=2, refine_hidden=32, variant="paper")
TINY_MV = dict(dim=8, spatial_depth=2, relation_depth=1, heads=2)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models are overhead-bound: intra-op threads only contend with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def block_params(d: int, mlp_ratio: float = 2.0) -> int:
    """Pre-norm ViT block: 2 LayerNorms, qkv, proj, fc1, fc2 (all with bias)."""
    h = int(d * mlp_ratio)
    return 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)


def encoder_params(tokens: int, d: int, depth: int) -> int:
    """Learned positions + blocks + final LayerNorm."""
    return tokens * d + depth * block_params(d) + 2 * d


def mpjpe(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=-1).mean()


def assert_all_grads(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


# ----------------------------------------------------------------------------------------- CrossFormer


def crossformer_added_params(c: int, depth: int, joints: int, frames: int, k_cji=5, k_cfi=3, groups=3) -> int:
    """Hand count of the modules CrossFormer adds to PoseFormer."""
    cji = 2 * c + 2 * (k_cji * c + c) + 2 * c  # LN, two depth-wise convs, GroupNorm
    g = math.gcd(frames, groups)
    cfi = 2 * joints * c + 3 * k_cfi * frames**2 + k_cfi * frames**2 // g + 2 * frames  # LN, K/Q/V, out, GN
    return depth * (cji + cfi)


@pytest.mark.parametrize("frames, expected", [(81, 9_872_373), (9, 9_573_357)])
def test_crossformer_paper_parameter_count(frames, expected):
    cfg = CrossFormerConfig(variant="paper")
    n = count_parameters(CrossFormer(cfg, frames, 17))
    base = count_parameters(PoseFormer(PoseFormerConfig(), frames, 17))
    print(f"CrossFormer T={frames}: {n:,} parameters (paper: 9.93M; PoseFormer {base:,})")
    assert n == base + crossformer_added_params(32, 4, 17, frames) == expected


@pytest.mark.parametrize("frames", [1, 9, 10, 27, 81])
@pytest.mark.parametrize("joints", [17, 16])
def test_crossformer_shapes_any_T(frames, joints):
    model = CrossFormer(CrossFormerConfig(**TINY_CROSS), frames, joints).eval()
    assert all(isinstance(b.between, CrossJointInteraction) for b in model.spatial_blocks)
    assert all(isinstance(b.between, CrossFrameInteraction) for b in model.temporal_blocks)
    out = model(torch.randn(2, frames, joints, 2))
    assert out.shape == (2, 1, joints, 3) and torch.isfinite(out).all()
    assert count_parameters(model) == count_parameters(
        PoseFormer(PoseFormerConfig(spatial_dim=8, depth=2, heads=2), frames, joints)
    ) + crossformer_added_params(8, 2, joints, frames)


def test_crossformer_registry_and_config_errors():
    from preprocessing.schema import ConfigError

    cfg = parse_model_config({"name": "crossformer", "spatial_dim": 8, "heads": 2, "depth": 1})
    assert isinstance(cfg, CrossFormerConfig) and cfg.variant == "official"
    assert build_model(cfg, 81, 17).output_mode == "seq2frame"
    with pytest.raises(ConfigError, match="T=81 frames only"):
        build_model(cfg, 27, 17)
    assert build_model(parse_model_config({"name": "crossformer", "variant": "paper", "spatial_dim": 8, "heads": 2,
                                           "depth": 1}), 27, 17).output_mode == "seq2frame"
    with pytest.raises(ConfigError, match="cji_kernel"):
        parse_model_config({"name": "crossformer", "cji_kernel": 4})
    with pytest.raises(ConfigError, match="heads"):
        parse_model_config({"name": "crossformer", "spatial_dim": 30, "heads": 8})


def test_crossformer_grads_determinism_bf16():
    torch.manual_seed(0)
    model = CrossFormer(CrossFormerConfig(**TINY_CROSS, drop_rate=0.1, drop_path_rate=0.0), 9, 17)
    x = torch.randn(3, 9, 17, 2)
    model(x).square().sum().backward()
    assert_all_grads(model)
    model.eval()
    assert torch.equal(model(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (3, 1, 17, 3) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------- Fusionformer


def fusionformer_params(frames: int, joints: int, c: int, l_s: int, l_c: int, hidden: int) -> tuple[int, int]:
    """(transformer, refinement) parameter counts from the paper's structure."""
    gim = (2 * c + c) + encoder_params(joints, c, l_s) + encoder_params(frames, joints * c, l_s)
    lim = (2 * c + c) + encoder_params(frames, c, l_c) + encoder_params(joints, frames * c, l_c)
    fusion = 2 * joints * c + (2 * frames * frames + frames)  # LayerNorm + Conv1d(2T, T, 1)
    head = 2 * c + 3 * c + 3
    refine = (6 * joints * hidden + hidden) + (hidden * 2 * joints + 2 * joints)
    return gim + lim + fusion + head, refine


def test_fusionformer_paper_parameter_count():
    model = Fusionformer(FusionformerConfig(variant="paper"), 9, 17)
    trans, refine = fusionformer_params(9, 17, 32, 4, 4, 1024)
    n = count_parameters(model)
    print(f"Fusionformer T=9 L_s=L_c=4: {n:,} = transformer {trans:,} + refinement {refine:,} (paper: 12.26M)")
    assert (trans, refine) == (12_243_150, 140_322)
    assert n == trans + refine and count_parameters(model.refine) == refine


@pytest.mark.parametrize("frames", [1, 9, 27])
@pytest.mark.parametrize("joints", [17, 16])
def test_fusionformer_shapes_and_return_all(frames, joints):
    model = Fusionformer(FusionformerConfig(**TINY_FUSION), frames, joints).eval()
    assert count_parameters(model) == sum(fusionformer_params(frames, joints, 8, 1, 1, 32))
    x = torch.randn(2, frames, joints, 2)
    final = model(x)
    out = model(x, return_all=True)
    assert final.shape == out["pose"].shape == (2, frames, joints, 3)
    assert out["refined"].shape == (2, 1, joints, 3)
    c = frames // 2
    # The final prediction is the frame-wise refinement of `pose`; its centre frame is "refined".
    torch.testing.assert_close(final[:, c : c + 1], out["refined"])
    torch.testing.assert_close(final, model.refine(out["pose"], x))
    assert not torch.allclose(final, out["pose"])


def test_refinement_lift_recovers_a_scaled_copy_of_the_2d():
    kp = torch.randn(2, 3, 17, 2)
    pose = torch.cat([0.7 * kp + torch.tensor([0.1, -0.2]), torch.randn(2, 3, 17, 1)], dim=-1)
    torch.testing.assert_close(weak_perspective_lift(pose, kp), pose)


def test_fusionformer_grads_determinism_bf16():
    torch.manual_seed(0)
    model = Fusionformer(FusionformerConfig(**TINY_FUSION, drop_rate=0.1, drop_path_rate=0.0), 9, 17)
    x = torch.randn(3, 9, 17, 2)
    out = model(x, return_all=True)
    (out["pose"].square().sum() + out["refined"].square().sum()).backward()
    assert_all_grads(model)
    model.eval()
    assert torch.equal(model(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (3, 9, 17, 3) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------ Multi-view


@pytest.mark.parametrize("frames, views, joints, window", [(1, 2, 17, 0), (9, 4, 17, 4), (27, 2, 16, 3), (9, 3, 16, 0)])
def test_multiview_shapes(frames, views, joints, window):
    model = MultiViewRelationTransformer(MultiViewConfig(**TINY_MV, spatial_window=window), frames, joints).eval()
    out = model(torch.randn(2, frames, views, joints, 2))
    assert out.shape == (2, frames, views, joints, 3) and torch.isfinite(out).all()
    assert model.multiview and model.output_mode == "seq2seq"


def test_multiview_rejects_more_views_than_embeddings():
    model = MultiViewRelationTransformer(MultiViewConfig(**TINY_MV, max_views=2), 3, 17)
    with pytest.raises(ValueError, match="max_views"):
        model(torch.randn(1, 3, 3, 17, 2))


def test_multiview_view_permutation():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 17, 2)
    perm = torch.tensor([2, 0, 3, 1])
    # Without E_3D the model is permutation-equivariant over views.
    model = MultiViewRelationTransformer(MultiViewConfig(**TINY_MV, view_embedding=False), 5, 17).eval()
    torch.testing.assert_close(model(x[:, :, perm]), model(x)[:, :, perm], atol=1e-5, rtol=1e-4)
    # With E_3D, permuting the views equals permuting the camera embeddings with them.
    model = MultiViewRelationTransformer(MultiViewConfig(**TINY_MV), 5, 17).eval()
    with torch.no_grad():
        model.relations.view_embed.normal_()
    out = model(x)
    assert not torch.allclose(model(x[:, :, perm]), out[:, :, perm], atol=1e-4)
    with torch.no_grad():
        model.relations.view_embed.copy_(model.relations.view_embed[:, :, perm])
    torch.testing.assert_close(model(x[:, :, perm]), out[:, :, perm], atol=1e-5, rtol=1e-4)


def test_spatial_window_attention_is_local_then_shifted():
    torch.manual_seed(0)
    x = torch.randn(1, 17, 2)
    y = x.clone()
    y[:, 0] += 1.0  # perturb joint 0 (window {0..3} without shift)
    one = SpatialModule(17, MultiViewConfig(**{**TINY_MV, "spatial_depth": 1}, spatial_window=4)).eval()
    changed = (one(x) - one(y)).abs().amax(dim=-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [0, 1, 2, 3]
    # The shifted second block regroups ({0,1}, {2..5}, ...): the change spreads to joints 4 and 5.
    two = SpatialModule(17, MultiViewConfig(**TINY_MV, spatial_window=4)).eval()
    changed = (two(x) - two(y)).abs().amax(dim=-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    glob = SpatialModule(17, MultiViewConfig(**{**TINY_MV, "spatial_depth": 1})).eval()
    assert ((glob(x) - glob(y)).abs().amax(dim=-1) > 1e-6).all()


def test_multiview_grads_determinism_bf16():
    torch.manual_seed(0)
    cfg = MultiViewConfig(**TINY_MV, spatial_window=4, drop_rate=0.1, drop_path_rate=0.0)
    model = MultiViewRelationTransformer(cfg, 5, 17)
    x = torch.randn(2, 5, 4, 17, 2)
    model(x).square().sum().backward()
    assert_all_grads(model)
    model.eval()
    assert torch.equal(model(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 5, 4, 17, 3) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- Overfit


def _overfit(model, x, loss_fn, lr: float, steps: int = 200) -> tuple[float, float]:
    """Adam on one fixed batch; returns (first, last) loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_tiny_models_memorise_a_handful_of_windows():
    torch.manual_seed(0)
    t, j, c = 5, 17, 2
    pose3d = 0.3 * torch.randn(4, t, 2, j, 3)  # 4 windows, 2 views
    kp = pose3d[..., :2] / (pose3d[..., 2:] + 5.0) * 2.3  # roughly perspective 2D
    zero = mpjpe(torch.zeros_like(pose3d), pose3d).item()  # error of predicting nothing (~0.48)

    cross = CrossFormer(CrossFormerConfig(**TINY_CROSS, drop_path_rate=0.0), t, j)
    first, last = _overfit(cross, kp[:, :, 0], lambda m, x: mpjpe(m(x), pose3d[:, c : c + 1, 0]), lr=2e-3)
    assert last < first / 10 and last < zero / 5, (first, last, zero)

    fusion = Fusionformer(FusionformerConfig(**TINY_FUSION, refine_drop=0.0, drop_path_rate=0.0), t, j)

    def fusion_loss(m, x):
        out = m(x, return_all=True)
        return mpjpe(out["pose"], pose3d[:, :, 0]) + mpjpe(out["refined"], pose3d[:, c : c + 1, 0])

    first, last = _overfit(fusion, kp[:, :, 0], fusion_loss, lr=4e-3)
    assert last < first / 10 and last < 2 * zero / 5, (first, last, zero)

    mv = MultiViewRelationTransformer(MultiViewConfig(**TINY_MV, spatial_window=4, drop_path_rate=0.0), t, j)
    first, last = _overfit(mv, kp, lambda m, x: mpjpe(m(x), pose3d), lr=1e-3, steps=300)
    assert last < first / 10 and last < zero / 5, (first, last, zero)
