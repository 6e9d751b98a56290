"""Seeded, batched k-means (k-means++ seeding + Lloyd iterations) for the co-NMF factor initialisation.

TACO initialises the factors V_I and V_A with the centres of a k-means of the tokens (method.md §4.1), run by
the ``torch_kmeans`` library with its defaults. This module is our own implementation of the same procedure:

* ``n_restarts`` = 8 independent k-means++ seedings. The first centres of the 8 restarts are 8 *distinct*
  tokens (one uniform draw without replacement); every further centre is drawn with probability ∝ D(x)², the
  squared distance to the closest centre of that restart so far.
* Lloyd iterations (at most 100): assign each token to its closest centre (Euclidean), move each centre to the
  mean of its tokens; a centre that lost all its tokens becomes the zero vector.
* Convergence: the mean over the K centres of the L2 length of their move is below ``tol`` = 1e-4 (absolute,
  not scaled by the data) for every restart.
* The restart with the lowest inertia (sum of squared distances of the tokens to their closest centre) wins.
* Seed 123.

Two choices of ours: the draws come from a CPU ``torch.Generator`` reseeded for every sample (so a seed gives
the same centres on any device and in any batch), and every sample of a batch stops on its own convergence
(a batch gives the same centres as separate calls; the library stops a batch when all of it has converged).
The Lloyd iterations of every restart of every sample run as one batched tensor program on the tokens' device.
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

    Draw order (one generator seeded with ``seed``): the R first centres in one draw without replacement,
    then, for each further centre, one draw per restart from its D(x)² weights.
    """
    generator = torch.Generator(device='cpu').manual_seed(seed)
    n_points = points.shape[0]
    point_norms = (points * points).sum(-1).unsqueeze(0)
    flat = points.unsqueeze(0)
    uniform = torch.full((1, n_points), 1.0 / n_points)
    picks = torch.multinomial(uniform, n_restarts, replacement=False, generator=generator).view(-1)
    chosen = torch.zeros(n_restarts, n_points, dtype=torch.bool)
    chosen[torch.arange(n_restarts), picks] = True
    centres = points[picks.to(points.device)].unsqueeze(1)  # [R, 1, D]
    closest = _squared_distances(flat, centres.unsqueeze(0), point_norms)[0, :, :, 0]  # [R, N]
    for _ in range(1, n_clusters):
        # Row-major weights: the draw pairs each weight with a random number by memory position.
        weights = closest.to('cpu', torch.float32).contiguous().clone()
        weights[chosen] = 0.0  # a token already taken is never drawn again (rounding could leave it > 0)
        # Every token coincides with a centre (duplicated tokens): fall back to a uniform draw of the others.
        degenerate = weights.sum(-1) <= 0
        weights[degenerate] = (~chosen[degenerate]).float()
        picks = torch.multinomial(weights, 1, generator=generator).view(-1)
        chosen[torch.arange(n_restarts), picks] = True
        new = points[picks.to(points.device)].unsqueeze(1)
        centres = torch.cat([centres, new], dim=1)
        closest = torch.minimum(closest, _squared_distances(flat, new.unsqueeze(0), point_norms)[0, :, :, 0])
    return centres


def _lloyd(points: Tensor, centres: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    """Lloyd iterations on all restarts at once; returns the centres and their inertia [B, R].

    A sample stops moving once the mean centre shift of each of its restarts is below ``tol``.
    """
    batch, n_points, dim = points.shape
    point_norms = (points * points).sum(-1)
    restarts, n_clusters = centres.shape[1], centres.shape[2]
    active = torch.ones(batch, dtype=torch.bool, device=points.device)
    for _ in range(max_iter):
        assignment = _squared_distances(points, centres, point_norms).argmin(-1)  # [B, R, N]
        one_hot = torch.nn.functional.one_hot(assignment, n_clusters).to(points.dtype)  # [B, R, N, K]
        counts = one_hot.sum(-2).unsqueeze(-1)  # [B, R, K, 1]
        members = one_hot.permute(0, 1, 3, 2).reshape(batch, restarts * n_clusters, n_points)
        sums = (members @ points).view(batch, restarts, n_clusters, dim)  # [B, R, K, D]
        updated = sums / counts.clamp_min(1.0)  # an empty cluster: zero sum → zero centre
        shift = (updated - centres).norm(dim=-1).mean(-1)  # [B, R] mean L2 move of the K centres
        centres = torch.where(active.view(-1, 1, 1, 1), updated, centres)
        active = active & ~(shift < tol).all(-1)
        if not bool(active.any()):
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
        n_restarts: independent k-means++ seedings per sample, with distinct first centres, so at most N; the
            lowest inertia wins (TACO: 8).
        max_iter: Lloyd iteration cap (TACO: 100).
        tol: stop when the mean L2 shift of the centres is below ``tol`` in every restart (TACO: 1e-4).
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
    if not 1 <= n_restarts <= points.shape[1] or max_iter < 0:
        raise ValueError(f'kmeans_centres: n_restarts must be in [1, N={points.shape[1]}] (distinct first '
                         f'centres) and max_iter >= 0; got {n_restarts} and {max_iter}')
    with torch.no_grad():
        # Seeded per sample, so that a batch gives the same centres as separate calls.
        seeds = torch.stack([_kmeans_plus_plus(sample, n_clusters, n_restarts, seed) for sample in points])
        centres, inertia = _lloyd(points, seeds, max_iter, tol)
        best = inertia.argmin(-1)  # [B]
        chosen = centres[torch.arange(points.shape[0], device=points.device), best]
    return chosen.squeeze(0) if squeeze else chosen
