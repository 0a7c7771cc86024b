"""Shared transformer layers: fused attention, MLP, pre-norm block, stochastic depth.

Parameter names (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`) follow the timm
ViT blocks that MixSTE, PoseFormer and their descendants build on, so official checkpoints map onto
these modules key for key. Attention always goes through
`torch.nn.functional.scaled_dot_product_attention`: no (tokens x tokens) softmax matrix is ever
materialised in Python, bf16 autocast picks the fused kernels, and `torch.compile` traces it.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

# The field's LayerNorm: eps 1e-6 (timm ViT, MixSTE, PoseFormer).
LayerNorm: Callable[[int], nn.LayerNorm] = partial(nn.LayerNorm, eps=1e-6)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability `p` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis, fused (SDPA).

    x: (B, N, C) -> (B, N, C). Scale is head_dim ** -0.5 as in the official codes (their
    `qk_scale=None`). With `qk_gains`, q and k are multiplied by two learned scalars first
    (Fusionformer's cross-trajectory attention `CTA`; its names `q_mask`/`k_mask` are kept so
    the released weights map key for key, although they are gains, not masks).
    With `self_only`, an identity attention mask lets each token attend only to itself: the same
    parameters and computation, but no information passes between tokens (an ablation control).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        qk_gains: bool = False,
        self_only: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.q_mask = nn.Parameter(torch.ones(1, 1, 1)) if qk_gains else None
        self.k_mask = nn.Parameter(torch.ones(1, 1, 1)) if qk_gains else None
        self.self_only = self_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, C/H)
        if self.q_mask is not None:
            q, k = q * self.q_mask, k * self.k_mask
        mask = torch.eye(n, dtype=torch.bool, device=x.device) if self.self_only else None  # (N, N): i sees i
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))) [-> between(x)] -> x + DropPath(MLP(LN(x))).

    `between` is an optional module applied after the attention residual and before the MLP
    (CrossFormer's Cross-Joint / Cross-Frame Interaction, paper eqs. (6) and (9)); it carries its
    own residual connection. `layer_scale` (CaiT's LayerScale, used by the released CrossFormer)
    multiplies each residual branch by a learned per-channel vector `gamma1` (attention) /
    `gamma2` (MLP) initialised to that value. `eps` is the LayerNorms' epsilon (the field's 1e-6;
    PyTorch's default 1e-5 where a released code uses plain `nn.LayerNorm`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        between: Optional[nn.Module] = None,
        eps: float = 1e-6,
        layer_scale: Optional[float] = None,
        qk_gains: bool = False,
        self_only: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop, qk_gains, self_only)
        self.drop_path = DropPath(drop_path)
        self.between = between
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        scale = (lambda: nn.Parameter(layer_scale * torch.ones(dim))) if layer_scale is not None else (lambda: None)
        self.gamma1, self.gamma2 = scale(), scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        x = x + self.drop_path(_scaled(self.attn(self.norm1(x)), self.gamma1))
        if self.between is not None:
            x = self.between(x)
        return x + self.drop_path(_scaled(self.mlp(self.norm2(x)), self.gamma2))


def _scaled(x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
    """x * gamma (LayerScale), or x when there is no gamma."""
    return x if gamma is None else x * gamma


class PoseHead(nn.Module):
    """LayerNorm + Linear to the output coordinates (official `head = Sequential(LN, Linear)`).

    The official head LayerNorm uses PyTorch's default eps 1e-5, unlike the blocks' 1e-6.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


def drop_path_schedule(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates rising linearly 0 -> rate over `depth` blocks (timm convention).

    Computed on the CPU whatever the default device, so models can be built under
    `torch.device("meta")` (FLOP counting) with the same float32 rates as the official codes.
    """
    return [float(r) for r in torch.linspace(0, rate, depth, device="cpu")] if depth > 0 else []
