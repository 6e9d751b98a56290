"""Several sounding objects in one window, and their identities across windows (docs/method.md,
"Several sounding objects").

:func:`several_objects` turns one co-NMF result into objects when ``max_objects > 1``: the factors of
:func:`~taco_ros.core.sounding.select_sounding_factors` (k* first), the soft map of each (FC-CLIP's
semantic map of its factors, or their activation on the token grid in coarse mode), its audio
activation over the window, and one mask shared out by :func:`~taco_ros.core.stages.layered_objects`.

:class:`ObjectTracks` gives every published object its ``track_id`` with a
:class:`~taco_ros.core.sounding.SoundingTracker`, in every mode and for any ``max_objects``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np

from taco_ros.core.contract import PipelineConfig, SoundingObjectResult
from taco_ros.core.sounding import SoundingFactor, SoundingRule, SoundingTracker, select_sounding_factors
from taco_ros.core.stages import ObjectLayer, layered_objects

if TYPE_CHECKING:
    from taco_ros.core.clip_backbone import ImageTokens
    from taco_ros.core.conmf import AnchorBank, CoNMFResult
    from taco_ros.core.stages import AudioTokens, Stages


@dataclass
class WindowObjects:
    """What :func:`several_objects` made of one window.

    objects: the published objects (mask values 1..n); factors: the SoundingFactor of each (for the
    tracker); maps: each object's soft map; mask: uint8 [H, W]; k_star_map: sem[k*] alone (or U_I[:, k*]
    upsampled in coarse mode), TacoResult.score_map as with one object.
    """

    objects: list[SoundingObjectResult]
    factors: list[SoundingFactor]
    maps: list[np.ndarray]
    mask: np.ndarray
    k_star_map: np.ndarray


def sounding_rule(config: PipelineConfig) -> SoundingRule:
    """The selection rule of a pipeline configuration: its solver profile's calibration, its cap."""
    return SoundingRule.for_profile(config.solver_profile, max_objects=int(config.max_objects))


def several_objects(stages: Stages, frame_shape: tuple[int, ...], image: ImageTokens, audio: AudioTokens,
                    window_sec: float, result: CoNMFResult, bank: AnchorBank, config: PipelineConfig,
                    mode: str) -> WindowObjects:
    """Every sounding object of a sounding window (module docstring); ``mode``: 'full' or 'coarse'."""
    factors = select_sounding_factors(result, bank, sounding_rule(config), grid=image.grid)
    channel_maps = _channel_maps(stages, frame_shape, image, result, factors, mode)
    layers = []
    for factor in factors:
        _, audio_column = stages.columns(result, factor.audio_factor)
        timeline = stages.timeline(audio_column, audio, window_sec)
        layers.append(ObjectLayer(
            score_map=_object_map(stages, frame_shape, image, result, factor, channel_maps, mode),
            obj=SoundingObjectResult(
                mask_value=0, label=factor.label, score=float(factor.score),
                top_labels=list(factor.top_labels), top_scores=[float(s) for s in factor.top_scores],
                confidence=float(factor.confidence), audio_activation=float(audio_column.mean()),
                bbox=(0, 0, 0, 0), factor_index=factor.factor_index, audio_factor=factor.audio_factor,
                activation=timeline.values)))
    kept, mask = layered_objects(layers, config, tuple(frame_shape[:2]))
    k_star = int(result.k_star)
    k_star_map = channel_maps[k_star] if mode != 'coarse' else _coarse(stages, frame_shape, image, result,
                                                                         [k_star])
    return WindowObjects(objects=[layers[i].obj for i in kept], factors=[factors[i] for i in kept],
                         maps=[layers[i].score_map for i in kept], mask=mask, k_star_map=k_star_map)


def _channel_maps(stages: Stages, frame_shape: tuple[int, ...], image: ImageTokens, result: CoNMFResult,
                  factors: Sequence[SoundingFactor], mode: str) -> dict[int, np.ndarray]:
    """sem[k] at the frame's size of every factor of the objects, from one FC-CLIP pass (full mode)."""
    if mode == 'coarse':
        return {}
    channels = sorted({k for factor in factors for k in factor.factors})
    maps = stages.frame_semantic_maps(image, result.image_factors, channels, frame_shape)
    return dict(zip(channels, maps, strict=True))


def _object_map(stages: Stages, frame_shape: tuple[int, ...], image: ImageTokens, result: CoNMFResult,
                factor: SoundingFactor, channel_maps: dict[int, np.ndarray], mode: str) -> np.ndarray:
    """An object's soft map: the sum of its factors' semantic maps (the class mass of the factor set
    at each pixel), or in coarse mode the largest of their activations (their coarse masks' union)."""
    if mode == 'coarse':
        return _coarse(stages, frame_shape, image, result, factor.factors)
    return reduce(np.add, (channel_maps[k] for k in factor.factors))


def _coarse(stages: Stages, frame_shape: tuple[int, ...], image: ImageTokens, result: CoNMFResult,
            factors: Sequence[int]) -> np.ndarray:
    column = np.max([stages.columns(result, k)[0] for k in factors], axis=0)
    return stages.coarse_map(column, image, frame_shape)


def one_object_factor(result: CoNMFResult, bank: AnchorBank, grid: tuple[int, int]) -> SoundingFactor:
    """k* as the tracker sees it (the rule with one object: no cross-modal match is computed)."""
    return select_sounding_factors(result, bank, SoundingRule(), grid=grid)[0]


def baseline_factor(obj: SoundingObjectResult, mask: np.ndarray) -> SoundingFactor:
    """The baseline's object as the tracker sees it: its word index in place of a factor, its
    pixel mask in place of the token-grid mask."""
    return SoundingFactor(
        factor_index=obj.factor_index, audio_factor=-1, label=obj.label, score=obj.score,
        top_labels=list(obj.top_labels), top_scores=list(obj.top_scores), class_id=-1,
        confidence=obj.confidence, match_depth=float('nan'), audio_activation=obj.audio_activation,
        coarse_mask=np.asarray(mask) == obj.mask_value, primary=True)


class ObjectTracks:
    """Track ids of the published objects, window after window (one SoundingTracker).

    The tracker compares masks and factor indices, so a change of what they mean (the mode, the mask
    grid) restarts tracking as a cold start does. :meth:`reset` forgets every track (ids never repeat).
    """

    def __init__(self) -> None:
        self._tracker = SoundingTracker()
        self._key: Hashable = None

    def reset(self) -> None:
        self._tracker.reset()

    def assign(self, objects: Sequence[SoundingObjectResult], factors: Sequence[SoundingFactor],
               cold_start: bool, key: Any) -> None:
        """Set each object's ``track_id`` (``factors[i]`` is ``objects[i]`` as the tracker sees it);
        ``key``: what the factors' indices and masks mean (mode and grid)."""
        if key != self._key:
            self._tracker.reset()
            self._key, cold_start = key, True
        tracks = self._tracker.update(list(factors), cold_start=cold_start)
        for obj, track in zip(objects, tracks, strict=True):
            obj.track_id = track.track_id

    def end_all(self) -> None:
        """Nothing sounds in this window: every track ends (the next object gets a new id)."""
        self._tracker.update([], cold_start=False)
