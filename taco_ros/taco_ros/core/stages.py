"""The stages of one window, in the order they run (docs/method.md; docs/architecture.md).

:class:`Stages` holds the models on one device and runs

1. :meth:`~Stages.encode_frame`: frame → X_I and the backbone features (one trunk pass);
2. :meth:`~Stages.encode_audio`: window → X_A and the time span of every audio token;
3. :meth:`~Stages.solve` (one window, warm-startable) or :meth:`~Stages.solve_video` (the paper's
   batch over a video): the co-NMF → factors, activations, k*, labels;
4. :meth:`~Stages.semantic_map` (FC-CLIP's map of k*) or :meth:`~Stages.coarse_map` (U_I[:, k*] on
   the token grid, upsampled); in the baseline, :meth:`~Stages.choose_word` replaces step 3;
5. :func:`sounding_objects`: the mask decision (:func:`mask_decision`) and the box; with several
   objects, :func:`layered_objects` shares one mask out between their maps;
6. :meth:`~Stages.timeline`: the activation of k* over the window's time axis.

TacoPipeline.process composes them for the node; the evaluation calls the same methods, so there
is one implementation of each. Host and device: the frame and the audio input go to the device
once (from pinned memory, asynchronously, on CUDA); each stage's results come back once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from taco_ros.core.contract import PipelineConfig, SoundingObjectResult

if TYPE_CHECKING:
    from taco_ros.core.clip_backbone import ImageTokens
    from taco_ros.core.conmf import AnchorBank, CoNMFConfig, CoNMFResult
    from taco_ros.core.masks import MaskDecision
    from taco_ros.core.models import Models

PRECISION_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
# FC-CLIP masks are upsampled to the output size query by query; beyond this many pixels it is
# cheaper to build the map at the network's resolution and resize the one channel.
MAX_DIRECT_MAP_PIXELS = 764 * 764


@dataclass
class AudioTokens:
    """raw: HTS-AT token map [1, N_A, C_A] (float32); tokens: X_A = relu(raw); spans [N_A, 2]
    seconds from the window start; segment: what went into the 7-s model input."""

    raw: torch.Tensor
    tokens: torch.Tensor
    spans: np.ndarray
    segment: Any


@dataclass
class Timeline:
    """The activation of one factor over a window: values [T] in time order, the bins' start
    offsets [T] (seconds after the window start) and their common length."""

    values: np.ndarray
    offsets: np.ndarray
    bin_duration: float


@dataclass
class WordChoice:
    """The baseline's pick: the best words (best first) with their CLAP probabilities, the bank
    index of the best one, and its per-token probability [N_A] (host)."""

    index: int
    labels: list[str]
    scores: list[float]
    column: np.ndarray


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class Stages:
    """The per-window stages on one device (module docstring).

    models: core.models.Models (backbone, audio, segmenter); precision: autocast of the encoders
    and FC-CLIP on CUDA ('fp32' | 'fp16' | 'bf16'); the solver always runs in float32.
    """

    def __init__(self, models: Models, device: torch.device, precision: str = 'fp32',
                 solver_threads: int = 1) -> None:
        self.models = models
        self.device = device
        self.precision = precision
        self.solver_threads = solver_threads

    # ---------------------------------------------------------------- device helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        """The configured autocast on CUDA; nothing on the CPU or in fp32."""
        dtype = PRECISION_DTYPES[self.precision]
        if self.device.type == 'cuda' and dtype is not None:
            return torch.autocast('cuda', dtype=dtype)
        return contextlib.nullcontext()

    def sync(self) -> None:
        """Wait for the device (timings must cover the work, not just its launch)."""
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def timed(self, timings: dict[str, float], stage: str) -> Iterator[None]:
        """Add the block's wall time (device work included) to ``timings[stage]`` in ms."""
        start = time.perf_counter()
        yield
        self.sync()
        timings[stage] = timings.get(stage, 0.0) + elapsed_ms(start)

    @contextlib.contextmanager
    def solver_thread_count(self) -> Iterator[None]:
        """torch's intra-op threads set to ``solver_threads`` for the block (CPU only; 0 = as is).

        The setting is process-wide: the node runs one window at a time, and nothing else it runs
        meanwhile uses torch's CPU pool.
        """
        wanted = int(self.solver_threads)
        previous = torch.get_num_threads()
        if self.device.type != 'cpu' or wanted <= 0 or wanted == previous:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array on the device: through pinned memory without blocking on CUDA."""
        tensor = torch.as_tensor(array)
        if self.device.type == 'cuda':
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    # ---------------------------------------------------------------- 1-2: encoders
    @torch.no_grad()
    def encode_frame(self, frame: np.ndarray) -> ImageTokens:
        """uint8 RGB [H, W, 3] → ImageTokens (X_I, token grid, backbone features)."""
        image = self.to_device(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        with self.autocast():
            return self.models.backbone.encode(image)

    @torch.no_grad()
    def encode_audio(self, samples: np.ndarray, sample_rate: int, history: Any = None,
                     context: str = 'tile') -> AudioTokens:
        """One window → X_A (clamped) and the raw token map (CLAP's clip embedding is its mean)."""
        from taco_ros.core.audio_encoder import token_spans

        audio = self.models.audio
        model_input, segment = audio.prepare(samples, sample_rate, history=history,
                                             context=context)
        with self.autocast():
            raw = audio(self.to_device(model_input[None])).float()
        bands, steps = audio.grid
        spans = token_spans(segment, steps=steps, bands=bands, duration_sec=audio.duration_sec)
        return AudioTokens(raw=raw, tokens=raw.clamp_min(0.0), spans=spans, segment=segment)

    # ---------------------------------------------------------------- 3: co-NMF
    def solve(self, image: ImageTokens, audio: AudioTokens, bank: AnchorBank, config: CoNMFConfig,
              warm_start: CoNMFResult | None = None) -> CoNMFResult:
        """conmf.solve of one window (``config``: a CoNMFConfig) → CoNMFResult."""
        from taco_ros.core.conmf import solve

        with torch.enable_grad(), self.solver_thread_count():  # it differentiates its objective
            return solve(image.tokens[0].float(), audio.tokens[0].float(), bank, config,
                         warm_start=warm_start)

    def solve_video(self, images: Sequence[ImageTokens], audios: Sequence[AudioTokens],
                    bank: AnchorBank, config: CoNMFConfig, temporal: bool) -> list[CoNMFResult]:
        """conmf.solve_batch over the frames of one video (cold starts; ``temporal``: the
        paper's batch temporal term between consecutive frames)."""
        from taco_ros.core.conmf import solve_batch

        with torch.enable_grad(), self.solver_thread_count():
            return solve_batch(torch.stack([im.tokens[0].float() for im in images]),
                               torch.stack([au.tokens[0].float() for au in audios]),
                               bank, config, temporal=temporal)

    @staticmethod
    def columns(result: CoNMFResult, k: int) -> tuple[np.ndarray, np.ndarray]:
        """U_I[:, k] and U_A[:, k] on the host, in one transfer."""
        image = result.image_activations[:, k].float()
        both = torch.cat([image, result.audio_activations[:, k].float()]).cpu().numpy()
        return both[:image.numel()], both[image.numel():]

    def choose_word(self, audio: AudioTokens, bank: AnchorBank, top_k: int) -> WordChoice:
        """A-FC-CLIP: CLAP's clip embedding against the bank's CLAP text vectors picks the word;
        each token projected alone gives that word's per-token probability."""
        with torch.no_grad():
            encoder = self.models.audio
            _, unit_audio = bank.unit_vectors()
            scale = float(bank.audio_logit_scale)
            clip_embedding = F.normalize(encoder.clip_embedding(audio.raw).float(), dim=-1)
            probs = (scale * clip_embedding @ unit_audio.T).softmax(-1)[0]        # [J]
            top = probs.topk(min(top_k, probs.numel()))
            tokens = F.normalize(encoder.projection(audio.raw[0]), dim=-1)
            per_token = (scale * tokens @ unit_audio.T).softmax(-1)              # [N_A, J]
            column = per_token.index_select(1, top.indices[:1])[:, 0]
            host = torch.cat([top.values.float(), top.indices.float(), column.float()]).cpu()
        count = top.values.numel()
        indices = [int(i) for i in host[count:2 * count].tolist()]
        return WordChoice(index=indices[0], labels=[bank.words[i] for i in indices],
                          scores=host[:count].tolist(), column=host[2 * count:].numpy())

    # ---------------------------------------------------------------- 4: maps
    @torch.no_grad()
    def semantic_maps(self, image: ImageTokens, factors: torch.Tensor,
                      channels: Sequence[int] | None = None,
                      out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """FC-CLIP's semantic maps [C, H, W] (on the device) of ``channels`` (None: all K) for
        the factor set ``factors`` [K, D_I], at ``out_size`` (default: the resized-image grid)."""
        segmenter = self.models.segmenter
        with self.autocast():
            prepared = segmenter.prepare(image.features, image.valid_size)
        return segmenter.semantic_map(prepared, factors.float(), out_size=out_size,
                                      channels=channels)[0].float()

    @torch.no_grad()
    def semantic_map(self, image: ImageTokens, factors: torch.Tensor, k: int,
                     frame_shape: tuple[int, ...]) -> np.ndarray:
        """sem[k] at the frame's size (FC-CLIP post-processing to the output size), float32."""
        return self.frame_semantic_maps(image, factors, [k], frame_shape)[0]

    @torch.no_grad()
    def frame_semantic_maps(self, image: ImageTokens, factors: torch.Tensor, channels: Sequence[int],
                            frame_shape: tuple[int, ...]) -> np.ndarray:
        """sem[c] of each of ``channels`` at the frame's size, float32 [C, H, W] (one FC-CLIP pass)."""
        height, width = frame_shape[:2]
        direct = height * width <= MAX_DIRECT_MAP_PIXELS
        out_size = (height, width) if direct else tuple(image.valid_size)
        sem = self.semantic_maps(image, factors, channels=list(channels), out_size=out_size)
        if not direct:
            sem = F.interpolate(sem[None], size=(height, width), mode='bilinear',
                                align_corners=False)[0]
        return sem.cpu().numpy()

    def coarse_map(self, column: np.ndarray, image: ImageTokens, frame_shape: tuple[int, ...]) -> np.ndarray:
        """U_I[:, k*] on the token grid, upsampled (bicubic) over the padded input, cropped to the
        image region and resized to the frame (the paper's unrefined map)."""
        from taco_ros.core.masks import coarse_score_map

        rows, cols = image.grid
        size = self.models.backbone.size_divisibility
        full = coarse_score_map(column, (rows * size, cols * size), grid=(rows, cols))
        h, w = image.valid_size
        crop = torch.from_numpy(np.ascontiguousarray(full[:h, :w]))[None, None]
        out = F.interpolate(crop, size=tuple(frame_shape[:2]), mode='bilinear',
                            align_corners=False)
        return out[0, 0].clamp_(0.0, 1.0).numpy()

    # ---------------------------------------------------------------- 6: audio time axis
    def bin_count(self, window_sec: float) -> int:
        """Activation bins per window: about one per audio token step (7 s / 32 ≈ 0.22 s)."""
        _, steps = self.models.audio.grid
        return max(1, round(window_sec / (self.models.audio.duration_sec / steps)))

    def timeline(self, column: np.ndarray | None, audio: AudioTokens | None,
                 window_sec: float) -> Timeline:
        """Per-token values folded onto equal bins spanning the window (bands averaged, tiled
        repetitions folded back); ``column`` None gives zeros (nothing ran)."""
        from taco_ros.core.audio_encoder import activation_timeline

        bins = self.bin_count(window_sec)
        if column is None:
            values = np.zeros(bins, np.float32)
        else:
            values = activation_timeline(column, audio.spans, audio.segment, bins)
            values = np.nan_to_num(values, nan=0.0).astype(np.float32)
        duration = window_sec / bins
        return Timeline(values, (np.arange(bins) * duration).astype(np.float32), duration)


# -------------------------------------------------------------------- maps on the host
def token_grid(column: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A per-token column [rows·cols] (row-major) as a float32 [rows, cols] map."""
    return np.asarray(column, dtype=np.float32).reshape(grid)


def mask_decision(score_map: np.ndarray, config: PipelineConfig) -> MaskDecision:
    """The node's mask rule: ``score_map > mask_threshold``, components smaller than
    ``min_component_area`` pixels removed (core.masks.decide_mask) → MaskDecision."""
    from taco_ros.core.masks import decide_mask

    height, width = score_map.shape[:2]
    fraction = min(config.min_component_area / float(height * width), 0.999999)
    return decide_mask(score_map, config.mask_threshold, min_area_fraction=fraction)


def sounding_objects(score_map: np.ndarray | None, config: PipelineConfig,
                     shape: tuple[int, int], *, k: int, labels: Sequence[str],
                     scores: Sequence[float], confidence: float, audio_activation: float,
                     ) -> tuple[list[SoundingObjectResult], np.ndarray]:
    """The objects and the uint8 mask of one window: none when there is no map or the decision
    is empty, else one object (mask value 1) with its box and the best labels."""
    mask = np.zeros(shape, np.uint8)
    if score_map is None:
        return [], mask
    decision = mask_decision(score_map, config)
    if decision.empty:
        return [], mask
    mask[decision.mask] = 1
    obj = SoundingObjectResult(
        mask_value=1, label=labels[0], score=float(scores[0]), top_labels=list(labels),
        top_scores=[float(s) for s in scores], confidence=confidence,
        audio_activation=audio_activation, bbox=tuple(int(v) for v in decision.box),
        factor_index=k)
    return [obj], mask


@dataclass
class ObjectLayer:
    """One sounding object before the mask is shared out: its soft map at the frame's size and the
    object it becomes when it keeps pixels (mask_value and bbox are set by :func:`layered_objects`)."""

    score_map: np.ndarray
    obj: SoundingObjectResult


def layered_objects(layers: Sequence[ObjectLayer], config: PipelineConfig, shape: tuple[int, int],
                    ) -> tuple[list[int], np.ndarray]:
    """Several objects in one uint8 mask: which layers became objects (indices into ``layers``) and
    the mask.

    Each layer's own decision (:func:`mask_decision`: threshold, then the component clean-up) says
    which pixels it claims. A pixel claimed by several layers goes to the one whose soft map is
    highest there (the first layer on a tie, so k* wins a tie); a layer left without a pixel is
    dropped. The kept layers get mask values 1..n in their order, and their boxes from the pixels
    they kept. One layer gives exactly :func:`sounding_objects`' mask and box.
    """
    mask = np.zeros(shape, np.uint8)
    claims = [(i, mask_decision(layer.score_map, config).mask) for i, layer in enumerate(layers)]
    claims = [(i, claimed) for i, claimed in claims if claimed.any()]
    if not claims:
        return [], mask
    from taco_ros.core.masks import bounding_box

    scores = np.stack([np.where(claimed, layers[i].score_map, -np.inf) for i, claimed in claims])
    winner = scores.argmax(axis=0)
    claimed_any = np.logical_or.reduce([claimed for _, claimed in claims])
    kept = []
    for position, (i, _) in enumerate(claims):
        pixels = claimed_any & (winner == position)
        if not pixels.any():
            continue
        kept.append(i)
        layers[i].obj.mask_value = len(kept)
        layers[i].obj.bbox = bounding_box(pixels)
        mask[pixels] = len(kept)
    return kept, mask
