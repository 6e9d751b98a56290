"""CLAP audio side: waveform preparation on real audio (sox tones, espeak-ng speech), token time
spans, loading an msclap-layout checkpoint, and equality with msclap's own HTS-AT at full size."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import encoder_fixtures as ef
import numpy as np
import pytest
import soundfile
import torch

from taco_ros.core.audio_encoder import (
    AudioEncoder,
    AudioSegment,
    activation_timeline,
    fit_to_duration,
    import_msclap_modules,
    resample,
    to_mono_float,
    token_spans,
)
from taco_ros.core.model_files import ModelFileNotFound
from taco_ros.core.models import RANDOM_SUFFIX, create_clap, create_clap_text, load_model_config

STEP = 7.0 / 32


def _tone(tmp: Path, rate: int, freq: float = 1000.0, seconds: float = 1.0) -> np.ndarray:
    """A 16-bit mono sine written by sox (synthesised at ``rate``, half full scale)."""
    path = tmp / f'tone_{rate}_{freq:g}.wav'
    subprocess.run(['sox', '-r', str(rate), '-n', '-b', '16', '-c', '1', str(path), 'synth',
                    str(seconds), 'sine', str(freq), 'vol', '0.5'], check=True)
    data, sr = soundfile.read(path, dtype='int16')
    assert sr == rate
    return data


def _peak_hz(x: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.numpy() * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1.0 / rate)[spectrum.argmax()])


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('models')
    ef.write_clap_checkpoint(root / 'taco_tiny' / 'clap.pth', seed=5)
    return root


@pytest.fixture(scope='module')
def tiny(tiny_dir: Path) -> AudioEncoder:
    return create_clap('taco_tiny', model_dir=tiny_dir)


# -- waveform preparation on real audio -------------------------------------------------------
def test_tone_at_16k_and_48k_peaks_at_1khz_after_resampling(tmp_path: Path):
    at16 = resample(to_mono_float(_tone(tmp_path, 16000)), 16000)
    at48 = resample(to_mono_float(_tone(tmp_path, 48000)), 48000)
    assert at16.shape[0] == at48.shape[0] == 44100
    assert abs(_peak_hz(at16, 44100) - 1000.0) <= 1.0
    assert abs(_peak_hz(at48, 44100) - 1000.0) <= 1.0
    # Same signal whichever rate it was captured at (away from the edges).
    assert torch.allclose(at16[2000:-2000], at48[2000:-2000], atol=2e-3)
    # Band-limited: upsampling 16 kHz creates nothing above its 8 kHz Nyquist.
    spectrum = np.abs(np.fft.rfft(at16.numpy()))
    freqs = np.fft.rfftfreq(44100, 1 / 44100)
    assert spectrum[freqs > 8500].max() < 1e-3 * spectrum.max()


def test_44k1_passes_through_unchanged(tmp_path: Path):
    mono = to_mono_float(_tone(tmp_path, 44100, 440.0))
    assert torch.equal(resample(mono, 44100), torch.from_numpy(mono))


def test_stereo_is_averaged(tmp_path: Path):
    path = tmp_path / 'stereo.wav'
    subprocess.run(['sox', '-r', '48000', '-n', '-b', '16', '-c', '2', str(path),
                    'synth', '0.5', 'sine', '440', 'sine', '1000', 'vol', '0.5'], check=True)
    frames, _ = soundfile.read(path, dtype='int16')
    assert frames.shape[1] == 2
    mono = to_mono_float(frames)
    expected = frames.astype(np.float32).mean(axis=1) / 32768.0
    assert np.allclose(mono, expected, atol=1e-7)
    interleaved = frames.reshape(-1)  # the AudioChunk layout
    assert np.array_equal(to_mono_float(interleaved, channels=2), mono)
    # Both channels' tones survive, at equal strength (a concatenation would not overlap them).
    resampled = resample(mono, 48000).numpy()
    spectrum = np.abs(np.fft.rfft(resampled))
    freqs = np.fft.rfftfreq(resampled.shape[0], 1 / 44100)
    top = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert top == pytest.approx([440.0, 1000.0], abs=2.0)


def test_one_second_window_is_tiled_exactly(tiny: AudioEncoder, tmp_path: Path):
    window = to_mono_float(_tone(tmp_path, 44100, 440.0))
    model_input, segment = tiny.prepare(window, 44100)
    assert model_input.shape == (308700,)
    assert np.array_equal(model_input.numpy(), np.tile(window, 7))
    assert segment == AudioSegment(segment_sec=1.0, window_sec=1.0)
    short = window[:17640]  # 0.4 s: 18 copies cut to 7 s, like msclap
    tiled, seg = tiny.prepare(short, 44100)
    assert np.array_equal(tiled.numpy(), np.tile(short, 18)[:308700])
    assert seg.segment_sec == pytest.approx(0.4)


def test_history_context_uses_the_last_seven_seconds(tiny: AudioEncoder):
    rng = np.random.default_rng(0)
    history = rng.uniform(-0.5, 0.5, 44100 * 9).astype(np.float32)
    window = rng.uniform(-0.5, 0.5, 44100).astype(np.float32)
    model_input, segment = tiny.prepare(window, 44100, history=history, context='history')
    assert np.array_equal(model_input.numpy(), np.concatenate([history, window])[-308700:])
    assert segment == AudioSegment(segment_sec=7.0, window_sec=1.0)
    short_history = history[:44100 * 2]
    model_input, segment = tiny.prepare(window, 44100, history=short_history, context='history')
    joined = np.concatenate([short_history, window])
    assert np.array_equal(model_input.numpy(), np.tile(joined, 3)[:308700])
    assert segment.segment_sec == pytest.approx(3.0)
    # 'tile' ignores history: TACO's setting for 1-s clips
    alone, _ = tiny.prepare(window, 44100, history=history, context='tile')
    assert np.array_equal(alone.numpy(), np.tile(window, 7))
    assert np.array_equal(fit_to_duration(torch.arange(10.0), 4).numpy(), [6, 7, 8, 9])


def test_input_validation():
    assert to_mono_float(np.array([16384, -32768], np.int16)).tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match='empty'):
        to_mono_float(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match='NaN'):
        to_mono_float(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match='multiple of 2 channels'):
        to_mono_float(np.zeros(5, np.float32), channels=2)
    with pytest.raises(ValueError, match='int16, int32 or float'):
        to_mono_float(np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match='sample_rate'):
        resample(np.zeros(10, np.float32), 0)


# -- tokens and their time spans --------------------------------------------------------------
def test_speech_tokens_and_spans(tiny: AudioEncoder, tmp_path: Path):
    wav = tmp_path / 'speech.wav'
    subprocess.run(['espeak-ng', '-w', str(wav), 'hello robot, where is the sound'], check=True)
    speech, rate = soundfile.read(wav, dtype='float32')
    window = speech[:rate]  # the first second
    out = tiny.encode(window, rate)
    assert out.tokens.shape == (1, 64, tiny.token_dim) and out.tokens.min() >= 0
    assert out.segment == AudioSegment(segment_sec=1.0, window_sec=1.0)
    assert out.spans.shape == (64, 2)
    assert np.array_equal(tiny.token_spans(1.0), out.spans)
    assert np.allclose(tiny.token_spans(1.0, segment_sec=9.0)[31], [0.78125, 1.0])
    batch = tiny.tokens([window, window * 0.5], rate)
    assert batch.shape == (2, 64, tiny.token_dim)
    assert torch.allclose(batch[0], out.tokens[0], atol=1e-5)


def test_token_spans_tiled_window():
    spans = token_spans(AudioSegment(1.0, 1.0))
    assert spans.shape == (64, 2)
    assert np.allclose(spans[:32], spans[32:])  # band-major: both bands share time steps
    assert np.allclose(spans[:, 1] - spans[:, 0], STEP)
    assert np.all((spans[:, 0] >= 0) & (spans[:, 0] < 1.0))
    # step s starts at s*7/32 s of the tiled input, folded into the 1-s window
    for s in (0, 4, 5, 31):
        assert spans[s, 0] == pytest.approx((s * STEP) % 1.0)
    assert spans[4, 1] == pytest.approx(0.875 + STEP)  # crosses into the next tile


def test_token_spans_history_window():
    spans = token_spans(AudioSegment(segment_sec=7.0, window_sec=1.0))
    assert spans[0, 0] == pytest.approx(-6.0) and spans[31, 1] == pytest.approx(1.0)
    inside = spans[:32, 1] > 0
    assert inside.sum() == 5  # the last 5 steps reach into the window (1 s / 0.219 s)
    longer = token_spans(AudioSegment(segment_sec=7.0, window_sec=7.0))
    assert np.allclose(longer[:32, 0], np.arange(32) * STEP)


def test_activation_timeline_folds_tiles_and_bands():
    segment = AudioSegment(1.0, 1.0)
    spans = token_spans(segment)
    flat = activation_timeline(np.full(64, 0.3), spans, segment, 5)
    assert np.allclose(flat, 0.3)
    # Tokens see a source active in the first half of the window only (each token's value is
    # the active fraction of its folded span): the timeline recovers early-on / late-off.
    def active_fraction(a: float, b: float) -> float:
        t = np.linspace(a, b, 200, endpoint=False) % 1.0
        return float((t < 0.5).mean())
    values = np.array([active_fraction(a, b) for a, b in spans], np.float32)
    timeline = activation_timeline(values, spans, segment, 5)
    assert timeline[:2].min() > 0.8 and timeline[3] < 0.2 and timeline[4] < 0.4
    assert timeline[3] < timeline[2] < timeline[1]  # the 0.5-s offset falls in bin 2
    stacked = activation_timeline(np.stack([values, 1 - values]), spans, segment, 5)
    assert stacked.shape == (2, 5) and np.allclose(stacked.sum(axis=0), 1.0)
    history = AudioSegment(7.0, 1.0)
    only_last = np.zeros(64)
    only_last[[31, 63]] = 1.0
    tail = activation_timeline(only_last, token_spans(history), history, 5)
    assert tail[-1] == pytest.approx(1.0) and tail[0] == 0.0
    with pytest.raises(ValueError, match='values for'):
        activation_timeline(np.zeros(10), spans, segment, 5)


# -- loading ----------------------------------------------------------------------------------
def test_tiny_checkpoint_loads_through_the_registry(tiny: AudioEncoder, tiny_dir: Path):
    state = torch.load(tiny_dir / 'taco_tiny' / 'clap.pth', weights_only=True)['model']
    ours = tiny.state_dict()
    key = 'base.htsat.layers.0.blocks.0.attn.qkv.weight'
    assert torch.equal(ours[key], state[f'audio_encoder.{key}'])
    assert torch.equal(ours['projection.linear1.weight'],
                       state['audio_encoder.projection.linear1.weight'])
    assert tiny.logit_scale == pytest.approx(20.0)
    assert tiny.model_id == 'taco_tiny:clap' and tiny.grid == (2, 32) and tiny.num_tokens == 64
    assert not tiny.training


def test_missing_checkpoint_and_random_opt_in(tmp_path: Path):
    with pytest.raises(ModelFileNotFound, match='taco-ros models fetch clap-2023'):
        create_clap('taco_convnext_large', model_dir=tmp_path)
    random = create_clap('taco_tiny', model_dir=tmp_path, allow_random_weights=True)
    assert random.model_id.endswith(RANDOM_SUFFIX)


def test_checkpoint_missing_weights_is_refused(tmp_path: Path):
    state = ef.clap_state_dict(seed=1)
    del state['audio_encoder.base.htsat.norm.weight']
    torch.save({'model': state}, tmp_path / 'broken.pth')
    with pytest.raises(ValueError, match=r'missing: base\.htsat\.norm\.weight'):
        create_clap('taco_tiny', checkpoint=tmp_path / 'broken.pth')
    # the frozen STFT / mel matrices are recomputed from the config when absent
    state = ef.clap_state_dict(seed=1)
    for key in [k for k in state if 'extractor' in k]:
        del state[key]
    torch.save({'model': state}, tmp_path / 'no_frontend.pth')
    assert create_clap('taco_tiny', checkpoint=tmp_path / 'no_frontend.pth').num_tokens == 64


def test_unexpected_keys_are_logged_and_ignored_like_msclap(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture):
    """msclap loads its checkpoint non-strictly; keys the model lacks are named in the log and
    skipped, the rest loads."""
    gpt2_dir = ef.write_tiny_gpt2_dir(tmp_path / 'gpt2')
    state = ef.clap_state_dict(gpt2_dir=gpt2_dir, seed=2)
    state['audio_encoder.base.htsat.legacy_head.weight'] = torch.zeros(3)
    state['caption_encoder.legacy_pooler.weight'] = torch.zeros(2)
    state['training_step'] = torch.tensor(7)
    path = tmp_path / 'extra.pth'
    torch.save({'model': state}, path)
    with caplog.at_level(logging.WARNING, logger='taco_ros.core.models'):
        audio = create_clap('taco_tiny', checkpoint=path)
        text = create_clap_text('taco_tiny', checkpoint=path, gpt2_dir=gpt2_dir)
    for key in ('base.htsat.legacy_head.weight', 'legacy_pooler.weight', 'training_step'):
        assert key in caplog.text
    assert 'ignored' in caplog.text
    assert torch.equal(audio.state_dict()['projection.linear1.weight'],
                       state['audio_encoder.projection.linear1.weight'])
    assert torch.equal(text.state_dict()['projection.linear1.weight'],
                       state['caption_encoder.projection.linear1.weight'])


def test_mis_shaped_or_missing_keys_are_still_refused(tmp_path: Path):
    state = ef.clap_state_dict(seed=1)
    weight = state['audio_encoder.projection.linear1.weight']
    state['audio_encoder.projection.linear1.weight'] = torch.zeros(weight.shape[0],
                                                                   weight.shape[1] + 1)
    state['audio_encoder.extra'] = torch.zeros(1)   # ignored; the shape problem still refuses
    torch.save({'model': state}, tmp_path / 'shape.pth')
    with pytest.raises(ValueError, match=r'shape mismatch: projection\.linear1\.weight'):
        create_clap('taco_tiny', checkpoint=tmp_path / 'shape.pth')
    gpt2_dir = ef.write_tiny_gpt2_dir(tmp_path / 'gpt2')
    state = ef.clap_state_dict(gpt2_dir=gpt2_dir, seed=1)
    del state['caption_encoder.base.ln_f.weight']
    torch.save({'model': state}, tmp_path / 'no_ln.pth')
    with pytest.raises(ValueError, match=r'missing: base\.ln_f\.weight'):
        create_clap_text('taco_tiny', checkpoint=tmp_path / 'no_ln.pth', gpt2_dir=gpt2_dir)


def test_frontend_reproduces_msclap_module_config():
    """The mel front end HTS-AT really uses: msclap's config.py (32 kHz, 50-14000 Hz), not the
    CLAP yml's 44.1 kHz / 8 kHz; the architecture is config.py's too."""
    import msclap.models.config as msclap_config
    large = load_model_config('taco_convnext_large')['clap']
    for key in ('sample_rate', 'window_size', 'hop_size', 'mel_bins', 'fmin', 'fmax'):
        assert large['frontend'][key] == getattr(msclap_config, key)
    htsat = large['htsat']
    assert htsat['embed_dim'] == msclap_config.htsat_dim
    assert htsat['depths'] == msclap_config.htsat_depth
    assert htsat['num_heads'] == msclap_config.htsat_num_head
    assert htsat['window_size'] == msclap_config.htsat_window_size
    assert htsat['spec_size'] == msclap_config.htsat_spec_size
    assert tuple(htsat['patch_stride']) == msclap_config.htsat_stride
    assert large['sample_rate'] == 44100 and large['duration_sec'] == 7 and large['d_proj'] == 1024


@pytest.mark.slow
def test_full_size_equals_msclap_audio_encoder(tmp_path: Path):
    """Full CLAP-2023 audio architecture: an msclap AudioEncoder (random weights) saved in the
    checkpoint layout and loaded by create_clap gives msclap's pre-pool token map (what TACO's
    avgpool hook captures) and msclap's audio embedding."""
    import warnings
    saved = warnings.filters[:]
    from msclap.models.audio import HTSATWrapper  # noqa: F401 (msclap import side effects)
    from msclap.models.clap import AudioEncoder as MsclapAudioEncoder
    warnings.filters[:] = saved
    import_msclap_modules()
    torch.manual_seed(0)
    reference = MsclapAudioEncoder('HTSAT', 768, 1024, 44100, 1024, 320, 64, 50, 8000, 527).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial running stats
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    state = {f'audio_encoder.{k}': v for k, v in reference.state_dict().items()}
    state['logit_scale'] = torch.tensor(3.0)
    torch.save({'model': state}, tmp_path / 'CLAP_weights_2023.pth')
    ours = create_clap('taco_convnext_large', checkpoint=tmp_path / 'CLAP_weights_2023.pth')
    assert ours.logit_scale == pytest.approx(np.exp(3.0), rel=1e-6)

    audio = torch.from_numpy(np.random.default_rng(1).uniform(-0.3, 0.3, (1, 308700)))
    audio = audio.float()
    captured = []
    hook = reference.base.htsat.avgpool.register_forward_pre_hook(
        lambda _module, args: captured.append(args[0]) if not captured else None)
    with torch.no_grad():
        expected_embedding, _ = reference(audio)
        tokens = ours(audio)
    hook.remove()
    assert tokens.shape == (1, 64, 768)
    assert torch.allclose(tokens, captured[0].transpose(1, 2), atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(ours.clip_embedding(tokens), expected_embedding, atol=1e-4)
