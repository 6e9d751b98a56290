"""The ROS-free TACO pipeline: one camera frame + one audio window → sounding-object mask, labels and
audio activation (Malard et al., arXiv 2412.01488; method.md).

One :class:`TacoPipeline` owns, on one device,

* the shared CLIP ConvNeXt (:class:`~taco_ros.core.clip_backbone.ClipBackbone`): image tokens X_I
  and the FC-CLIP backbone features from a single trunk pass,
* the CLAP audio encoder (HTS-AT tokens X_A, the audio projection and logit scale),
* the FC-CLIP head (:class:`~taco_ros.core.fcclip.FCCLIP`), prompted with the image factors,
* the anchor bank (CLIP and CLAP text vectors of the vocabulary), and
* the warm-start state of the streaming co-NMF (the previous window's factorisation).

Per window (:meth:`TacoPipeline.process`):

1. silence gate: a window whose RMS is below ``silence_rms`` is "nothing sounding" (no model runs);
2. X_I = relu(head(clip_vis_dense)) of the frame, X_A = relu(HTS-AT tokens) of the window (tiled to
   7 s, or the last 7 s of real audio);
3. co-NMF of (X_I, X_A) against the bank → factors V_I, activations U_I, U_A and k*, the factor shared
   by sound and image, with its labels and the solver's sounding decision;
4. the mask of k*: FC-CLIP's semantic map for the factor set V_I, channel k* (mode 'full'), or U_I[:, k*]
   on the token grid upsampled (mode 'coarse'); thresholded, cleaned, boxed.

Mode 'baseline' is A-FC-CLIP from the paper: CLAP's clip-level audio embedding picks the best word of
the vocabulary and FC-CLIP segments that word's CLIP text vector (no co-factorisation).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taco_ros.core.contract import (
    LIVE_FIELDS,
    STAGES,
    AudioWindow,
    PipelineConfig,
    SoundingObjectResult,
    TacoResult,
)

_LOG = logging.getLogger(__name__)

PRECISION_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
# FC-CLIP masks are upsampled to the output size query by query; beyond this many pixels it is
# cheaper to build the map at the network's resolution and resize the one channel.
MAX_DIRECT_MAP_PIXELS = 764 * 764

__all__ = ['AudioWindow', 'PipelineConfig', 'SoundingObjectResult', 'TacoPipeline', 'TacoResult']


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


class _TextEncoders:
    """CLIP text tower (inside the shared backbone, pinned to the CPU) + CLAP caption encoder,
    with a cache of the vectors of every word encoded so far."""

    def __init__(self, backbone: Any, clap_text: Any, audio: Any) -> None:
        self.backbone = backbone
        self.clap_text = clap_text
        self.audio = audio
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(self, words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[J, D_I] CLIP and [J, D_P] CLAP text vectors of ``words`` (CPU, float32)."""
        new = [w for w in dict.fromkeys(words) if w not in self.cache]
        if new:
            image, audio = self._encode_new(new)
            for i, word in enumerate(new):
                self.cache[word] = (image[i], audio[i])
        return (torch.stack([self.cache[w][0] for w in words]),
                torch.stack([self.cache[w][1] for w in words]))

    @torch.no_grad()
    def _encode_new(self, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        import open_clip
        prompt = getattr(self.backbone, 'prompt', 'A photo of a {}')
        tokens = open_clip.tokenizer.tokenize([prompt.format(w) for w in words])
        image = self.backbone.encode_text(tokens).float().cpu()
        if self.clap_text is None:
            # Random-weight run without the GPT-2 tokenizer files: seeded random vectors per word.
            audio = torch.stack([_random_vector(w, self.audio.projection.linear1.out_features)
                                 for w in words])
        else:
            clap_prompt = getattr(self.audio, 'prompt', 'This is a sound of {}')
            audio = self.clap_text([clap_prompt.format(w) for w in words]).float().cpu()
        return image, audio


@dataclass
class _AudioTokens:
    """raw: HTS-AT token map [1, N_A, C_A]; tokens: X_A = relu(raw); spans [N_A, 2] seconds from
    the window start; segment: what went into the 7-s model input."""

    raw: torch.Tensor
    tokens: torch.Tensor
    spans: np.ndarray
    segment: Any


def _random_vector(word: str, dim: int) -> torch.Tensor:
    import zlib
    generator = torch.Generator().manual_seed(zlib.crc32(word.encode('utf-8')))
    return torch.randn(dim, generator=generator)


class TacoPipeline:
    """Models, anchor bank and warm-start state for TACO on one device (module docstring).

    Thread safety: :meth:`process` may run while another thread calls :meth:`set_vocabulary` or
    :meth:`update` (the new bank/options apply from the next window); process itself is not
    re-entrant, and suspend/resume/close must not overlap it.
    """

    def __init__(self, config: PipelineConfig) -> None:
        from taco_ros.core.models import RANDOM_SUFFIX, load_model_config

        config = config.copy()
        validate_config(config)
        self.config = config
        self.device = resolve_device(config.device)
        self._lock = threading.Lock()
        self._previous: Any = None
        self._model_cfg = load_model_config(config.model_config)
        self._suspended = False
        # Things a user should know about how this pipeline runs (e.g. a fallback); the node logs them.
        self.notes: list[str] = []
        torch.manual_seed(config.seed)
        self._load_models()
        self.random_weights = any(
            str(getattr(m, 'model_id', '')).endswith(RANDOM_SUFFIX)
            for m in (self.backbone, self.audio, self.segmenter) if m is not None)
        self._place_models(self.device)
        self._bank = self._initial_bank()
        if not config.keep_text_encoders:
            self._drop_text_encoders()

    # ------------------------------------------------------------------ loading
    def _load_models(self) -> None:
        from taco_ros.core.models import create_clap, create_clip

        cfg, config = self._model_cfg, self.config
        needs_text = config.anchors is None or config.keep_text_encoders
        self.backbone = create_clip(
            cfg, model_dir=config.model_dir, allow_random_weights=config.allow_random_weights,
            with_text=needs_text, resize=config.resize)
        self.audio = create_clap(cfg, model_dir=config.model_dir,
                                 allow_random_weights=config.allow_random_weights)
        self.segmenter = self._load_segmenter()
        self._text = _TextEncoders(self.backbone, self._load_clap_text(), self.audio) \
            if needs_text else None

    def _load_clap_text(self) -> Any:
        from taco_ros.core.model_files import ModelFileNotFound
        from taco_ros.core.models import create_clap_text

        try:
            return create_clap_text(self._model_cfg, model_dir=self.config.model_dir,
                                    allow_random_weights=self.config.allow_random_weights)
        except ModelFileNotFound:
            if not self.config.allow_random_weights:
                raise
            return None  # random run without tokenizer files: random CLAP word vectors

    def _load_segmenter(self) -> Any:
        """FC-CLIP head on the shared backbone. Its checkpoint's ``backbone.*`` part is not loaded:
        the backbone weights come from the CLIP file (one CLIP for X_I and the segmenter)."""
        from taco_ros.core.fcclip import FCCLIPConfig, build_fcclip, load_state_into, read_checkpoint
        from taco_ros.core.model_files import ModelFileNotFound, find_model_file
        from taco_ros.core.models import RANDOM_SUFFIX

        cfg, config = self._model_cfg, self.config
        file_id = cfg['files'].get('fcclip')
        if file_id is None:
            raise ValueError(f'model config {cfg.get("name")!r} names no FC-CLIP file')
        try:
            path = find_model_file(file_id, config.model_dir)
        except ModelFileNotFound as missing:
            if config.allow_random_weights:
                path = None
            elif config.mode == 'baseline':
                raise  # A-FC-CLIP is FC-CLIP itself: nothing to fall back to
            else:
                # CLIP + CLAP still give the co-NMF's coarse 24x24 map: degrade rather than refuse.
                if config.mode == 'full':
                    self.notes.append(f'FC-CLIP checkpoint missing, masks are the coarse co-NMF map '
                                      f'(mode full runs as coarse). {missing}')
                    _LOG.warning(self.notes[-1])
                return None
        segmenter = build_fcclip(self.backbone, FCCLIPConfig.from_dict(dict(cfg['fcclip'])))
        if path is None:
            segmenter.model_id = 'fcclip' + RANDOM_SUFFIX
            return segmenter
        # The head only: sem_seg_head.* and void_embedding.* (criterion.* is training state).
        state = read_checkpoint(path)
        problems = []
        for part in ('sem_seg_head', 'void_embedding'):
            prefix = part + '.'
            report = load_state_into(
                getattr(segmenter, part),
                {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                f'{path} [{part}]')
            if not report.ok:
                problems.append(report.summary())
        if problems:
            raise ValueError('FC-CLIP checkpoint does not fit the model config:\n'
                             + '\n'.join(problems))
        segmenter.model_id = str(file_id)
        return segmenter

    def _initial_bank(self) -> Any:
        from taco_ros.core.vocabulary import audioset_labels, load_anchor_bank

        config = self.config
        if config.anchors is not None:
            expected = {'clip': self.backbone.model_id, 'clap': self.audio.model_id}
            if self.random_weights:
                expected = None  # random models match no bank; any bank's shapes will do
            full = load_anchor_bank(config.anchors, expected)
            if expected is None:
                self._check_bank_shapes(full)
            if self._text is not None:
                for i, word in enumerate(full.words):
                    self._text.cache[word] = (full.image[i].float().cpu(),
                                              full.audio[i].float().cpu())
            self._file_bank = full
            words = config.vocabulary or list(full.words)
            problem = self.vocabulary_problem(words)
            if problem:
                raise ValueError(problem)
            return self._make_bank(words)
        self._file_bank = None
        return self._make_bank(config.vocabulary or audioset_labels())

    def _check_bank_shapes(self, bank: Any) -> None:
        d_image = self.backbone.embed_dim
        d_proj = self.audio.projection.linear1.out_features
        if bank.image.shape[1] != d_image or bank.audio.shape[1] != d_proj:
            raise ValueError(f'anchor bank vectors ({bank.image.shape[1]}, {bank.audio.shape[1]}) do '
                             f'not fit the models ({d_image}, {d_proj})')

    def _make_bank(self, words: Sequence[str]) -> Any:
        """conmf.AnchorBank of ``words`` on the pipeline device."""
        from taco_ros.core.conmf import AnchorBank

        words = list(words)
        if self._text is not None:
            image, audio = self._text.encode(words)
        else:
            bank = self._file_bank.subset(words)
            image, audio = bank.image, bank.audio
        return AnchorBank(words, image.to(self.device), audio.to(self.device),
                          self.audio.projection, self.audio.logit_scale)

    def _drop_text_encoders(self) -> None:
        if self.backbone.has_text_tower:
            self.backbone.drop_text_tower()
        if self._text is not None:
            self._text.clap_text = None
        self._text = None

    def _place_models(self, device: torch.device) -> None:
        """Move the models to ``device``; the text encoders stay on the CPU (they only run when
        the vocabulary changes, and would cost GPU memory for nothing)."""
        self.backbone.to(device)
        self.audio.to(device)
        if self.segmenter is not None:
            self.segmenter.to(device)
        if self.backbone.has_text_tower:
            model = self.backbone.clip_model
            for name in ('transformer', 'token_embedding', 'ln_final'):
                getattr(model, name).to('cpu')
            for name in ('positional_embedding', 'text_projection'):
                tensor = getattr(model, name)
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.data = tensor.data.to('cpu')
            if getattr(model, 'attn_mask', None) is not None:
                model.attn_mask = model.attn_mask.to('cpu')
        bank = getattr(self, '_bank', None)
        if bank is not None:
            self._bank = bank.to(device)

    # ------------------------------------------------------------------ public control
    @property
    def vocabulary(self) -> list[str]:
        return list(self._bank.words)

    @property
    def bank(self) -> Any:
        """The co-NMF AnchorBank in use (on the pipeline device); replaced, never mutated, by
        set_vocabulary."""
        return self._bank

    def vocabulary_problem(self, words: Sequence[str]) -> str | None:
        """Why ``words`` cannot become the vocabulary (None when they can)."""
        words = list(words)
        if len(words) < 2:
            return 'the vocabulary needs at least 2 words'
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            return f'vocabulary words must be non-empty strings, got {bad[:5]!r}'
        if len(set(words)) != len(words):
            return 'the vocabulary has duplicate words'
        if self._text is None:
            missing = [w for w in words if w not in self._file_bank.words]
            if missing:
                return (f'words not in the anchor bank file and no text encoders loaded: '
                        f'{missing[:10]}')
        return None

    def set_vocabulary(self, words: Sequence[str] | None) -> None:
        """Use ``words`` (None: the default vocabulary) from the next window; ValueError if unusable."""
        from taco_ros.core.vocabulary import audioset_labels

        if words is None:
            words = list(self._file_bank.words) if self._file_bank is not None else audioset_labels()
        problem = self.vocabulary_problem(words)
        if problem:
            raise ValueError(problem)
        self._bank = self._make_bank(words)  # one assignment: process() sees old or new
        self.config.vocabulary = list(words)

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

    def reset(self) -> None:
        """Forget the warm-start state: the next window starts the co-NMF cold."""
        self._previous = None

    def suspend(self) -> None:
        """Free the GPU (models to the CPU) while the node is inactive; no-op on the CPU."""
        if self.device.type == 'cuda' and not self._suspended:
            self._previous = None
            self._place_models(torch.device('cpu'))
            torch.cuda.empty_cache()
            self._suspended = True

    def resume(self) -> None:
        """Undo :meth:`suspend`."""
        if self._suspended:
            self._place_models(self.device)
            self._suspended = False

    def close(self) -> None:
        """Release every model and tensor (GPU memory included)."""
        self._previous = None
        for name in ('backbone', 'audio', 'segmenter', '_text', '_bank', '_file_bank'):
            if hasattr(self, name):
                setattr(self, name, None)
        if self.device.type == 'cuda':
            gc.collect()   # tensors held by reference cycles must go before the cache is emptied
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ processing
    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = PRECISION_DTYPES[self.config.precision]
        if self.device.type == 'cuda' and dtype is not None:
            with torch.autocast('cuda', dtype=dtype):
                yield
        else:
            yield

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def process(self, frame: np.ndarray, window: AudioWindow) -> TacoResult:
        """One frame (uint8 RGB [H, W, 3]) and its audio window → :class:`TacoResult`."""
        frame = _check_frame(frame)
        samples = _check_window(window)
        with self._lock:
            config, bank = self.config, self._bank
            started = time.perf_counter()
            rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
            if rms < config.silence_rms:
                return self._silent_result(frame, window, config, started)
            if config.mode == 'baseline':
                return self._baseline(frame, window, config, bank, started)
            return self._taco(frame, window, config, bank, started)

    @torch.no_grad()
    def _encode_image(self, frame: np.ndarray) -> Any:
        image = torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None]
        with self._autocast():
            return self.backbone.encode(image)

    @torch.no_grad()
    def _encode_audio(self, window: AudioWindow, config: PipelineConfig) -> _AudioTokens:
        """X_A (clamped) and the raw token map (the CLAP clip embedding is their plain mean)."""
        from taco_ros.core.audio_encoder import token_spans

        history = window.history if config.audio_context == 'history' else None
        model_input, segment = self.audio.prepare(
            window.samples, window.sample_rate, history=history, context=config.audio_context)
        with self._autocast():
            raw = self.audio(model_input[None].to(self.device)).float()
        bands, steps = self.audio.grid
        spans = token_spans(segment, steps=steps, bands=bands, duration_sec=self.audio.duration_sec)
        return _AudioTokens(raw=raw, tokens=raw.clamp_min(0.0), spans=spans, segment=segment)

    def _encode(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig,
                timings: dict[str, float]) -> tuple[Any, _AudioTokens]:
        """Both encoders, each timed into ``timings`` (ms)."""
        t = time.perf_counter()
        image = self._encode_image(frame)
        self._sync()
        timings['image_encoder'] = _ms(t)
        t = time.perf_counter()
        audio = self._encode_audio(window, config)
        self._sync()
        timings['audio_encoder'] = _ms(t)
        return image, audio

    def _taco(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig, bank: Any,
              started: float) -> TacoResult:
        from taco_ros.core.conmf import solve

        timings: dict[str, float] = {}
        image, audio = self._encode(frame, window, config, timings)
        t = time.perf_counter()
        with torch.enable_grad():  # the solver differentiates its objective
            result = solve(image.tokens[0].float(), audio.tokens[0].float(), bank,
                           solver_config(config), warm_start=self._previous)
        self._previous = result
        timings['conmf'] = _ms(t)
        k = int(result.k_star)
        t = time.perf_counter()
        score_map = None
        mode = config.mode if self.segmenter is not None else 'coarse'
        if result.sounding or config.always_segment:
            if mode == 'coarse':
                score_map = self._coarse_map(result.image_activations[:, k], image, frame.shape)
            else:
                score_map = self._semantic_map(image, result.image_factors, k, frame.shape)
        self._sync()
        timings['segmenter'] = _ms(t)
        column = result.audio_activations[:, k].float().cpu().numpy()
        activation, offsets, token_duration = self._timeline(column, audio, window)
        objects, mask = self._objects(
            score_map if result.sounding else None, config, label=result.labels[0],
            score=float(result.label_scores[0]), labels=result.labels,
            scores=result.label_scores, confidence=float(result.confidence),
            audio_activation=float(column.mean()), k=k, shape=frame.shape[:2])
        timings['total'] = _ms(started)
        return TacoResult(
            mask=mask, objects=objects, sounding=bool(result.sounding),
            confidence=float(result.confidence), k_star=k, steps=int(result.steps),
            cold_start=bool(result.cold_start), mode=mode, activation=activation,
            token_offsets=offsets, token_duration=token_duration,
            window_duration=window.duration, timings=timings, score_map=score_map,
            random_weights=self.random_weights, labels=list(result.labels),
            label_scores=[float(s) for s in result.label_scores], cold_reason=result.cold_reason)

    @torch.no_grad()
    def _baseline(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig, bank: Any,
                  started: float) -> TacoResult:
        """A-FC-CLIP: CLAP's clip embedding picks word j; FC-CLIP segments T_I[j] among the bank."""
        timings: dict[str, float] = {}
        image, audio = self._encode(frame, window, config, timings)
        t = time.perf_counter()  # the word choice is part of the audio side: no co-NMF here
        _, unit_audio = bank.unit_vectors()
        scale = float(bank.audio_logit_scale)
        clip_embedding = F.normalize(self.audio.clip_embedding(audio.raw).float(), dim=-1)
        logits = scale * clip_embedding @ unit_audio.T                 # [1, J]
        probs = logits.softmax(-1)[0]
        top = probs.topk(min(config.top_k, probs.numel()))
        j = int(top.indices[0])
        # Per-token evidence for word j: its probability when each token alone is projected.
        tokens = F.normalize(self.audio.projection(audio.raw[0]), dim=-1)
        column = (scale * tokens @ unit_audio.T).softmax(-1)[:, j].cpu().numpy()
        self._sync()
        timings['audio_encoder'] += _ms(t)
        timings['conmf'] = 0.0
        t = time.perf_counter()
        score_map = self._semantic_map(image, bank.image.float(), j, frame.shape)
        self._sync()
        timings['segmenter'] = _ms(t)
        activation, offsets, token_duration = self._timeline(column, audio, window)
        labels = [bank.words[i] for i in top.indices.tolist()]
        scores = [float(s) for s in top.values]
        objects, mask = self._objects(
            score_map, config, label=labels[0], score=scores[0], labels=labels, scores=scores,
            confidence=scores[0], audio_activation=float(column.mean()), k=0,
            shape=frame.shape[:2])
        timings['total'] = _ms(started)
        return TacoResult(
            mask=mask, objects=objects, sounding=True, confidence=scores[0], k_star=j, steps=0,
            cold_start=True, mode='baseline', activation=activation, token_offsets=offsets,
            token_duration=token_duration, window_duration=window.duration, timings=timings,
            score_map=score_map, random_weights=self.random_weights, labels=labels,
            label_scores=scores, cold_reason='baseline')

    def _silent_result(self, frame: np.ndarray, window: AudioWindow, config: PipelineConfig,
                       started: float) -> TacoResult:
        bins = self._bin_count(window.duration)
        token_duration = window.duration / bins
        return TacoResult(
            mask=np.zeros(frame.shape[:2], np.uint8), objects=[], sounding=False, confidence=0.0,
            k_star=-1, steps=0, cold_start=self._previous is None, mode=config.mode,
            activation=np.zeros(bins, np.float32),
            token_offsets=(np.arange(bins) * token_duration).astype(np.float32),
            token_duration=token_duration, window_duration=window.duration,
            timings={**dict.fromkeys(STAGES[:-1], 0.0), 'total': _ms(started)}, score_map=None,
            random_weights=self.random_weights, cold_reason='silence gate')

    # ------------------------------------------------------------------ maps and masks
    @torch.no_grad()
    def _semantic_map(self, image: Any, factors: torch.Tensor, k: int,
                      frame_shape: tuple[int, ...]) -> np.ndarray:
        """FC-CLIP's sem[k] at the frame's size (FC-CLIP post-processing to the output size)."""
        height, width = frame_shape[:2]
        with self._autocast():
            prepared = self.segmenter.prepare(image.features, image.valid_size)
        direct = height * width <= MAX_DIRECT_MAP_PIXELS
        out_size = (height, width) if direct else tuple(image.valid_size)
        sem = self.segmenter.semantic_map(prepared, factors.float(), out_size=out_size,
                                          channels=[k])[0, 0]
        if not direct:
            sem = F.interpolate(sem[None, None], size=(height, width), mode='bilinear',
                                align_corners=False)[0, 0]
        return sem.float().cpu().numpy()

    def _coarse_map(self, column: torch.Tensor, image: Any,
                    frame_shape: tuple[int, ...]) -> np.ndarray:
        """U_I[:, k*] on the token grid, upsampled (bicubic) over the padded input, cropped to the
        image region and resized to the frame (the paper's unrefined map)."""
        from taco_ros.core.masks import coarse_score_map

        rows, cols = image.grid
        size = self.backbone.size_divisibility
        padded = (rows * size, cols * size)
        full = coarse_score_map(column.float().cpu(), padded, grid=(rows, cols))
        h, w = image.valid_size
        crop = torch.from_numpy(np.ascontiguousarray(full[:h, :w]))[None, None]
        out = F.interpolate(crop, size=tuple(frame_shape[:2]), mode='bilinear', align_corners=False)
        return out[0, 0].clamp_(0.0, 1.0).numpy()

    def _objects(self, score_map: np.ndarray | None, config: PipelineConfig, *, label: str,
                 score: float, labels: list[str], scores: list[float], confidence: float,
                 audio_activation: float, k: int, shape: tuple[int, int],
                 ) -> tuple[list[SoundingObjectResult], np.ndarray]:
        from taco_ros.core.masks import decide_mask

        mask = np.zeros(shape, np.uint8)
        if score_map is None:
            return [], mask
        fraction = min(config.min_component_area / float(shape[0] * shape[1]), 0.999999)
        decision = decide_mask(score_map, config.mask_threshold, min_area_fraction=fraction)
        if decision.empty:
            return [], mask
        mask[decision.mask] = 1
        obj = SoundingObjectResult(
            mask_value=1, label=label, score=score, top_labels=list(labels),
            top_scores=[float(s) for s in scores], confidence=confidence,
            audio_activation=audio_activation, bbox=tuple(int(v) for v in decision.box),
            factor_index=k)
        return [obj], mask

    # ------------------------------------------------------------------ audio time axis
    def _bin_count(self, window_sec: float) -> int:
        """Activation bins per window: about one per audio token step (7 s / 32 ≈ 0.22 s)."""
        _, steps = self.audio.grid
        step_sec = self.audio.duration_sec / steps
        return max(1, round(window_sec / step_sec))

    def _timeline(self, column: np.ndarray, audio: Any,
                  window: AudioWindow) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-token values folded onto equal bins spanning the window (bands averaged, tiled
        repetitions folded back), with the bins' start offsets and length."""
        from taco_ros.core.audio_encoder import activation_timeline

        bins = self._bin_count(window.duration)
        values = activation_timeline(column, audio.spans, audio.segment, bins)
        values = np.nan_to_num(values, nan=0.0).astype(np.float32)
        token_duration = window.duration / bins
        offsets = (np.arange(bins) * token_duration).astype(np.float32)
        return values, offsets, token_duration


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


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
