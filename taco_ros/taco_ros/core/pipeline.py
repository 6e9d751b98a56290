"""The ROS-free TACO pipeline: one camera frame + one audio window → sounding-object mask, labels and
audio activation (Malard et al., arXiv 2412.01488; docs/method.md, docs/architecture.md).

:class:`TacoPipeline` puts together, on one device,

* the models (core/models.py: :func:`~taco_ros.core.models.create_models`): the shared CLIP
  ConvNeXt, the CLAP audio encoder, the FC-CLIP head, the text encoders;
* the vocabulary (core/vocabulary.py: :class:`~taco_ros.core.vocabulary.Vocabulary`): the anchor
  bank of CLIP and CLAP text vectors;
* the per-window stages (core/stages.py: :class:`~taco_ros.core.stages.Stages`), and
* the warm-start state of the streaming co-NMF (the previous window's factorisation).

Per window (:meth:`TacoPipeline.process`):

1. silence gate: a window whose RMS is below ``silence_rms`` is "nothing sounding" (no model runs);
2. X_I of the frame and X_A of the window (tiled to 7 s, or the last 7 s of real audio);
3. co-NMF of (X_I, X_A) against the bank → factors, activations and k*, the factor shared by
   sound and image, with its labels and the solver's sounding decision;
4. the map of k*: FC-CLIP's semantic map for the factor set V_I (mode 'full'), or U_I[:, k*] on the
   token grid upsampled (mode 'coarse'); thresholded, cleaned, boxed. With ``max_objects > 1`` every
   sounding factor of core/sounding.py's rule gets its own map and mask value (core/objects.py);
5. a track id for every object (core/objects.py: ObjectTracks), in every mode.

Mode 'baseline' is A-FC-CLIP from the paper: CLAP's clip-level audio embedding picks the best word of
the vocabulary and FC-CLIP segments that word's CLIP text vector (no co-factorisation).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from taco_ros.core.contract import (
    LIVE_FIELDS,
    STAGES,
    AudioWindow,
    PipelineConfig,
    SoundingObjectResult,
    TacoResult,
)
from taco_ros.core.objects import (
    ObjectTracks,
    WindowObjects,
    baseline_factor,
    one_object_factor,
    several_objects,
)
from taco_ros.core.stages import (
    PRECISION_DTYPES,
    AudioTokens,
    Stages,
    elapsed_ms,
    sounding_objects,
    token_grid,
)

__all__ = ['PRECISION_DTYPES', 'STAGES', 'AudioWindow', 'PipelineConfig', 'SoundingObjectResult',
           'TacoPipeline', 'TacoResult', 'resolve_device', 'solver_config', 'validate_config']


def solver_config(config: PipelineConfig) -> Any:
    """The CoNMFConfig of a pipeline configuration (its profile, then its overrides)."""
    from taco_ros.core.conmf import CoNMFConfig
    known = {f.name for f in fields(CoNMFConfig)}
    unknown = sorted(set(config.solver_overrides) - known)
    if unknown:
        raise ValueError(f'solver_overrides has unknown CoNMFConfig fields {unknown}')
    make = CoNMFConfig.paper if config.solver_profile == 'paper' else CoNMFConfig.streaming
    return make(**{'seed': int(config.seed), 'top_k': int(config.top_k), **config.solver_overrides})


def validate_config(config: PipelineConfig) -> None:
    """PipelineConfig.validate plus what needs torch: the device exists, the solver fields fit."""
    config.validate()
    resolve_device(config.device)
    solver_config(config).validate()


def resolve_device(name: str) -> torch.device:
    """auto → cuda when available, else cpu; cuda[:N] must exist."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f'device {name!r} is not auto, cpu, cuda or cuda:N') from exc
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {name!r} requested but CUDA is not available')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f'device {name!r}: only {torch.cuda.device_count()} CUDA device(s)')
    elif device.type != 'cpu':
        raise ValueError(f'device {name!r} is not auto, cpu, cuda or cuda:N')
    return device


class TacoPipeline:
    """Models, vocabulary, stages and warm-start state of TACO on one device (module docstring).

    Public attributes: ``config``, ``device``, ``models`` (core.models.Models), ``stages``
    (core.stages.Stages, what the evaluation calls), ``notes`` (what a user should know, e.g. a
    fallback; the node logs them), ``random_weights``.

    Thread safety: :meth:`process` may run while another thread calls :meth:`set_vocabulary` or
    :meth:`update` (the new bank/options apply from the next window); process itself is not
    re-entrant, and suspend/resume/close must not overlap it.
    """

    def __init__(self, config: PipelineConfig) -> None:
        from taco_ros.core.models import create_models
        from taco_ros.core.vocabulary import Vocabulary

        config = config.copy()
        validate_config(config)
        self.config = config
        self.device = resolve_device(config.device)
        self._lock = threading.Lock()
        self._previous: Any = None  # the last CoNMFResult: the next window's warm start
        self._tracks = ObjectTracks()
        self._suspended = False
        self.models = create_models(config)
        self.notes: list[str] = self.models.notes
        self.random_weights = self.models.random_weights
        self.models.place(self.device)
        self.stages = Stages(self.models, self.device, config.precision, config.solver_threads)
        self._vocabulary = Vocabulary(self.models, self.device, config.anchors, config.vocabulary)
        if not config.keep_text_encoders:
            self.models.drop_text_encoders()

    # ------------------------------------------------------------------ models
    @property
    def backbone(self) -> Any:
        """The shared CLIP (None after close)."""
        return self.models.backbone

    @property
    def audio(self) -> Any:
        """The CLAP audio encoder (None after close)."""
        return self.models.audio

    @property
    def segmenter(self) -> Any:
        """The FC-CLIP head (None when its checkpoint was missing, and after close)."""
        return self.models.segmenter

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocabulary(self) -> list[str]:
        return self._vocabulary.words

    @property
    def bank(self) -> Any:
        """The co-NMF AnchorBank in use (on the pipeline device); replaced, never mutated, by
        set_vocabulary."""
        return self._vocabulary.bank

    def vocabulary_problem(self, words: Sequence[str]) -> str | None:
        """Why ``words`` cannot become the vocabulary (None when they can)."""
        return self._vocabulary.problem(words)

    def set_vocabulary(self, words: Sequence[str] | None) -> None:
        """Use ``words`` (None: the default vocabulary) from the next window; ValueError if unusable."""
        self._vocabulary.set(words)
        self.config.vocabulary = self._vocabulary.words

    # ------------------------------------------------------------------ options
    def update_problem(self, **changes: Any) -> str | None:
        """Why :meth:`update` would refuse ``changes`` (None when it would accept them)."""
        unknown = sorted(set(changes) - set(LIVE_FIELDS))
        if unknown:
            return f'{unknown} cannot change while running (only {", ".join(LIVE_FIELDS)})'
        if 'vocabulary' in changes and changes['vocabulary'] is not None:
            problem = self.vocabulary_problem(changes['vocabulary'])
            if problem:
                return problem
        candidate = replace(self.config, **{k: v for k, v in changes.items() if k != 'vocabulary'})
        try:
            validate_config(candidate)
        except ValueError as exc:
            return str(exc)
        if candidate.mode == 'baseline' and self.segmenter is None:
            return ("mode 'baseline' needs the FC-CLIP checkpoint, which was not found "
                    'when the pipeline was built')
        return None

    def update(self, **changes: Any) -> None:
        """Change live options (LIVE_FIELDS) from the next window; ValueError if bad."""
        problem = self.update_problem(**changes)
        if problem:
            raise ValueError(problem)
        if 'vocabulary' in changes:
            self.set_vocabulary(changes.pop('vocabulary'))
        self.config = replace(self.config, **changes)
        self.stages.solver_threads = self.config.solver_threads

    # ------------------------------------------------------------------ device lifecycle
    def reset(self) -> None:
        """Forget the warm-start state (the next window starts the co-NMF cold) and every object's
        track (the next objects get new track ids)."""
        self._previous = None
        self._tracks.reset()

    def suspend(self) -> None:
        """Free the GPU (models to the CPU) while the node is inactive; no-op on the CPU."""
        if self.device.type == 'cuda' and not self._suspended:
            self._previous = None
            self.models.place(torch.device('cpu'))
            self._vocabulary.to(torch.device('cpu'))
            torch.cuda.empty_cache()
            self._suspended = True

    def resume(self) -> None:
        """Undo :meth:`suspend`."""
        if self._suspended:
            self.models.place(self.device)
            self._vocabulary.to(self.device)
            self._suspended = False

    def close(self) -> None:
        """Release every model and tensor (GPU memory included)."""
        self._previous = None
        self.models.close()
        self._vocabulary.file_bank = self._vocabulary.bank = None
        if self.device.type == 'cuda':
            gc.collect()   # tensors held by reference cycles must go before the cache is emptied
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ one window
    def process(self, frame: np.ndarray, window: AudioWindow) -> TacoResult:
        """One frame (uint8 RGB [H, W, 3]) and its audio window → :class:`TacoResult`."""
        frame = _check_frame(frame)
        samples = _check_window(window)
        with self._lock:
            config, bank = self.config, self._vocabulary.bank
            started = time.perf_counter()
            rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
            if rms < config.silence_rms:
                return self._silent(frame, window, config, started)
            if config.mode == 'baseline':
                return self._baseline(frame, window, config, bank, started)
            return self._taco(frame, window, config, bank, started)

    def _encode(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig,
                timings: dict[str, float]) -> tuple[Any, AudioTokens]:
        with self.stages.timed(timings, 'image_encoder'):
            image = self.stages.encode_frame(frame)
        history = window.history if config.audio_context == 'history' else None
        with self.stages.timed(timings, 'audio_encoder'):
            audio = self.stages.encode_audio(window.samples, window.sample_rate, history=history,
                                             context=config.audio_context)
        return image, audio

    def _taco(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig, bank: Any,
              started: float) -> TacoResult:
        timings: dict[str, float] = {}
        image, audio = self._encode(frame, window, config, timings)
        with self.stages.timed(timings, 'conmf'):
            result = self.stages.solve(image, audio, bank, solver_config(config), self._previous)
            k = int(result.k_star)
            image_column, audio_column = self.stages.columns(result, k)
        self._previous = result
        mode = config.mode if self.segmenter is not None else 'coarse'
        timeline = self.stages.timeline(audio_column, audio, window.duration)
        if result.sounding and config.max_objects > 1:
            with self.stages.timed(timings, 'segmenter'):
                found = several_objects(self.stages, frame.shape, image, audio, window.duration, result,
                                        bank, config, mode)
        else:
            found = self._k_star_object(frame, image, result, bank, config, mode, timings,
                                        (image_column, audio_column), timeline.values)
        self._tracks.assign(found.objects, found.factors, bool(result.cold_start), (mode, image.grid))
        score_map, objects, mask = found.k_star_map, found.objects, found.mask
        timings['total'] = elapsed_ms(started)
        return TacoResult(
            mask=mask, objects=objects, sounding=bool(result.sounding),
            confidence=float(result.confidence), k_star=k, steps=int(result.steps),
            cold_start=bool(result.cold_start), mode=mode, activation=timeline.values,
            token_offsets=timeline.offsets, token_duration=timeline.bin_duration,
            window_duration=window.duration, timings=timings, score_map=score_map,
            random_weights=self.random_weights, labels=list(result.labels),
            label_scores=[float(s) for s in result.label_scores], cold_reason=result.cold_reason,
            coarse_map=token_grid(image_column, image.grid), solver_backoffs=int(result.lr_backoffs),
            object_maps=found.maps)

    def _k_star_object(self, frame: np.ndarray, image: Any, result: Any, bank: Any, config: PipelineConfig,
                       mode: str, timings: dict[str, float], columns: tuple[np.ndarray, np.ndarray],
                       activation: np.ndarray) -> WindowObjects:
        """TACO's one object: the map of k* (also when not sounding with ``always_segment``), and k* as
        the object when the window is sounding and its mask is not empty."""
        k = int(result.k_star)
        image_column, audio_column = columns
        score_map = None
        with self.stages.timed(timings, 'segmenter'):
            if result.sounding or config.always_segment:
                score_map = (self.stages.coarse_map(image_column, image, frame.shape)
                             if mode == 'coarse' else
                             self.stages.semantic_map(image, result.image_factors, k, frame.shape))
        objects, mask = sounding_objects(
            score_map if result.sounding else None, config, frame.shape[:2], k=k,
            labels=result.labels, scores=result.label_scores, confidence=float(result.confidence),
            audio_activation=float(audio_column.mean()))
        for obj in objects:
            obj.audio_factor, obj.activation = k, activation
        factors = [one_object_factor(result, bank, image.grid)] if objects else []
        return WindowObjects(objects=objects, factors=factors, maps=[score_map] if objects else [],
                             mask=mask, k_star_map=score_map)

    def _baseline(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig, bank: Any,
                  started: float) -> TacoResult:
        """A-FC-CLIP: CLAP's clip embedding picks word j; FC-CLIP segments T_I[j] among the bank."""
        timings: dict[str, float] = {}
        image, audio = self._encode(frame, window, config, timings)
        with self.stages.timed(timings, 'audio_encoder'):  # the word choice is on the audio side
            choice = self.stages.choose_word(audio, bank, config.top_k)
        timings['conmf'] = 0.0
        with self.stages.timed(timings, 'segmenter'):
            score_map = self.stages.semantic_map(image, bank.image, choice.index, frame.shape)
        timeline = self.stages.timeline(choice.column, audio, window.duration)
        objects, mask = sounding_objects(
            score_map, config, frame.shape[:2], k=0, labels=choice.labels, scores=choice.scores,
            confidence=choice.scores[0], audio_activation=float(choice.column.mean()))
        for obj in objects:
            obj.activation = timeline.values
        # The chosen word is the object's identity: its index does not depend on a solver start.
        self._tracks.assign(objects, [baseline_factor(obj, mask) for obj in objects], False,
                            ('baseline', mask.shape))
        timings['total'] = elapsed_ms(started)
        return TacoResult(
            mask=mask, objects=objects, sounding=True, confidence=choice.scores[0],
            k_star=choice.index, steps=0, cold_start=True, mode='baseline',
            activation=timeline.values, token_offsets=timeline.offsets,
            token_duration=timeline.bin_duration, window_duration=window.duration,
            timings=timings, score_map=score_map, random_weights=self.random_weights,
            labels=choice.labels, label_scores=choice.scores, cold_reason='baseline',
            object_maps=[score_map] if objects else [])

    def _silent(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig,
                started: float) -> TacoResult:
        self._tracks.end_all()
        timeline = self.stages.timeline(None, None, window.duration)
        return TacoResult(
            mask=np.zeros(frame.shape[:2], np.uint8), objects=[], sounding=False, confidence=0.0,
            k_star=-1, steps=0, cold_start=self._previous is None, mode=config.mode,
            activation=timeline.values, token_offsets=timeline.offsets,
            token_duration=timeline.bin_duration, window_duration=window.duration,
            timings={**dict.fromkeys(STAGES[:-1], 0.0), 'total': elapsed_ms(started)},
            score_map=None, random_weights=self.random_weights, cold_reason='silence gate')


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f'frame must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}')
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f'frame has no pixels: {frame.shape}')
    return np.ascontiguousarray(frame)


def _check_window(window: AudioWindow) -> np.ndarray:
    samples = np.asarray(window.samples)
    if samples.ndim not in (1, 2) or samples.shape[0] == 0:
        raise ValueError(f'audio window must be [n] or [n, C] with n > 0, got {samples.shape}')
    if int(window.sample_rate) <= 0:
        raise ValueError(f'audio window sample_rate must be positive, got {window.sample_rate}')
    if not np.isfinite(samples).all():
        raise ValueError('audio window contains NaN or Inf')
    return samples
