"""Binary mask and box for the sounding factor k* (method.md §5.2), from a fine or a coarse score map.

Fine mode: the FC-CLIP semantic map sem[k*](x) = Σ_q (1 − v_q) p(k*|q) σ(m_q(x)) on the image grid.
Coarse mode (segmenter disabled or its checkpoint absent; the paper's "unrefined" ``*_u`` result): the co-NMF
activation U_I[:, k*] on the 24×24 token grid, bicubically upsampled to the image size.

Decision: an ABSOLUTE threshold, so a frame where k* covers nothing gives an empty mask. TACO's benchmarks
instead min-max normalise each map and sweep thresholds with the ground truth (an oracle), which cannot be
deployed and always produces some mask.

Default threshold 0.5, both modes:
* fine: the weights w_qk = (1 − v_q) p(k|q) of one query sum to at most 1 over k. FC-CLIP is trained for
  panoptic segmentation, where the non-void queries are expected to cover mostly disjoint regions, so at a
  pixel Σ_k sem[k](x) + void mass ≈ 1. sem[k*](x) > 0.5 then means k* holds a strict majority of the pixel's
  class mass: it is the pixel's argmax over the K factors (the AVSS hard-mask rule) and beats void. Where
  queries overlap the sum can exceed 1; the rule stays "k* dominates".
* coarse: U_I = sigmoid(W_I) ∈ (0, 1); 0.5 is W_I > 0, the token is more "on" than "off" for factor k*.
Neither default was tuned on data (no weights or benchmarks are available here); both are parameters.

All functions take numpy arrays or torch tensors and return numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from taco_ros.core.contract import DEFAULT_MASK_THRESHOLD

DEFAULT_COARSE_THRESHOLD = 0.5
# 8-connectivity: diagonal neighbours belong to the same object (thin parts survive the clean-up).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class MaskDecision:
    """mask: bool [H, W]; box: (x, y, w, h) in pixels, (0, 0, 0, 0) when empty (sensor_msgs/RegionOfInterest
    order is x_offset, y_offset, width, height); score: mean of the score map inside the mask (0 if empty)."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    score: float
    threshold: float

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _as_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f'{name} must be numeric, got dtype {x.dtype}')
    return x.astype(np.float32, copy=False)


def bounding_box(mask: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """Tight axis-aligned box (x, y, w, h) of the True pixels of a [H, W] mask; (0, 0, 0, 0) if none."""
    mask = _as_numpy(mask, 'mask').astype(bool)
    if mask.ndim != 2:
        raise ValueError(f'mask must be [H, W], got shape {mask.shape}')
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def clean_components(mask: np.ndarray | torch.Tensor, min_area_fraction: float = 0.0,
                     largest_only: bool = False) -> np.ndarray:
    """Connected-component clean-up (8-connected) of a [H, W] mask.

    min_area_fraction: drop components smaller than this fraction of the image (speckles).
    largest_only: keep only the largest component (one object per sounding factor).
    """
    mask = _as_numpy(mask, 'mask').astype(bool)
    if mask.ndim != 2:
        raise ValueError(f'mask must be [H, W], got shape {mask.shape}')
    if not 0.0 <= min_area_fraction < 1.0:
        raise ValueError(f'min_area_fraction must lie in [0, 1), got {min_area_fraction}')
    if not mask.any() or (min_area_fraction == 0.0 and not largest_only):
        return mask
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0  # background
    keep = sizes >= max(1.0, min_area_fraction * mask.size)
    if largest_only:
        keep &= np.arange(count + 1) == int(np.argmax(sizes))
    return keep[labels]


def decide_mask(score_map: np.ndarray | torch.Tensor, threshold: float = DEFAULT_MASK_THRESHOLD,
                min_area_fraction: float = 0.0, largest_only: bool = False) -> MaskDecision:
    """Binary mask = score_map > threshold, optional component clean-up, then its box and mean score.

    score_map: [H, W] (e.g. the FC-CLIP semantic map of k* at the image size).
    """
    scores = _as_numpy(score_map, 'score_map')
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f'score_map must be a non-empty [H, W] map, got shape {scores.shape}')
    if not np.isfinite(threshold):
        raise ValueError(f'threshold must be finite, got {threshold}')
    if not np.isfinite(scores).all():
        raise ValueError('score_map contains NaN or inf')
    mask = clean_components(scores > threshold, min_area_fraction, largest_only)
    score = float(scores[mask].mean()) if mask.any() else 0.0
    return MaskDecision(mask=mask, box=bounding_box(mask), score=score, threshold=float(threshold))


def coarse_score_map(activation: np.ndarray | torch.Tensor, out_size: tuple[int, int],
                     grid: tuple[int, int] | None = None) -> np.ndarray:
    """U_I[:, k*] on the token grid → [H, W] float32 map at out_size (the paper's unrefined map).

    activation: [N] (row-major tokens) or [h, w]; grid: (h, w) of the tokens when activation is flat
        (default: square, √N × √N — 24×24 for N = 576).
    Bicubic with align_corners=True, as TACO resizes its ``*_u`` maps; the overshoot of bicubic is clipped
    back to the activation's range [0, 1].
    """
    values = _as_numpy(activation, 'activation')
    if values.ndim == 1:
        if grid is None:
            side = math.isqrt(values.size)
            if side * side != values.size:
                raise ValueError(f'{values.size} tokens are not a square grid; pass grid=(h, w)')
            grid = (side, side)
        if grid[0] * grid[1] != values.size:
            raise ValueError(f'grid {grid} does not hold {values.size} tokens')
        values = values.reshape(grid)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f'activation must be [N] or [h, w], got shape {values.shape}')
    if len(out_size) != 2 or min(out_size) <= 0:
        raise ValueError(f'out_size must be a positive (height, width), got {out_size}')
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    up = F.interpolate(x, size=(int(out_size[0]), int(out_size[1])), mode='bicubic', align_corners=True)
    return up[0, 0].clamp_(0.0, 1.0).numpy()


def coarse_mask(activation: np.ndarray | torch.Tensor, out_size: tuple[int, int],
                threshold: float = DEFAULT_COARSE_THRESHOLD, grid: tuple[int, int] | None = None,
                min_area_fraction: float = 0.0, largest_only: bool = False) -> MaskDecision:
    """Coarse mode: :func:`coarse_score_map` then the same decision as the fine map."""
    return decide_mask(coarse_score_map(activation, out_size, grid), threshold, min_area_fraction,
                       largest_only)
