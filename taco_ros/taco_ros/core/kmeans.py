"""Seeded, batched k-means (k-means++ seeding + Lloyd iterations) for the co-NMF factor initialisation.

TACO initialises the factors V_I and V_A with the centres of a k-means of the tokens (method.md §4.1):
k-means++ seeding, ``n_restarts`` = 8 independent restarts, at most 100 Lloyd iterations, tolerance 1e-4,
Euclidean distance, a fixed seed (123), and the restart with the lowest inertia wins. This module is our own
implementation of that procedure. The Lloyd iterations of every restart of every sample run as one batched
tensor program on the tokens' device; the seeding draws come from a CPU ``torch.Generator`` reseeded for every
sample, so that a seed gives the same centres on any device and in any batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['kmeans_centres']


def _squared_distances(points: Tensor, centres: Tensor, point_norms: Tensor) -> Tensor:
    """||x_n - c_k||^2 for points [B, N, D] and centres [B, R, K, D] -> [B, R, N, K], clamped at 0.

    The restarts share the points: one [N, D] × [D, R·K] product per sample, no copy of them per restart.
    """
    batch, restarts, n_clusters, dim = centres.shape
    centre_norms = (centres * centres).sum(-1).unsqueeze(-2)  # [B, R, 1, K]
    cross = points @ centres.reshape(batch, restarts * n_clusters, dim).transpose(1, 2)  # [B, N, R·K]
    cross = cross.view(batch, -1, restarts, n_clusters).transpose(1, 2)  # [B, R, N, K]
    return (point_norms.view(batch, 1, -1, 1) - 2.0 * cross + centre_norms).clamp_min_(0.0)


def _kmeans_plus_plus(points: Tensor, n_clusters: int, n_restarts: int, seed: int) -> Tensor:
    """k-means++ seeding of one sample [N, D] for every restart: [R, K, D].

    The first centre is uniform, each next one drawn with probability ∝ D(x)², the squared distance to the
    closest centre so far. Draws come from a CPU generator seeded with ``seed``.
    """
    generator = torch.Generator(device='cpu').manual_seed(seed)
    n_points = points.shape[0]
    point_norms = (points * points).sum(-1).unsqueeze(0)
    flat = points.unsqueeze(0)
    picks = torch.randint(n_points, (n_restarts,), generator=generator)
    centres = points[picks.to(points.device)].unsqueeze(1)  # [R, 1, D]
    closest = _squared_distances(flat, centres.unsqueeze(0), point_norms)[0, :, :, 0]  # [R, N]
    for _ in range(1, n_clusters):
        weights = closest.to('cpu', torch.float64)
        # Every point coincides with a centre (duplicated tokens): fall back to a uniform draw.
        weights[weights.sum(-1) <= 0] = 1.0
        picks = torch.multinomial(weights, 1, generator=generator).view(-1)
        new = points[picks.to(points.device)].unsqueeze(1)
        centres = torch.cat([centres, new], dim=1)
        closest = torch.minimum(closest, _squared_distances(flat, new.unsqueeze(0), point_norms)[0, :, :, 0])
    return centres


def _lloyd(points: Tensor, centres: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    """Lloyd iterations on all restarts at once; returns the centres and their inertia [B, R]."""
    batch, n_points, dim = points.shape
    point_norms = (points * points).sum(-1)
    # sklearn's convention: the tolerance is relative to the mean per-feature variance of the data.
    threshold = tol * points.var(dim=1, unbiased=False).mean(-1).view(-1, 1)  # [B, 1]
    restarts, n_clusters = centres.shape[1], centres.shape[2]
    for _ in range(max_iter):
        assignment = _squared_distances(points, centres, point_norms).argmin(-1)  # [B, R, N]
        one_hot = torch.nn.functional.one_hot(assignment, n_clusters).to(points.dtype)  # [B, R, N, K]
        counts = one_hot.sum(-2).unsqueeze(-1)  # [B, R, K, 1]
        members = one_hot.permute(0, 1, 3, 2).reshape(batch, restarts * n_clusters, n_points)
        sums = (members @ points).view(batch, restarts, n_clusters, dim)  # [B, R, K, D]
        # An empty cluster keeps its previous centre.
        updated = torch.where(counts > 0, sums / counts.clamp_min(1.0), centres)
        shift = ((updated - centres) ** 2).sum((-1, -2))  # [B, R]
        centres = updated
        if bool((shift <= threshold).all()):
            break
    inertia = _squared_distances(points, centres, point_norms).min(-1).values.sum(-1)
    return centres, inertia


def kmeans_centres(
    points: Tensor,
    n_clusters: int,
    *,
    n_restarts: int = 8,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 123,
) -> Tensor:
    """Best-of-``n_restarts`` k-means centres of each sample's points.

    Args:
        points: [B, N, D] or [N, D] float tensor (the clamped tokens X_I or X_A).
        n_clusters: K, the number of centres (K <= N).
        n_restarts: independent k-means++ seedings per sample; the lowest inertia wins (TACO: 8).
        max_iter: Lloyd iteration cap (TACO: 100).
        tol: stop when the squared centre shift is below ``tol`` times the mean feature variance (TACO: 1e-4).
        seed: seed of the CPU generator used for the k-means++ draws (TACO: 123).

    Returns:
        [B, K, D] (or [K, D] for a 2-D input) centres on the device and dtype of ``points``.
    """
    squeeze = points.dim() == 2
    if squeeze:
        points = points.unsqueeze(0)
    if points.dim() != 3:
        raise ValueError(f'kmeans_centres expects points [B, N, D] or [N, D], got {tuple(points.shape)}')
    if not 1 <= n_clusters <= points.shape[1]:
        raise ValueError(f'kmeans_centres: n_clusters={n_clusters} must be in [1, N={points.shape[1]}]')
    if n_restarts < 1 or max_iter < 0:
        raise ValueError('kmeans_centres: n_restarts must be >= 1 and max_iter >= 0')
    with torch.no_grad():
        # Seeded per sample, so that a batch gives the same centres as separate calls.
        seeds = torch.stack([_kmeans_plus_plus(sample, n_clusters, n_restarts, seed) for sample in points])
        centres, inertia = _lloyd(points, seeds, max_iter, tol)
        best = inertia.argmin(-1)  # [B]
        chosen = centres[torch.arange(points.shape[0], device=points.device), best]
    return chosen.squeeze(0) if squeeze else chosen
