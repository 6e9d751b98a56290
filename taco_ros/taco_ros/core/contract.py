"""What goes into and comes out of one window, and every choice list of the project, declared once.

Torch-free and ROS-free, so the node's parameter table, the ``taco-ros`` commands, the eval and the
pipeline all import the same names and validate with the same :meth:`PipelineConfig.validate`.

* inputs of one window: :class:`AudioWindow` (the camera frame is a plain uint8 RGB array);
* how the pipeline runs: :class:`PipelineConfig`;
* what one window produced: :class:`TacoResult` with its :class:`SoundingObjectResult` list.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------- choice lists
MODES = ('full', 'coarse', 'baseline')
PRECISIONS = ('fp32', 'fp16', 'bf16')
SOLVER_PROFILES = ('streaming', 'paper')
AUDIO_CONTEXTS = ('tile', 'history')
RESIZE_POLICIES = ('squash', 'letterbox')
PAIR_WITH = ('end', 'centre')
# The evaluation's protocols: the paper's (cold 1800-step solve per frame, maps on the resized grid),
# the node's streaming solver, the unrefined co-NMF map, and the A-FC-CLIP baseline.
EVAL_MODES = ('paper', 'streaming', 'coarse', 'baseline')
# Per-window stages, in order, as reported in TacoResult.timings (milliseconds).
STAGES = ('image_encoder', 'audio_encoder', 'conmf', 'segmenter', 'total')
# PipelineConfig fields that may change between windows (TacoPipeline.update); the others fix the
# models and need a rebuild.
LIVE_FIELDS = ('mode', 'vocabulary', 'solver_profile', 'solver_overrides', 'mask_threshold',
               'min_component_area', 'top_k', 'audio_context', 'silence_rms', 'always_segment',
               'solver_threads', 'max_objects')
DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')
# The majority rule of the semantic map (see core/masks.py); the node's default too.
DEFAULT_MASK_THRESHOLD = 0.5
DEFAULT_MODEL_CONFIG = 'taco_convnext_large'
MAX_THREADS = 256
# Most sounding objects per window (core/sounding.py); 1 is TACO's single factor k*. The co-NMF has
# K = 8 factors, so no window can hold more.
MAX_OBJECTS = 8
# Seconds of audio CLAP sees (HTS-AT's input); the 'history' context keeps this much past audio.
CLAP_CONTEXT_SEC = 7.0


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    """Why ``value`` is not one of ``allowed`` (None when it is): the one wording for every list."""
    if value in allowed:
        return None
    return f'{name}={value!r} is not one of {", ".join(allowed)}'


def check_device(value: Any) -> str | None:
    """Syntax of a device name; whether CUDA exists is checked when the pipeline is built."""
    if isinstance(value, str) and DEVICE_PATTERN.match(value):
        return None
    return f'device={value!r} must be auto, cpu, cuda or cuda:N'


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class AudioWindow:
    """One audio window handed to the pipeline.

    samples: float32 [n] mono or [n, C], in [-1, 1]; zeros where audio was missing.
    sample_rate: frames per second of ``samples``.
    start: capture time of the first sample (seconds on the stream's clock).
    history: optional samples immediately preceding the window (same rate and channels), used
        by the 'history' audio context (TACO's 7 s CLAP input from real past audio).
    gap_fraction: fraction of the window that was zero-filled because no audio covered it.
    """

    samples: np.ndarray
    sample_rate: int
    start: float
    history: np.ndarray | None = None
    gap_fraction: float = 0.0

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / float(self.sample_rate)

    @property
    def end(self) -> float:
        return self.start + self.duration


# --------------------------------------------------------------------------------- configuration
@dataclass
class PipelineConfig:
    """How to build and run the pipeline.

    model_config: name in taco_ros/model_configs or a JSON path ('taco_tiny' for tests).
    model_dir: directory searched first for model files.
    device: auto | cpu | cuda | cuda:N. precision: fp32 | fp16 | bf16 autocast of the backbones
        (CUDA only; the solver always runs in fp32).
    mode: full | coarse | baseline.
    anchors: anchor bank file; None builds the bank from ``vocabulary`` with the text encoders.
    vocabulary: the words; None = every word of the anchors file, or the 527 AudioSet names.
    solver_profile / solver_overrides: CoNMFConfig.streaming() or .paper(), then these fields.
    mask_threshold: absolute threshold on the soft map; min_component_area: smaller mask
        components (pixels) are removed; top_k: runner-up labels.
    audio_context: 'tile' (TACO: the window tiled to 7 s) or 'history' (the last 7 s).
    resize: squash (the paper's 764² resize) or letterbox.
    allow_random_weights: build missing models with random weights (tests, demo).
    seed: seed of the solver initialisation.
    silence_rms: windows with an RMS below this are "nothing sounding" without running the
        models (0 disables the gate).
    keep_text_encoders: keep the CLIP and CLAP text encoders (on the CPU) so that
        set_vocabulary can encode new words; False frees them once the bank is built.
    always_segment: compute the soft map even when the solver says nothing is sounding (for
        evaluation against ground truth); the node leaves it off to save time.
    solver_threads: torch intra-op threads while the co-NMF runs on the CPU (0 keeps the process's
        setting). Its thousands of small operations gain nothing from splitting, and with several
        threads every join waits for a thread that other processes have descheduled: on 2 busy
        cores a warm solve took 9x longer with 2 threads than with 1 (bench/bench_threads.py).
    max_objects: most sounding objects per window, 1..MAX_OBJECTS. 1 is TACO (the factor k* alone);
        more adds each other factor whose image and audio semantics match (core/sounding.py).
    """

    model_config: str = DEFAULT_MODEL_CONFIG
    model_dir: str | None = None
    device: str = 'auto'
    precision: str = 'fp32'
    mode: str = 'full'
    anchors: str | None = None
    vocabulary: list[str] | None = None
    solver_profile: str = 'streaming'
    solver_overrides: dict = field(default_factory=dict)
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    min_component_area: int = 0
    top_k: int = 5
    audio_context: str = 'tile'
    resize: str = 'squash'
    allow_random_weights: bool = False
    seed: int = 0
    silence_rms: float = 0.0
    keep_text_encoders: bool = True
    always_segment: bool = False
    solver_threads: int = 1
    max_objects: int = 1

    def problem(self) -> str | None:
        """Why this configuration is unusable (None when it is usable), without torch.

        The solver's own fields (``solver_overrides``) are checked by CoNMFConfig when the
        pipeline builds its solver configuration.
        """
        choices = {'mode': MODES, 'precision': PRECISIONS, 'solver_profile': SOLVER_PROFILES,
                   'audio_context': AUDIO_CONTEXTS, 'resize': RESIZE_POLICIES}
        for name, allowed in choices.items():
            reason = check_choice(name, getattr(self, name), allowed)
            if reason:
                return f'PipelineConfig.{reason}'
        reason = check_device(self.device)
        if reason:
            return reason
        if not (math.isfinite(self.mask_threshold) and 0.0 <= self.mask_threshold <= 1.0):
            return f'mask_threshold must lie in [0, 1], got {self.mask_threshold}'
        if self.min_component_area < 0:
            return f'min_component_area must be >= 0, got {self.min_component_area}'
        if self.top_k < 1:
            return f'top_k must be >= 1, got {self.top_k}'
        if not (math.isfinite(self.silence_rms) and self.silence_rms >= 0):
            return f'silence_rms must be >= 0, got {self.silence_rms}'
        if isinstance(self.solver_threads, bool) or not 0 <= int(self.solver_threads) <= MAX_THREADS:
            return f'solver_threads must lie in [0, {MAX_THREADS}], got {self.solver_threads}'
        if (isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int)
                or not 1 <= self.max_objects <= MAX_OBJECTS):
            return f'max_objects must be an integer in [1, {MAX_OBJECTS}], got {self.max_objects!r}'
        if not isinstance(self.solver_overrides, dict):
            return 'solver_overrides must be a dict of CoNMFConfig fields'
        return None

    def validate(self) -> None:
        """Raise ValueError naming the first unusable field."""
        reason = self.problem()
        if reason:
            raise ValueError(reason)

    def copy(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes``; lists and dicts are copied, never shared."""
        config = replace(self, **changes)
        config.solver_overrides = dict(config.solver_overrides)
        if config.vocabulary is not None:
            config.vocabulary = list(config.vocabulary)
        return config


# ---------------------------------------------------------------------------------------- results
@dataclass
class SoundingObjectResult:
    """One sounding object: its value in the mask, labels, scores and box (x, y, w, h).

    factor_index: its image factor (k* for the first object); audio_factor: the audio factor whose
        sound it owns (-1: none, the baseline); track_id: its identity across windows (>= 1 while
        tracked, 0 = not tracked); activation: [T] its audio factor's activation over the window, on
        the bins of TacoResult.token_offsets (None when not computed).
    """

    mask_value: int
    label: str
    score: float
    top_labels: list[str]
    top_scores: list[float]
    confidence: float
    audio_activation: float
    bbox: tuple[int, int, int, int]
    factor_index: int
    audio_factor: int = -1
    track_id: int = 0
    activation: np.ndarray | None = None


@dataclass
class TacoResult:
    """Everything one window produced.

    mask: uint8 [H, W] of the frame's size: 0 background, v = objects[v-1].mask_value.
    activation: [T] activation of factor k* over the window, time-ordered (bands averaged);
        token_offsets [T]: start of each bin in seconds after the window start; each bin is
        token_duration long and together they span window_duration.
    k_star: the sounding factor (-1 when nothing ran: silence gate; the chosen word in baseline).
    timings: milliseconds per stage (STAGES).
    score_map: float32 [H, W] soft map of k* (None when no map was computed).
    coarse_map: float32 [rows, cols] U_I[:, k*] on the token grid (None when the solver did not run).
    solver_backoffs: times the solver undid a step whose objective was non-finite and continued with a
        smaller step size (the window was kept).
    object_maps: float32 [H, W] soft map of each object, in the order of ``objects`` (an object of
        several merged factors: their maps added in full mode, their activations' maximum in coarse
        mode); empty when there is no object.
    """

    mask: np.ndarray
    objects: list[SoundingObjectResult]
    sounding: bool
    confidence: float
    k_star: int
    steps: int
    cold_start: bool
    mode: str
    activation: np.ndarray
    token_offsets: np.ndarray
    token_duration: float
    window_duration: float
    timings: dict[str, float]
    score_map: np.ndarray | None
    random_weights: bool
    labels: list[str] = field(default_factory=list)
    label_scores: list[float] = field(default_factory=list)
    cold_reason: str = ''
    coarse_map: np.ndarray | None = None
    solver_backoffs: int = 0
    object_maps: list[np.ndarray] = field(default_factory=list)
