"""Every sounding object in view: the factors of one co-NMF result whose image semantics match the audio.

TACO reports one factor per window, k* = argmin_k CE_I[k], when the depth of the profile's minimum (median −
min, nats) reaches the solver's threshold. The closest-factor penalty aligns only that one pair of image and
audio factors, so the CE profile does not reveal a second source: on planted windows (streaming profile,
``bench/bench_multi.py --calibrate``) the other factors covering a source sit 0.011 nats (median) below the
profile's median, inside the range of factors covering nothing (up to 0.024), where k* sits about 0.2 below.
Their image factors, and audio factors holding their sounds, are there nonetheless, under other indices.

Rule. Pair image and audio factors across indices with the cross-modal CE matrix of the factors (the image
side read from the factor, as the label readout does; the activation-weighted component is diluted by the
background's small activations everywhere)::

    M[k, a] = −Σ_j softmax(λ cos(Proj(V_A[a]), T_A))_j log softmax(cos(V_I[k], T_I))_j

A pair's match depth is median(M) − M[k, a] (nats below a typical unrelated pair). In a window the solver
calls sounding:

1. k* is the first object, exactly as TACO reports it (labels, confidence = the solver's confidence), and it
   owns audio factor k*;
2. repeatedly, the image factor (≠ k*, non-empty coarse mask) with the deepest match to an audio factor not
   yet owned is considered; the loop ends when that depth is below ``min_match_depth``;
3. it is skipped unless the pair names one thing: the audio factor's best word must be among the image
   factor's ``agreement_top_k`` best words (an unused audio factor dragged towards an image factor by the
   solver, or an image factor mixing two objects, fails this);
4. if an object already holds its top label and their coarse masks (U_I[:, k] > ``activation_threshold``)
   overlap by ``merge_overlap`` (intersection over the smaller mask: a split factor often covers a small part
   of its object), it is merged into that object; otherwise it becomes a new object while there are fewer
   than ``max_objects``. Either way it owns its audio factor (one sound, one object).

``max_objects = 1`` (the default) is today's behaviour: k* when sounding, nothing otherwise.
Per-profile thresholds: ``SoundingRule.for_profile`` (calibration in its docstring).

``SoundingTracker`` gives each object an identity that lasts while it keeps sounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from taco_ros.core import conmf
from taco_ros.core.contract import SOLVER_PROFILES, check_choice

__all__ = [
    'Candidate',
    'FactorMatch',
    'SoundingFactor',
    'SoundingRule',
    'SoundingTracker',
    'TrackedObject',
    'factor_match',
    'factor_readout',
    'mask_iou',
    'mask_overlap',
    'select_sounding_factors',
]

# Calibrated minimum match depths (nats) per solver profile; see SoundingRule.for_profile.
_MIN_MATCH_DEPTH = {'streaming': 0.051, 'paper': 0.087}


@dataclass(frozen=True)
class SoundingRule:
    """How one co-NMF result becomes a list of sounding objects (module docstring).

    max_objects: at most this many objects per window (1 = TACO's single k*).
    min_match_depth: nats; an image-audio factor pair must match at least this much below median(M).
    agreement_top_k: the audio factor's best word must be among this many best words of the image factor
        (1: the two modalities' best words are the same).
    merge_overlap: a candidate with an object's label is that object when their coarse masks share this
        fraction of the smaller mask.
    activation_threshold: a token is in a factor's coarse mask when U_I[n, k] exceeds this (core/masks.py's
        coarse rule: W_I > 0).
    top_k: words in the label readout; None = as many as the solver's own readout of k*.
    """

    max_objects: int = 1
    min_match_depth: float = _MIN_MATCH_DEPTH['streaming']
    agreement_top_k: int = 1
    merge_overlap: float = 0.5
    activation_threshold: float = 0.5
    top_k: int | None = None

    @classmethod
    def for_profile(cls, profile: str, **overrides: object) -> SoundingRule:
        """The rule calibrated for a solver profile ('streaming' or 'paper'), then ``overrides``.

        min_match_depth: ``calibrate_sounding_threshold`` between the depths of agreeing candidates that name
        a visible source and those that do not (``bench/bench_multi.py --calibrate``: planted windows of
        seeds 100-111 with 1-3 visible sources, an off-screen sound, silence, a visible and an off-screen
        source; ``PlantedSpec.small()``, J = 64, D_P = 256). Streaming: sources 0.076-0.258 (n = 65), others
        0.028-0.035 (n = 2) → 0.051. Paper: its image factors seldom separate a second source; sources
        0.096-0.141 (n = 2), others 0.040-0.079 (n = 2) → 0.087. The label agreement rejected 254
        (streaming) and 299 (paper) pairs before any threshold. merge_overlap: split factors of one source
        overlap by 1.00 (median; min 0.17), factors of distinct sources by 0.00. Real CLIP/CLAP features
        (J = 527) need their own calibration.
        """
        reason = check_choice('solver_profile', profile, SOLVER_PROFILES)
        if reason:
            raise ValueError(f'SoundingRule.for_profile: {reason}')
        rule = replace(cls(min_match_depth=_MIN_MATCH_DEPTH[profile]), **overrides)
        rule.validate()
        return rule

    def validate(self) -> None:
        """Raise ValueError on an unusable setting."""
        if int(self.max_objects) != self.max_objects or self.max_objects < 1:
            raise ValueError(f'SoundingRule.max_objects must be an integer >= 1, got {self.max_objects}')
        if not (math.isfinite(self.min_match_depth) and self.min_match_depth >= 0):
            raise ValueError(f'SoundingRule.min_match_depth must be finite and >= 0, '
                             f'got {self.min_match_depth}')
        for name in ('merge_overlap', 'activation_threshold'):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f'SoundingRule.{name} must lie in [0, 1], got {value}')
        if self.agreement_top_k < 1:
            raise ValueError(f'SoundingRule.agreement_top_k must be >= 1, got {self.agreement_top_k}')
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f'SoundingRule.top_k must be None or >= 1, got {self.top_k}')


@dataclass
class SoundingFactor:
    """One sounding object of a window, as the co-NMF sees it.

    factor_index: its image factor k (the first one found when factors were merged); merged: the other image
        factors folded into it. audio_factor: the audio factor it owns (k* for k* itself).
    label, score, top_labels, top_scores: readout of cos(V_I[k], T_I), best first; class_id: index of label
        in the bank's words (-1 if absent).
    confidence: nats; for k* the solver's confidence (median − min of CE_I), for the others their match depth.
    match_depth: median(M) − M[k, audio_factor] (NaN when M was not computed: max_objects = 1).
    audio_activation: mean of U_A[:, audio_factor] over the window.
    coarse_mask: bool [rows, cols], U_I[:, k] > activation_threshold on the token grid, united over the
        object's factors.
    primary: True for k*.
    """

    factor_index: int
    audio_factor: int
    label: str
    score: float
    top_labels: list[str]
    top_scores: list[float]
    class_id: int
    confidence: float
    match_depth: float
    audio_activation: float
    coarse_mask: np.ndarray
    primary: bool
    merged: list[int] = field(default_factory=list)

    @property
    def factors(self) -> list[int]:
        """Every image factor of this object, its own first."""
        return [self.factor_index, *self.merged]


# ----------------------------------------------------------------------------------------------------
# Cross-modal match of the factors
# ----------------------------------------------------------------------------------------------------
@dataclass
class FactorMatch:
    """The cross-modal CE matrix of one result and what the rule reads from it (CPU tensors).

    matrix: M [K_image, K_audio]; image_ranking: [K, J] word indices of each image factor, best first
    (cos(V_I[k], T_I)); audio_words: [K] best word of each audio factor (cos(Proj(V_A[a]), T_A)).
    """

    matrix: Tensor
    image_ranking: Tensor
    audio_words: Tensor

    def depth(self, k: int, a: int) -> float:
        """median(M) − M[k, a], nats."""
        return float(self.matrix.flatten().median() - self.matrix[k, a])

    def agrees(self, k: int, a: int, top_k: int) -> bool:
        """Whether audio factor a's best word is among image factor k's ``top_k`` best words."""
        return bool((self.image_ranking[k, :top_k] == self.audio_words[a]).any())


def factor_match(result: conmf.CoNMFResult, bank: conmf.AnchorBank) -> FactorMatch:
    """M[k, a] = CE of image factor k's word distribution under audio factor a's (module docstring)."""
    device = result.image_factors.device
    bank = bank.to(device)
    unit_image, unit_audio = bank.unit_vectors()
    with torch.no_grad():
        image = torch.nn.functional.normalize(result.image_factors.detach().float(), dim=-1) @ unit_image.T
        projected = bank.audio_projection(result.audio_factors.detach().float())
        audio = bank.audio_logit_scale * (torch.nn.functional.normalize(projected, dim=-1) @ unit_audio.T)
        log_p_image = torch.log_softmax(image, dim=-1)
        matrix = -(torch.softmax(audio, dim=-1) @ log_p_image.T).T  # [k, a] = −Σ_j p_A[a, j] log p_I[k, j]
    return FactorMatch(matrix.float().cpu(), image.argsort(dim=-1, descending=True).cpu(),
                       audio.argmax(dim=-1).cpu())


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def mask_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller mask's area (0 when either is empty)."""
    smaller = min(int(a.sum()), int(b.sum()))
    return float(np.logical_and(a, b).sum() / smaller) if smaller else 0.0


# ----------------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A factor the rule considered beyond k*: its audio partner, depth and what became of it
    ('object', 'merged', 'disagree', 'cap' or 'shallow', the one that ended the loop)."""

    factor_index: int
    audio_factor: int
    depth: float
    outcome: str


def select_sounding_factors(result: conmf.CoNMFResult, bank: conmf.AnchorBank,
                            rule: SoundingRule | None = None, grid: tuple[int, int] | None = None,
                            trace: list[Candidate] | None = None) -> list[SoundingFactor]:
    """The sounding objects of one window, k* first (module docstring for the rule).

    ``rule`` defaults to ``SoundingRule()`` (one object: TACO's k*). ``grid``: (rows, cols) of the image
    tokens, default the square grid of N_I tokens. ``trace``: when given, every candidate considered beyond
    k* is appended to it (for calibration).
    """
    rule = rule or SoundingRule()
    rule.validate()
    if not result.sounding:
        return []
    activations = result.image_activations.detach().float().cpu()
    grid = _check_grid(grid, activations.shape[0])
    masks = (activations > rule.activation_threshold).T.reshape(-1, *grid).numpy()
    audio_means = result.audio_activations.detach().float().mean(dim=0).cpu()
    top_k = rule.top_k or len(result.labels)
    k_star = int(result.k_star)
    primary = _primary(result, bank, masks[k_star], float(audio_means[k_star]), top_k)
    if rule.max_objects == 1:
        return [primary]
    match = factor_match(result, bank)
    primary.match_depth = match.depth(k_star, k_star)
    objects = [primary]
    _add_matched_objects(objects, match, result, bank, rule, masks, audio_means, trace)
    return objects


def _add_matched_objects(objects: list[SoundingFactor], match: FactorMatch, result: conmf.CoNMFResult,
                         bank: conmf.AnchorBank, rule: SoundingRule, masks: np.ndarray, audio_means: Tensor,
                         trace: list[Candidate] | None) -> None:
    """Steps 2-4 of the rule: grow ``objects`` (k* alone so far) with the matched factors."""
    top_k = len(objects[0].top_labels)
    owned = {objects[0].audio_factor}
    pool = [k for k in range(masks.shape[0]) if k != objects[0].factor_index and masks[k].any()]
    while pool:
        depth, k, a = _deepest_pair(match, pool, owned)
        if depth < rule.min_match_depth:
            _note(trace, k, a, depth, 'shallow')
            break
        pool.remove(k)
        if not match.agrees(k, a, rule.agreement_top_k):
            _note(trace, k, a, depth, 'disagree')
            continue
        labels, scores = factor_readout(result.image_factors[k], bank, top_k)
        host = _same_object(objects, labels[0], masks[k], rule.merge_overlap)
        if host is None and len(objects) >= rule.max_objects:
            _note(trace, k, a, depth, 'cap')
            continue
        owned.add(a)
        if host is not None:
            host.merged.append(k)
            host.coarse_mask = host.coarse_mask | masks[k]
            _note(trace, k, a, depth, 'merged')
            continue
        _note(trace, k, a, depth, 'object')
        objects.append(SoundingFactor(
            factor_index=k, audio_factor=a, label=labels[0], score=scores[0], top_labels=labels,
            top_scores=scores, class_id=_class_id(bank, labels[0]), confidence=depth, match_depth=depth,
            audio_activation=float(audio_means[a]), coarse_mask=masks[k], primary=False))


def _deepest_pair(match: FactorMatch, pool: list[int], owned: set[int]) -> tuple[float, int, int]:
    """(depth, image factor, audio factor) of the deepest match of ``pool`` with a free audio factor."""
    free = [a for a in range(match.matrix.shape[1]) if a not in owned]
    if not free:
        return -math.inf, pool[0], -1
    sub = match.matrix[pool][:, free]
    flat = int(sub.argmin())
    k, a = pool[flat // len(free)], free[flat % len(free)]
    return match.depth(k, a), k, a


def _note(trace: list[Candidate] | None, k: int, a: int, depth: float, outcome: str) -> None:
    if trace is not None:
        trace.append(Candidate(k, a, depth, outcome))


def _primary(result: conmf.CoNMFResult, bank: conmf.AnchorBank, mask: np.ndarray, audio_activation: float,
             top_k: int) -> SoundingFactor:
    k = int(result.k_star)
    if top_k == len(result.labels):
        labels, scores = list(result.labels), [float(s) for s in result.label_scores]
    else:
        labels, scores = factor_readout(result.image_factors[k], bank, top_k)
    return SoundingFactor(
        factor_index=k, audio_factor=k, label=labels[0], score=scores[0], top_labels=labels,
        top_scores=scores, class_id=_class_id(bank, labels[0]), confidence=float(result.confidence),
        match_depth=math.nan, audio_activation=audio_activation, coarse_mask=mask, primary=True)


def _same_object(objects: list[SoundingFactor], label: str, mask: np.ndarray,
                 merge_overlap: float) -> SoundingFactor | None:
    """The object with this label whose coarse mask overlaps ``mask`` the most, if by ``merge_overlap``."""
    overlaps = [(mask_overlap(obj.coarse_mask, mask), obj) for obj in objects if obj.label == label]
    overlaps = [(value, obj) for value, obj in overlaps if value >= merge_overlap and value > 0]
    return max(overlaps, key=lambda pair: pair[0])[1] if overlaps else None


def factor_readout(factor: Tensor, bank: conmf.AnchorBank, top_k: int) -> tuple[list[str], list[float]]:
    """Top-k words of cos(factor, T_I) and their cosines: conmf's label readout (``conmf.factor_labels``)."""
    return conmf.factor_labels(factor, bank, top_k)


def _class_id(bank: conmf.AnchorBank, word: str) -> int:
    try:
        return bank.words.index(word)
    except ValueError:
        return -1


def _check_grid(grid: tuple[int, int] | None, n_tokens: int) -> tuple[int, int]:
    if grid is None:
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f'{n_tokens} image tokens do not form a square grid; pass grid=(rows, cols)')
        return side, side
    rows, cols = (int(v) for v in grid)
    if rows < 1 or cols < 1 or rows * cols != n_tokens:
        raise ValueError(f'grid {grid} does not hold the {n_tokens} image tokens')
    return rows, cols


# ----------------------------------------------------------------------------------------------------
# Identity across windows
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrackedObject:
    """A sounding object with its identity. track_id >= 1; age: windows since the track started (0 = new)."""

    track_id: int
    factor: SoundingFactor
    age: int = 0
    missed: int = 0


class SoundingTracker:
    """Keeps each sounding object's track id across windows while it keeps sounding.

    Matching, per window: first by factor index (a warm start keeps the factors in place) when the label is
    the same or the coarse masks overlap by ``match_iou``; then, for what is left, by label and mask overlap
    (same label and any overlap, or an overlap of ``match_iou`` whatever the labels; the best score first).
    Index matching is skipped after a cold start, whose factor order is arbitrary. A track that finds no
    object is kept for ``max_missed`` windows (0: it ends as soon as its object stops sounding).
    """

    def __init__(self, match_iou: float = 0.3, max_missed: int = 0) -> None:
        if not (math.isfinite(match_iou) and 0.0 < match_iou <= 1.0):
            raise ValueError(f'SoundingTracker.match_iou must lie in (0, 1], got {match_iou}')
        if max_missed < 0:
            raise ValueError(f'SoundingTracker.max_missed must be >= 0, got {max_missed}')
        self.match_iou = match_iou
        self.max_missed = max_missed
        self._tracks: list[TrackedObject] = []
        self._next_id = 1

    @property
    def tracks(self) -> list[TrackedObject]:
        """The live tracks (including those within their ``max_missed`` grace)."""
        return list(self._tracks)

    def reset(self) -> None:
        """Forget every track (ids keep increasing, so an old id never comes back)."""
        self._tracks = []

    def update(self, factors: Sequence[SoundingFactor], cold_start: bool = False) -> list[TrackedObject]:
        """Track ids for this window's objects, in the order of ``factors``."""
        assigned: dict[int, TrackedObject] = {}
        free = list(self._tracks)
        if not cold_start:
            self._match(factors, free, assigned, by_index=True)
        self._match(factors, free, assigned, by_index=False)
        out = []
        for i, factor in enumerate(factors):
            track = assigned.get(i)
            if track is None:
                track = TrackedObject(self._new_id(), factor)
            else:
                track.factor, track.age, track.missed = factor, track.age + 1, 0
            out.append(track)
        for track in free:
            track.missed += 1
        self._tracks = out + [t for t in free if t.missed <= self.max_missed]
        return out

    def _match(self, factors: Sequence[SoundingFactor], free: list[TrackedObject],
               assigned: dict[int, TrackedObject], by_index: bool) -> None:
        pairs = []
        for i, factor in enumerate(factors):
            if i in assigned:
                continue
            for track in free:
                score = self._score(track.factor, factor, by_index)
                if score is not None:
                    pairs.append((score, i, track))
        for _, i, track in sorted(pairs, key=lambda p: p[0], reverse=True):
            if i not in assigned and track in free:
                assigned[i] = track
                free.remove(track)

    def _score(self, before: SoundingFactor, now: SoundingFactor, by_index: bool) -> float | None:
        """How well ``now`` continues ``before`` (higher is better), None when it does not."""
        iou = mask_iou(before.coarse_mask, now.coarse_mask)
        same_label = before.label == now.label
        if by_index:
            same_index = before.factor_index == now.factor_index
            return iou + same_label if same_index and (same_label or iou >= self.match_iou) else None
        if (same_label and iou > 0) or iou >= self.match_iou:
            return iou + same_label
        return None

    def _new_id(self) -> int:
        track_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # uint32 in the message, never 0
        return track_id
