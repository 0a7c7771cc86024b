"""Model cost (models/cost.py): MACs per predicted frame against hand counts, and a count that
leaves the model and the random generators exactly as they were."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from models.cost import forward_flops, frames_predicted, macs_per_frame, model_cost
from models.registry import build_model, count_parameters, parse_model_config

J = 17


class LinearLift(nn.Module):
    """One Linear 2 -> 3 on every joint of every frame: (B, T, J, 2) -> (B, T, J, 3)."""

    multiview = False

    def __init__(self, output_mode: str) -> None:
        super().__init__()
        self.output_mode = output_mode
        self.proj = nn.Linear(2, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.proj(x))
        return y if self.output_mode == "seq2seq" else y[:, y.shape[1] // 2:][:, :1]


def mixste(frames: int, depth: int = 2, dim: int = 32) -> nn.Module:
    cfg = parse_model_config({"name": "mixste", "dim": dim, "depth": depth, "heads": 4}, "model")
    return build_model(cfg, frames=frames, joints=J)


@pytest.mark.parametrize("mode, predicted", [("seq2seq", 9), ("seq2frame", 1)])
def test_linear_macs_are_in_times_out_times_rows(mode, predicted):
    model = LinearLift(mode)
    flops, by_op = forward_flops(model, 9, J)
    rows = 9 * J  # batch 1: every (frame, joint) token goes through the Linear
    assert flops == 2 * 2 * 3 * rows and set(by_op) == {"addmm"}
    assert frames_predicted(model, 9) == predicted
    assert macs_per_frame(model, 9, J) == 2 * 3 * rows / predicted


def test_mixste_macs_match_the_hand_count():
    """Per frame, C channels, J joints, T frames, depth d: the joint embedding (2C) and head (3C) per
    token; per block pair and token qkv + proj + MLP (ratio 2) = 8C² twice (spatial, temporal);
    attention QKᵀ and A·V over J joints (2J²C per frame) and over T frames (2TC per joint)."""
    c, d, t = 32, 2, 27
    expected = J * (2 * c + d * 16 * c * c + 3 * c) + d * (2 * J * J * c + 2 * t * c * J)
    assert macs_per_frame(mixste(t, d, c), t, J) == expected == 655_520


def test_mixste_macs_grow_linearly_with_depth_and_window():
    by_depth = [macs_per_frame(mixste(9, d), 9, J) for d in (1, 2, 4)]
    # M(d) = embed/head + d * blocks: doubling the depth doubles the blocks' part.
    assert by_depth[2] - by_depth[1] == 2 * (by_depth[1] - by_depth[0]) > 0
    by_frames = [macs_per_frame(mixste(t), t, J) for t in (3, 9, 15)]
    # Per frame, only temporal attention grows with T, linearly (T tokens attended per frame).
    assert by_frames[0] < by_frames[1] < by_frames[2]
    assert by_frames[2] - by_frames[1] == by_frames[1] - by_frames[0]


def test_counting_leaves_the_model_modes_grads_and_generators_alone():
    model = mixste(9, depth=1)
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.LayerNorm))
    frozen.eval()  # a mixed-mode model: each module's flag must come back as it was
    modes = [m.training for m in model.modules()]
    model(torch.randn(2, 9, J, 2)).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    cost = model_cost(model, 9, J)

    assert cost == {"macs_per_frame": macs_per_frame(model, 9, J), "params": float(count_parameters(model))}
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    assert grads  # the premise: there were gradients to keep
    assert all(torch.equal(p, weights[n]) and p.device.type == "cpu" for n, p in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_every_input_kind_is_counted():
    """Multiview keypoints (B, T, V, J, 2) and image crops (B, T, V, C, H, W) too."""
    multiview = build_model(parse_model_config(
        {"name": "multiview", "dim": 8, "spatial_depth": 1, "relation_depth": 1, "heads": 2}, "model"), frames=9, joints=J)
    assert macs_per_frame(multiview, 9, J) > 0

    def mpstr(views: int) -> nn.Module:
        cfg = parse_model_config({"name": "mpstr", "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                  "img_size": 64, "window_size": 2, "relation_depth": 1, "relation_heads": 2,
                                  "views": views}, "model")
        return build_model(cfg, frames=3, joints=J)

    # The per-image Swin dominates: four views cost about four times one (cross-view attention a little more).
    ratio = macs_per_frame(mpstr(4), 3, J) / macs_per_frame(mpstr(1), 3, J)
    assert 4.0 <= ratio < 4.1
