"""What a model costs to run: forward multiply-accumulates (MACs) per predicted frame, and parameters.

MACs are counted with `torch.utils.flop_counter.FlopCounterMode` on one forward pass of one window
(batch 1) in eval mode, on the meta device: the model's own weights are swapped for meta tensors
of the same shapes (`torch.func.functional_call`), so nothing is computed, no memory is taken, no
random generator is drawn from, and the model's weights, gradients and train/eval modes are left
as they were. What counts: every matrix multiply (Linear layers, the attention matmuls Q·Kᵀ and
A·V, any einsum/bmm) and convolutions; not counted: softmax, normalisations, activations, residual
additions and position embeddings (elementwise, <1% of these models' totals). MACs = FLOPs / 2.

"Per frame" divides by the frames one window's forward predicts: T for seq2seq models, 1 for
seq2frame ones (each model class's `output_mode`; the convention of each paper). That is the fair
comparison across window lengths: a seq2frame model runs its whole window for every frame it
predicts, a seq2seq model once for T frames.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from models.registry import count_parameters


def example_input(model: nn.Module, batch: int, frames: int, joints: int, device: Any = "cpu") -> torch.Tensor:
    """A random input batch of the shape `model` takes: 2D keypoints (B, T, J, 2), multiview
    (B, T, V, J, 2), image models (`input_kind = "images"`) crops (B, T, V, C, H, W).

    Multiview models give their camera count as a `views` attribute or config field (default 4,
    the synchronized H36M cameras); image models their crop channels and size as the config's
    `in_chans` and `img_size`.
    """
    cfg = getattr(model, "cfg", None)
    if getattr(model, "input_kind", "keypoints") == "images":
        views = int(getattr(cfg, "views", 1)) if getattr(model, "multiview", False) else 1
        size = int(cfg.img_size)
        return torch.randn(batch, frames, views, int(cfg.in_chans), size, size, device=device)
    if getattr(model, "multiview", False):
        views = int(getattr(model, "views", getattr(cfg, "views", 4)))
        return torch.randn(batch, frames, views, joints, 2, device=device)
    return torch.randn(batch, frames, joints, 2, device=device)


def frames_predicted(model: nn.Module, frames: int) -> int:
    """Frames one window of `frames` yields a prediction for: T (seq2seq) or 1 (seq2frame)."""
    return int(frames) if model.output_mode == "seq2seq" else 1


def forward_flops(model: nn.Module, frames: int, joints: int) -> tuple[int, dict[str, int]]:
    """FLOPs of one batch-1 eval-mode forward of `model` (any device, weights untouched; see the
    module doc), in total and per aten op (e.g. "mm", "bmm", "convolution")."""
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in [*model.named_parameters(), *model.named_buffers()]}
    modes = [(m, m.training) for m in model.modules()]
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        x = example_input(model, 1, frames, joints, device="meta")
        with counter, torch.no_grad():
            functional_call(model, meta, (x,), tie_weights=True, strict=True)
    finally:
        for module, training in modes:
            module.training = training
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def macs_per_frame(model: nn.Module, frames: int, joints: int) -> float:
    """Forward MACs per predicted frame of `model` on windows of `frames` frames of `joints` joints."""
    flops, _ = forward_flops(model, frames, joints)
    return flops / 2 / frames_predicted(model, frames)


def model_cost(model: nn.Module, frames: int, joints: int) -> dict[str, float]:
    """{"macs_per_frame", "params"}: what one epoch row and one trials-table row report."""
    return {"macs_per_frame": macs_per_frame(model, frames, joints), "params": float(count_parameters(model))}
