"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

FC-CLIP's pixel decoder calls a compiled CUDA op (``MultiScaleDeformableAttention``). The same sampling is
bilinear interpolation with zero padding at fractional positions, i.e. ``F.grid_sample`` with
``align_corners=False``: a location x ∈ [0, 1] (fraction of the map width, pixel centres at (j + 0.5)/W) maps
to grid coordinate 2x − 1. That runs on CPU and CUDA, costs more memory than the fused kernel (the sampled
values [N·M, D, Lq, P] of one level exist at once) and is numerically the same up to float rounding.

Shapes: N batch, Lq queries, S = Σ_l H_l·W_l values, M heads, D = C/M channels per head, L levels, P points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_shapes(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                  attention_weights: Tensor) -> None:
    if value.ndim != 4:
        raise ValueError(f'value must be [N, S, M, D], got shape {tuple(value.shape)}')
    if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError('sampling_locations must be [N, Lq, M, L, P, 2], '
                         f'got shape {tuple(sampling_locations.shape)}')
    n, s, m, _ = value.shape
    n2, lq, m2, levels, points, _ = sampling_locations.shape
    if (n2, m2, levels) != (n, m, len(spatial_shapes)):
        raise ValueError(f'sampling_locations {tuple(sampling_locations.shape)} does not match value '
                         f'{tuple(value.shape)} and {len(spatial_shapes)} levels')
    if tuple(attention_weights.shape) != (n, lq, m, levels, points):
        raise ValueError(f'attention_weights must be {(n, lq, m, levels, points)}, '
                         f'got {tuple(attention_weights.shape)}')
    total = sum(int(h) * int(w) for h, w in spatial_shapes)
    if total != s:
        raise ValueError(f'value has {s} positions but spatial_shapes {list(spatial_shapes)} sum to {total}')


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Σ_l Σ_p A[n,q,m,l,p] · bilinear(V_l[n,:,m], loc[n,q,m,l,p]) for every head, heads concatenated.

    value: [N, S, M, D], levels concatenated in ``spatial_shapes`` order (row-major inside a level).
    spatial_shapes: (H_l, W_l) per level, Python ints.
    sampling_locations: [N, Lq, M, L, P, 2] as (x, y) fractions of the level's width/height.
    attention_weights: [N, Lq, M, L, P] (already softmaxed over L·P by the caller).
    Returns [N, Lq, M·D]. Samples outside the map read zeros.
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    lq, points = sampling_locations.shape[1], sampling_locations.shape[4]
    grids = 2.0 * sampling_locations - 1.0
    out = value.new_zeros(n * m, d, lq)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        h, w = int(h), int(w)
        # [N, HW, M, D] → [N·M, D, H, W]: one image per (batch, head).
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        start += h * w
        # Point-major grid [N·M, P, Lq, 2]: the weighted sum over points then runs over a non-innermost
        # dimension, about twice as fast on CPU as reducing a trailing dimension of size P.
        grid = grids[:, :, :, level].permute(0, 2, 3, 1, 4).reshape(n * m, points, lq, 2)
        sampled = F.grid_sample(v, grid.to(v.dtype), mode='bilinear', padding_mode='zeros',
                                align_corners=False)  # [N·M, D, P, Lq]
        weights = attention_weights[:, :, :, level].permute(0, 2, 3, 1).reshape(n * m, 1, points, lq)
        out += sampled.mul_(weights.to(sampled.dtype)).sum(2)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention over L feature levels (state-dict names as in Deformable DETR / FC-CLIP).

    Each query predicts, per head and level, P offsets around its reference point and L·P attention weights
    (softmax within the head); the output is the weighted sum of the bilinearly sampled projected values.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f'd_model={d_model} is not divisible by n_heads={n_heads}')
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on a star of P rings, attention uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        rings = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * rings
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """query [N, Lq, C] (with position), reference_points [N, Lq, L, 2] as (x, y) in [0, 1],
        input_flatten [N, S, C] (without position) → [N, Lq, C]."""
        n, lq, _ = query.shape
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(f'expected {self.n_levels} levels, got spatial_shapes {list(spatial_shapes)}')
        if tuple(reference_points.shape) != (n, lq, self.n_levels, 2):
            raise ValueError(f'reference_points must be {(n, lq, self.n_levels, 2)}, '
                             f'got {tuple(reference_points.shape)}')
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten).view(n, input_flatten.shape[1], m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to get fractions.
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype,
                                  device=query.device).view(1, 1, 1, -1, 1, 2)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
