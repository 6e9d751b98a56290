"""ros-drivers audio_common raw PCM: every sample format, refusals, and the AudioInfo gate."""

from __future__ import annotations

import types

import numpy as np
import pytest

from taco_ros import conversions as conv
from taco_ros.audio_formats import (
    SAMPLE_FORMATS,
    RawAudioFormat,
    RawAudioGate,
    decode_pcm,
)

RATE = 48000
STEREO = np.stack([np.sin(np.linspace(0, 20, 480)), np.linspace(-1, 1, 480)], axis=1) * 0.9
S16LE_48K_STEREO = RawAudioFormat(RATE, 2, 'S16LE', 'wave')


def encode(frames: np.ndarray, name: str) -> bytes:
    """Interleaved bytes of ``frames`` in the GStreamer format ``name``, written from its name:
    S/U/F, bits, optional _32 container, LE/BE."""
    sample = SAMPLE_FORMATS[name]
    values = frames.reshape(-1)
    order = '>' if sample.big_endian else '<'
    if sample.kind == 'f':
        return values.astype(f'{order}f{sample.width}').tobytes()
    peak = 2 ** (sample.bits - 1)
    ints = np.round(values * (peak - 1)).astype(np.int64)
    if sample.kind == 'u':
        ints += peak
    if sample.width == 3:
        little = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8)
        return (little[:, ::-1] if sample.big_endian else little).tobytes()
    code = 'u' if sample.kind == 'u' else 'i'
    return ints.astype(f'{order}{code}{sample.width}').tobytes()


@pytest.mark.parametrize('name', list(SAMPLE_FORMATS))
def test_every_sample_format_decodes(name: str) -> None:
    fmt = RawAudioFormat(RATE, 2, name)
    frames = decode_pcm(encode(STEREO, name), fmt)
    assert frames.dtype == np.float32 and frames.shape == STEREO.shape
    # One step of the format, but no finer than float32 resolves near full scale.
    tolerance = max(1e-6, 0.0 if name.startswith('F') else 2.0 / 2 ** (SAMPLE_FORMATS[name].bits - 1))
    np.testing.assert_allclose(frames, STEREO, atol=tolerance)


def test_s24_in_32_reads_the_low_three_bytes_whatever_the_top_byte() -> None:
    """Drivers sign-extend or zero the container's top byte; both mean the same sample."""
    values = np.array([-(2 ** 23), -1, 0, 1, 2 ** 23 - 1], np.int64)
    fmt = RawAudioFormat(RATE, 1, 'S24_32LE')
    sign_extended = values.astype('<i4').tobytes()
    zero_top = (values & 0xFFFFFF).astype('<u4').tobytes()
    expected = (values / 2 ** 23).astype(np.float32)[:, None]
    np.testing.assert_array_equal(decode_pcm(sign_extended, fmt), expected)
    np.testing.assert_array_equal(decode_pcm(zero_top, fmt), expected)


def test_full_scale_integers_stay_in_range() -> None:
    for name, extremes in [('S32LE', [-(2 ** 31), 2 ** 31 - 1]), ('U8', [0, 255]),
                           ('S16BE', [-32768, 32767])]:
        sample = SAMPLE_FORMATS[name]
        order = '>' if sample.big_endian else '<'
        code = 'u' if sample.kind == 'u' else 'i'
        data = np.array(extremes).astype(f'{order}{code}{sample.width}').tobytes()
        frames = decode_pcm(data, RawAudioFormat(RATE, 1, name))
        assert frames.min() == -1.0 and 0.99 < frames.max() <= 1.0


@pytest.mark.parametrize('fmt,data,message', [
    (RawAudioFormat(RATE, 2, 'S16LE', 'mp3'), b'\xff\xfb\x90\x00', "coding_format 'mp3' is compressed"),
    (RawAudioFormat(RATE, 2, 'S20LE'), b'\x00' * 12, "unsupported sample_format 'S20LE'"),
    (RawAudioFormat(RATE, 2, 'U24_32LE'), b'\x00' * 8, "unsupported sample_format 'U24_32LE'"),
    (RawAudioFormat(RATE, 0, 'S16LE'), b'', 'channel count 0'),
    (RawAudioFormat(RATE, 65, 'S16LE'), b'', 'channel count 65'),
    (RawAudioFormat(0, 1, 'S16LE'), b'', 'sample rate 0 Hz'),
    (RawAudioFormat(10 ** 7, 1, 'S16LE'), b'', 'sample rate 10000000 Hz'),
    (S16LE_48K_STEREO, b'\x00' * 6, '6 bytes are not whole S16LE frames of 2 channel'),
    (RawAudioFormat(RATE, 1, 'F32LE'), np.array([0.5, np.nan], '<f4').tobytes(), 'NaN'),
])
def test_undecodable_streams_are_refused_with_the_reason(fmt: RawAudioFormat, data: bytes,
                                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_pcm(data, fmt)


def test_decode_audio_data_reads_header_stamp_and_plain_data() -> None:
    raw = encode(STEREO, 'S16LE')
    plain = types.SimpleNamespace(data=raw)
    chunk = conv.decode_audio_data(plain, S16LE_48K_STEREO)
    assert chunk.stamp is None and chunk.sample_rate == RATE and chunk.samples.shape == (480, 2)
    stamp = types.SimpleNamespace(sec=7, nanosec=250_000_000)
    stamped = types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp), audio=plain)
    assert conv.decode_audio_data(stamped, S16LE_48K_STEREO).stamp == pytest.approx(7.25)
    assert conv.audio_data_bytes(stamped) is raw


# ---------------------------------------------------------------------------------- the gate
def chunks(count: int, frames: int = 480) -> list[np.ndarray]:
    t = np.arange(count * frames) / RATE
    signal = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)], 1)
    return [signal[i * frames:(i + 1) * frames] for i in range(count)]


def feed(gate: RawAudioGate, parts: list[np.ndarray], start: float = 0.0) -> list:
    released = []
    for i, part in enumerate(parts):
        data = encode(part, 'S16LE')
        update = gate.on_data(data, len(data), start + 0.01 * i)
        assert update.dropped == 0 and update.refusal is None
        released += update.ready
    return released


def decoded(ready: list) -> np.ndarray:
    return np.concatenate([decode_pcm(chunk.payload, fmt) for chunk, fmt in ready])


def test_late_audio_info_releases_everything_held_at_the_right_format() -> None:
    """48 kHz stereo before its AudioInfo: held, then decoded as 48 kHz stereo. Decoding it with
    the capture node's defaults (what the node did before the gate) reads 16 kHz mono."""
    gate = RawAudioGate()
    parts = chunks(10)
    assert feed(gate, parts) == [] and gate.held == 10
    update = gate.on_info(S16LE_48K_STEREO)
    assert update.reset is None and update.dropped == 0 and gate.held == 0
    assert [fmt for _, fmt in update.ready] == [S16LE_48K_STEREO] * 10
    np.testing.assert_allclose(decoded(update.ready), np.concatenate(parts), atol=1 / 32767)
    assert [chunk.received for chunk, _ in update.ready] == pytest.approx(
        [0.01 * i for i in range(10)])
    guessed = decode_pcm(update.ready[0][0].payload, conv.RawAudioInfo())
    assert guessed.shape == (960, 1)   # the old misreading: twice the frames, one channel


def test_early_audio_info_decodes_at_once() -> None:
    gate = RawAudioGate()
    assert gate.on_info(S16LE_48K_STEREO).ready == []
    parts = chunks(3)
    np.testing.assert_allclose(decoded(feed(gate, parts)), np.concatenate(parts), atol=1 / 32767)
    assert gate.on_info(S16LE_48K_STEREO).ready == []   # the periodic repeat changes nothing


def test_explicit_format_decodes_until_audio_info_corrects_it() -> None:
    explicit = RawAudioFormat(RATE, 2, 'S16LE')
    gate = RawAudioGate(explicit=explicit)
    assert [fmt for _, fmt in feed(gate, chunks(2))] == [explicit] * 2
    assert gate.on_info(explicit).reset is None
    other = RawAudioFormat(44100, 2, 'S16LE')
    update = gate.on_info(other)
    assert update.reset == ('audio format changed: 48000 Hz, 2 ch, S16LE, coding wave -> '
                            '44100 Hz, 2 ch, S16LE, coding wave')
    assert [fmt for _, fmt in feed(gate, chunks(1))] == [other]
    with pytest.raises(ValueError, match='compressed'):
        RawAudioGate(explicit=RawAudioFormat(coding_format='mp3'))


def test_format_change_mid_stream_reports_a_reset() -> None:
    gate = RawAudioGate()
    gate.on_info(S16LE_48K_STEREO)
    feed(gate, chunks(2))
    mono = RawAudioFormat(16000, 1, 'F32LE')
    update = gate.on_info(mono)
    assert update.reset is not None and '48000 Hz, 2 ch' in update.reset and '16000 Hz' in update.reset
    data = np.zeros(160, '<f4').tobytes()
    assert gate.on_data(data, len(data), 1.0).ready[0][1] == mono


def test_holding_is_bounded_in_time_and_bytes() -> None:
    gate = RawAudioGate(hold_sec=0.5, max_held_bytes=10 * 1920)
    data = encode(chunks(1)[0], 'S16LE')     # 1920 bytes
    dropped = sum(gate.on_data(data, len(data), 0.1 * i).dropped for i in range(10))
    assert dropped == 4 and gate.held == 6    # receipt 0.0 .. 0.3 are more than 0.5 s old at 0.9
    dropped = sum(gate.on_data(data, len(data), 0.9).dropped for _ in range(6))
    assert dropped == 2 and gate.held == 10   # now the byte bound
    assert len(gate.on_info(S16LE_48K_STEREO).ready) == 10
    with pytest.raises(ValueError):
        RawAudioGate(hold_sec=0)


def test_undecodable_audio_info_is_refused_once_per_chunk_and_recovers() -> None:
    gate = RawAudioGate()
    feed(gate, chunks(3))
    mp3 = RawAudioFormat(RATE, 2, 'S16LE', 'mp3')
    update = gate.on_info(mp3)
    assert update.dropped == 3 and update.ready == []
    assert update.refusal.startswith("audio coding_format 'mp3' is compressed")
    later = gate.on_data(b'\xff\xfb', 2, 1.0)
    assert later.dropped == 1 and later.ready == [] and 'mp3' in later.refusal
    assert gate.on_info(mp3).refusal is None           # a repeat is not refused again
    update = gate.on_info(S16LE_48K_STEREO)
    assert update.refusal is None and update.reset is not None
    assert len(feed(gate, chunks(1))) == 1
