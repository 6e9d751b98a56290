"""CLAP-2023 audio tokens X_A and the CLAP text encoder for anchor banks (docs/method.md: audio
tokens, anchor bank).

Built from msclap's module classes (``HTSAT_Swin_Transformer``, ``Projection``) without its
``CLAPWrapper``, which downloads weights at construction. Weights come from a local
``CLAP_weights_2023.pth`` (msclap layout: ``{'model': state_dict}`` with ``audio_encoder.*``,
``caption_encoder.*`` and ``logit_scale``).

Audio path, per window:

1. any rate, any channel count → mono by **averaging** the channels. msclap flattens a stereo
   tensor, i.e. concatenates the channels end to end; averaging is a deliberate deviation (a
   robot's multichannel microphone must not turn into a clip of doubled length).
2. resampled to 44.1 kHz with ``torchaudio.functional.resample`` at its defaults (windowed-sinc,
   Hann window, 6 zero crossings, rolloff 0.99): band-limited, and exactly the resampler msclap
   applies (``torchaudio.transforms.Resample`` with default arguments), so a mono input gives
   the same samples TACO fed to CLAP.
3. made 7 s long (308,700 samples) the way msclap does for short clips: the audio is tiled and
   cut. Longer audio keeps its last 7 s (msclap takes a random crop; a node must be
   deterministic).
4. HTS-AT front end with the **module config** values (sr 32000, fmin 50, fmax 14000, 64 mels,
   n_fft 1024, hop 320) although the waveform is at 44.1 kHz: this is the mel filterbank the
   published weights were trained and evaluated with (msclap's ``HTSATWrapper`` ignores the
   yml's 44.1 kHz / 8 kHz values), and we reproduce it on purpose. The values live in the model
   config (``clap.frontend``) and a test checks them against msclap's ``config.py``.
5. Swin layers → final LayerNorm → token-semantic regrouping to 2 frequency bands × 32 time
   steps → X_A [B, 64, 768] (band-major: token n = band·32 + step), clamped at 0.

Token time spans: step s covers [s, s+1)·7 s/32 of the 7-s input (its nominal footprint; the
last Swin stage attends over the whole clip). See :func:`token_spans` for the map back to the
window.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

CLAP_SAMPLE_RATE = 44100
CLAP_DURATION_SEC = 7
AUDIO_CONTEXTS = ('tile', 'history')


def import_msclap_modules() -> tuple[Any, Any]:
    """(HTSAT_Swin_Transformer, Projection) from msclap, without msclap's global side effects.

    Importing msclap runs its ``CLAPWrapper`` module, which silences every Python warning of the
    process (``warnings.filterwarnings('ignore')``); the filters are restored afterwards.
    """
    saved = warnings.filters[:]
    try:
        from msclap.models.clap import Projection
        from msclap.models.htsat import HTSAT_Swin_Transformer
    finally:
        warnings.filters[:] = saved
    return HTSAT_Swin_Transformer, Projection


# -- waveform preparation ---------------------------------------------------------------------
def to_mono_float(samples: Any, channels: int | None = None) -> np.ndarray:
    """Samples → float32 mono in [-1, 1].

    samples: [n] (mono, or interleaved frames when ``channels`` > 1) or [n, C] frames;
    int16 / int32 are scaled from full scale, floats are taken as they are. Channels are averaged.
    """
    array = samples.detach().cpu().numpy() if isinstance(samples, Tensor) else np.asarray(samples)
    if array.dtype == np.int16:
        array = array.astype(np.float32) / 32768.0
    elif array.dtype == np.int32:
        array = array.astype(np.float32) / 2147483648.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    else:
        raise ValueError(f'audio samples must be int16, int32 or float, got {array.dtype}')
    if array.ndim == 1 and channels and channels > 1:
        if array.shape[0] % channels:
            raise ValueError(
                f'{array.shape[0]} interleaved samples is not a multiple of {channels} channels')
        array = array.reshape(-1, channels)
    if array.ndim == 2:
        array = array.mean(axis=1)
    elif array.ndim != 1:
        raise ValueError(f'audio must be [n] or [n, channels], got shape {array.shape}')
    if array.shape[0] == 0:
        raise ValueError('audio window is empty')
    if not np.isfinite(array).all():
        raise ValueError('audio contains NaN or infinite samples')
    return array


def resample(mono: np.ndarray | Tensor, sample_rate: int,
             target_rate: int = CLAP_SAMPLE_RATE) -> Tensor:
    """Band-limited resampling (torchaudio windowed sinc, msclap's defaults) → float32 tensor."""
    import torchaudio.functional as AF
    if sample_rate <= 0:
        raise ValueError(f'sample_rate must be positive, got {sample_rate}')
    x = torch.as_tensor(mono, dtype=torch.float32)
    if int(sample_rate) == int(target_rate):
        return x.clone()
    return AF.resample(x, int(sample_rate), int(target_rate))


def fit_to_duration(x: Tensor, num_samples: int) -> Tensor:
    """msclap's length rule: tile a short clip and cut it; keep the LAST ``num_samples`` of a long
    one (msclap crops at random; a node must be deterministic)."""
    if x.shape[-1] >= num_samples:
        return x[..., x.shape[-1] - num_samples:]
    repeats = math.ceil(num_samples / x.shape[-1])
    return x.repeat(repeats)[:num_samples]


@dataclass(frozen=True)
class AudioSegment:
    """What went into the 7-s model input for one window.

    segment_sec: seconds of real audio used (before tiling), window included, at most 7.
    window_sec: seconds of the window itself (the last part of the segment).
    """

    segment_sec: float
    window_sec: float


def token_spans(segment: AudioSegment, steps: int = 32, bands: int = 2,
                duration_sec: float = CLAP_DURATION_SEC) -> np.ndarray:
    """[bands·steps, 2] start/end seconds of each token, relative to the window's first sample.

    Step s covers [s, s+1)·D/steps of the D-second model input. That input is the segment tiled
    (segment shorter than D) or the segment's last D seconds. Tiled time τ maps back to segment
    time τ mod L (L = segment length); a span that crosses a tile boundary keeps its length, so
    its end may exceed the segment end: the part beyond wraps to the segment start (see
    :func:`activation_timeline`). Negative times lie in the history before the window.
    Rows follow X_A's band-major order (token n = band·steps + step).
    """
    if segment.segment_sec <= 0 or segment.window_sec <= 0:
        raise ValueError(f'segment and window must be positive, got {segment}')
    edges = np.arange(steps + 1, dtype=np.float64) * (duration_sec / steps)
    start, end = edges[:-1], edges[1:]
    length = segment.segment_sec
    if length >= duration_sec:
        offset = length - duration_sec  # the input is the segment's last D seconds
        seg_start, seg_end = start + offset, end + offset
    else:
        seg_start = np.mod(start, length)
        seg_end = seg_start + (end - start)
    window_offset = length - segment.window_sec
    spans = np.stack([seg_start - window_offset, seg_end - window_offset], axis=1)
    return np.tile(spans, (bands, 1))


def activation_timeline(values: np.ndarray | Tensor, spans: np.ndarray, segment: AudioSegment,
                        num_bins: int) -> np.ndarray:
    """Fold per-token values (e.g. an audio activation A_A[:, k]) onto ``num_bins`` equal bins
    spanning the window: each bin is the overlap-weighted mean of the tokens covering it, over
    both bands and every tiled repetition (spans wrapping past the segment end are split).

    values: [..., N_A]; spans: from :func:`token_spans`. Returns [..., num_bins] float32.
    Bins no token covers are NaN (cannot happen for windows up to 7 s).
    """
    v = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if v.shape[-1] != spans.shape[0]:
        raise ValueError(f'{v.shape[-1]} values for {spans.shape[0]} token spans')
    if num_bins <= 0:
        raise ValueError(f'num_bins must be positive, got {num_bins}')
    window = segment.window_sec
    wrap = segment.segment_sec if segment.segment_sec < CLAP_DURATION_SEC else None
    bin_edges = np.linspace(0.0, window, num_bins + 1)
    weights = np.zeros((spans.shape[0], num_bins))
    for n, (a, b) in enumerate(spans):
        pieces = [(a, b)]
        if wrap is not None and b > window + 1e-12:
            # The part beyond the segment end is the start of the next tile.
            pieces = [(a, window), (window - wrap, b - wrap)]
        for lo, hi in pieces:
            overlap = np.minimum(hi, bin_edges[1:]) - np.maximum(lo, bin_edges[:-1])
            weights[n] += np.clip(overlap, 0.0, None)
    total = weights.sum(axis=0)
    with np.errstate(invalid='ignore', divide='ignore'):
        folded = np.tensordot(v, weights, axes=([-1], [0])) / total
    return folded.astype(np.float32)


# -- the audio encoder ------------------------------------------------------------------------
class HTSATBase(nn.Module):
    """Holds ``htsat`` so parameter names match msclap's ``audio_encoder.base.htsat.*``."""

    def __init__(self, htsat: dict[str, Any], frontend: dict[str, Any]) -> None:
        super().__init__()
        HTSAT, _ = import_msclap_modules()
        # HTS-AT reads its front end from a config *module*; a namespace with the same fields
        # lets the model config carry the values (frontend = msclap config.py, see module doc).
        config = SimpleNamespace(
            enable_tscam=True, htsat_attn_heatmap=False, loss_type='clip_bce',
            enable_repeat_mode=False, **frontend)
        kwargs = dict(htsat)
        if 'patch_stride' in kwargs:
            kwargs['patch_stride'] = tuple(kwargs['patch_stride'])
        with warnings.catch_warnings():
            # msclap's Swin blocks call torch.meshgrid without indexing= (ij is what they mean).
            warnings.filterwarnings('ignore', message='torch.meshgrid', category=UserWarning)
            self.htsat = HTSAT(config=config, **kwargs)


@dataclass
class AudioTokens:
    """Result of :meth:`AudioEncoder.encode`: X_A [1, N_A, C_A] (clamped), the per-token spans
    [N_A, 2] in seconds from the window start, and the segment layout."""

    tokens: Tensor
    spans: np.ndarray
    segment: AudioSegment


class AudioEncoder(nn.Module):
    """CLAP-2023 audio side: HTS-AT (``base.htsat``), the 768→1024 ``projection`` and the CLAP
    logit scale.

    Parameter names equal msclap's ``audio_encoder.*`` with the prefix removed; the CLAP
    ``logit_scale`` (a log value) is the buffer ``clap_logit_scale``; :attr:`logit_scale` is its
    exponential, the factor TACO multiplies CLAP cosines by.
    """

    def __init__(self, htsat: dict[str, Any], frontend: dict[str, Any], d_proj: int,
                 sample_rate: int = CLAP_SAMPLE_RATE,
                 duration_sec: float = CLAP_DURATION_SEC) -> None:
        super().__init__()
        _, Projection = import_msclap_modules()
        self.base = HTSATBase(htsat, frontend)
        self.projection = Projection(self.token_dim, int(d_proj))
        self.register_buffer('clap_logit_scale', torch.tensor(math.log(1 / 0.07)))
        self.sample_rate = int(sample_rate)
        self.duration_sec = float(duration_sec)
        self.model_id = 'unnamed'
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> AudioEncoder:
        # Inference only: SpecAugment, dropout and drop_path must stay off.
        return super().train(False)

    @property
    def htsat(self) -> nn.Module:
        return self.base.htsat

    @property
    def token_dim(self) -> int:
        """C_A (768 for CLAP 2023)."""
        return int(self.htsat.num_features)

    @property
    def grid(self) -> tuple[int, int]:
        """(bands, steps) of the token map: (2, 32) for the 256² HTS-AT input."""
        h = self.htsat
        side = h.spec_size // h.patch_stride[0] // 2 ** (len(h.depths) - 1)
        bands = side // h.freq_ratio
        return bands, side * side // bands

    @property
    def num_tokens(self) -> int:
        bands, steps = self.grid
        return bands * steps

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.duration_sec)

    @property
    def logit_scale(self) -> float:
        """exp(CLAP logit_scale), the temperature of the CLAP cosine similarities."""
        return float(self.clap_logit_scale.exp())

    # -- waveform → model input ---------------------------------------------------------------
    def prepare(self, samples: Any, sample_rate: int, channels: int | None = None,
                history: Any = None, context: Literal['tile', 'history'] = 'tile',
                ) -> tuple[Tensor, AudioSegment]:
        """One window → the [num_samples] model input at 44.1 kHz and its segment layout.

        context 'tile' (TACO's setting for 1-s clips): the window alone, tiled to 7 s.
        context 'history': ``history`` (audio just before the window, same rate/channels) and
        the window, of which the last 7 s are used (tiled if shorter than 7 s).
        """
        if context not in AUDIO_CONTEXTS:
            raise ValueError(f'context must be one of {AUDIO_CONTEXTS}, got {context!r}')
        window = to_mono_float(samples, channels)
        window_sec = window.shape[0] / float(sample_rate)
        mono = window
        if context == 'history' and history is not None and np.asarray(history).size:
            mono = np.concatenate([to_mono_float(history, channels), window])
        # Resampling only what can reach the model input keeps a long history cheap.
        keep = min(mono.shape[0], math.ceil(self.duration_sec * sample_rate) + 64)
        resampled = resample(mono[mono.shape[0] - keep:], sample_rate, self.sample_rate)
        segment_sec = min(resampled.shape[0] / self.sample_rate, self.duration_sec)
        model_input = fit_to_duration(resampled, self.num_samples)
        return model_input, AudioSegment(segment_sec=segment_sec, window_sec=window_sec)

    # -- model --------------------------------------------------------------------------------
    def log_mel(self, audio: Tensor) -> Tensor:
        """[B, samples] → [B, 1, frames, mel_bins] log-mel after bn0 (HTS-AT's front end)."""
        h = self.htsat
        device_type = audio.device.type
        with torch.autocast(device_type, enabled=False):
            # The STFT-as-convolution and the dB conversion lose too much in half precision.
            x = h.logmel_extractor(h.spectrogram_extractor(audio.float()))
            x = h.bn0(x.transpose(1, 3)).transpose(1, 3)
        return x

    def forward(self, audio: Tensor) -> Tensor:
        """Raw token map [B, N_A, C_A] (not clamped) for model inputs [B, num_samples]."""
        if audio.ndim != 2:
            raise ValueError(f'audio must be [B, samples], got shape {tuple(audio.shape)}')
        h = self.htsat
        image = h.reshape_wav2img(self.log_mel(audio))  # [B, 1, spec, spec]
        x = h.patch_embed(image)
        if h.ape:
            x = x + h.absolute_pos_embed
        x = h.pos_drop(x)
        for layer in h.layers:
            x, _ = layer(x)
        x = h.norm(x)  # [B, rows·cols, C], row-major over the (frequency-chunk, time) grid
        batch, count, channels = x.shape
        side = math.isqrt(count)
        x = x.transpose(1, 2).reshape(batch, channels, side, side)
        # Token-semantic regrouping: rows are freq_ratio time chunks × bands; put the chunks
        # back on the time axis so that time is global: [B, C, bands, chunks·cols].
        bands = side // h.freq_ratio
        x = x.reshape(batch, channels, side // bands, bands, side)
        x = x.permute(0, 1, 3, 2, 4).reshape(batch, channels, bands, -1)
        return x.flatten(2).transpose(1, 2)

    def tokens(self, waveform: Any, sample_rate: int, channels: int | None = None) -> Tensor:
        """X_A [B, N_A, C_A] clamped ≥ 0 for one window or a list of windows (tiled to 7 s)."""
        windows = waveform if isinstance(waveform, list | tuple) else [waveform]
        device = self.clap_logit_scale.device
        batch = torch.stack([self.prepare(w, sample_rate, channels)[0] for w in windows])
        with torch.no_grad():
            return self(batch.to(device)).clamp_min(0.0)

    @torch.no_grad()
    def encode(self, samples: Any, sample_rate: int, channels: int | None = None,
               history: Any = None, context: Literal['tile', 'history'] = 'tile',
               ) -> AudioTokens:
        """One window → X_A [1, N_A, C_A] (clamped) with per-token spans on the window's axis."""
        model_input, segment = self.prepare(samples, sample_rate, channels, history, context)
        tokens = self(model_input[None].to(self.clap_logit_scale.device)).clamp_min(0.0)
        bands, steps = self.grid
        spans = token_spans(segment, steps=steps, bands=bands, duration_sec=self.duration_sec)
        return AudioTokens(tokens=tokens, spans=spans, segment=segment)

    def token_spans(self, window_sec: float, segment_sec: float | None = None) -> np.ndarray:
        """[N_A, 2] token start/end seconds from the window start (see :func:`token_spans`).

        segment_sec: seconds of audio fed before tiling (window + history); default: the window
        alone, i.e. the 'tile' context.
        """
        bands, steps = self.grid
        segment = AudioSegment(segment_sec=min(segment_sec or window_sec, self.duration_sec),
                               window_sec=window_sec)
        return token_spans(segment, steps=steps, bands=bands, duration_sec=self.duration_sec)

    def clip_embedding(self, raw_tokens: Tensor) -> Tensor:
        """CLAP audio embedding [B, d_proj]: projection of the token mean (msclap's
        ``latent_output`` → ``projection``), for zero-shot checks against CLAP text vectors."""
        return self.projection(raw_tokens.mean(dim=1))


# -- the CLAP text encoder --------------------------------------------------------------------
class ClapTextEncoder(nn.Module):
    """msclap's GPT-2 caption encoder: hidden state at the last non-pad token → Projection.

    ``base`` is a transformers ``GPT2Model`` built from a local config; ``projection`` maps
    768 → 1024. Parameter names equal msclap's ``caption_encoder.*`` without the prefix.
    Tokenisation as msclap: text + ' <|endoftext|>', pad token '!' (id 0), padded to 77.
    """

    def __init__(self, gpt2_dir: str, d_proj: int, text_len: int = 77) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model
        _, Projection = import_msclap_modules()
        config = GPT2Config.from_json_file(f'{gpt2_dir}/config.json')
        self.base = GPT2Model(config)
        self.projection = Projection(int(config.n_embd), int(d_proj))
        self.tokenizer = load_gpt2_tokenizer(gpt2_dir)
        self.text_len = int(text_len)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClapTextEncoder:
        return super().train(False)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids, masks = [], []
        for text in texts:
            encoded = self.tokenizer(text + ' <|endoftext|>', max_length=self.text_len,
                                     padding='max_length', truncation=False)
            if len(encoded['input_ids']) > self.text_len:
                raise ValueError(f'prompt {text!r} is longer than {self.text_len} GPT-2 tokens')
            ids.append(encoded['input_ids'])
            masks.append(encoded['attention_mask'])
        return {'input_ids': torch.tensor(ids), 'attention_mask': torch.tensor(masks)}

    @torch.no_grad()
    def forward(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """CLAP text vectors [J, d_proj] (unnormalised, as TACO stores its bank)."""
        outputs = []
        device = self.projection.linear1.weight.device
        for first in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[first:first + batch_size])
            tokens = {k: v.to(device) for k, v in tokens.items()}
            hidden = self.base(**tokens)[0]
            # msclap: last position whose id is not the pad id 0 (counts ids != 0, minus one).
            last = tokens['input_ids'].ne(0).sum(-1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=device), last]
            outputs.append(self.projection(pooled).float())
        return torch.cat(outputs) if outputs else torch.zeros(0, self.projection.linear1.out_features)


def load_gpt2_tokenizer(gpt2_dir: str) -> Any:
    """GPT-2 tokenizer from local files only, with msclap's pad token '!'."""
    from transformers import GPT2TokenizerFast
    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2_dir, local_files_only=True)
    tokenizer.add_special_tokens({'pad_token': '!'})
    return tokenizer
