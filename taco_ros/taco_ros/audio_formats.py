"""Raw PCM streams of ros-drivers/audio_common, and a gate that holds audio until its format is known.

ros-drivers' ``audio_capture`` publishes bytes (``AudioData.data``) and describes them on a separate
``audio_info`` topic (``AudioInfo``: channels, sample_rate, GStreamer ``sample_format`` such as
``S16LE``, ``coding_format`` wave or mp3). The description arrives once at start and then every few
seconds, so a subscriber that joins late sees data before it knows how to read it. Guessing (the
capture node's defaults, 16 kHz mono S16LE) silently misreads any other stream: 48 kHz stereo
would come out as three times too much mono audio at the wrong pitch. :class:`RawAudioGate`
therefore holds the bytes (bounded) until the format is known, or decodes them with a format the
user set explicitly, and releases what it held once ``AudioInfo`` arrives.

Everything here is ROS-free: messages are read through their field names only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taco_ros.core.buffers import MAX_CHANNELS, MAX_SAMPLE_RATE

# Codings that carry raw PCM; the capture node's default, mp3, is compressed.
RAW_CODINGS = ('wave', 'wav', 'raw', 'pcm', '')
# Audio held while its format is unknown: audio_capture repeats its AudioInfo every few seconds,
# so a late subscriber loses nothing that arrived within this before it.
HOLD_SEC = 6.0
HOLD_BYTES = 8 << 20       # 6 s of 48 kHz stereo S32LE is 2.3 MB


@dataclass(frozen=True)
class SampleFormat:
    """One GStreamer raw sample format: container bytes, significant bits, signed/unsigned/float."""

    name: str
    width: int            # bytes per sample in the stream
    bits: int             # significant bits (24 for S24_32LE in a 4-byte container)
    kind: str             # 's' signed, 'u' unsigned, 'f' float
    big_endian: bool

    @property
    def full_scale(self) -> float:
        return 1.0 if self.kind == 'f' else float(2 ** (self.bits - 1))


def _formats() -> dict[str, SampleFormat]:
    table = {'S8': SampleFormat('S8', 1, 8, 's', False), 'U8': SampleFormat('U8', 1, 8, 'u', False)}
    for kind, bits, width, stem in [('s', 16, 2, 'S16'), ('u', 16, 2, 'U16'), ('s', 24, 3, 'S24'),
                                    ('s', 24, 4, 'S24_32'), ('s', 32, 4, 'S32'), ('u', 32, 4, 'U32'),
                                    ('f', 32, 4, 'F32'), ('f', 64, 8, 'F64')]:
        for suffix, big in (('LE', False), ('BE', True)):
            table[stem + suffix] = SampleFormat(stem + suffix, width, bits, kind, big)
    return table


# GStreamer names as audio_capture puts them in AudioInfo.sample_format (its caps 'format').
SAMPLE_FORMATS: dict[str, SampleFormat] = _formats()


@dataclass(frozen=True)
class RawAudioFormat:
    """How the bytes of an ``AudioData`` stream are laid out (the content of an ``AudioInfo``).

    The defaults are audio_capture's own parameter defaults except ``coding_format`` (its default
    is mp3, which cannot be decoded); they are never applied to a stream implicitly.
    """

    sample_rate: int = 16000
    channels: int = 1
    sample_format: str = 'S16LE'
    coding_format: str = 'wave'

    @classmethod
    def from_msg(cls, msg: Any) -> RawAudioFormat:
        """From a ros-drivers ``audio_common_msgs/AudioInfo`` (or anything with its fields)."""
        return cls(int(msg.sample_rate), int(msg.channels), str(msg.sample_format),
                   str(msg.coding_format))

    def describe(self) -> str:
        return (f'{self.sample_rate} Hz, {self.channels} ch, {self.sample_format}, '
                f'coding {self.coding_format or "unset"}')

    def problem(self) -> str | None:
        """Why this stream cannot be decoded (None when it can)."""
        coding = self.coding_format.strip().lower()
        if coding not in RAW_CODINGS:
            return (f'audio coding_format {self.coding_format!r} is compressed and cannot be '
                    'decoded; publish raw PCM (audio_capture format:=wave)')
        if self.sample_format.strip().upper() not in SAMPLE_FORMATS:
            return (f'unsupported sample_format {self.sample_format!r}; supported: '
                    f'{", ".join(SAMPLE_FORMATS)}')
        if not 1 <= self.channels <= MAX_CHANNELS:
            return f'audio channel count {self.channels} is outside 1..{MAX_CHANNELS}'
        if not 1 <= self.sample_rate <= MAX_SAMPLE_RATE:
            return f'audio sample rate {self.sample_rate} Hz is outside 1..{MAX_SAMPLE_RATE}'
        return None

    def check(self) -> SampleFormat:
        """The sample format, or ValueError naming why the stream cannot be decoded."""
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)
        return SAMPLE_FORMATS[self.sample_format.strip().upper()]

    @property
    def frame_bytes(self) -> int:
        return self.check().width * self.channels


def configured_format(sample_format: str, sample_rate: int, channels: int) -> RawAudioFormat | None:
    """The format a user set (taco_node's audio_sample_format, audio_sample_rate, audio_channels);
    None when audio_sample_format is empty, so the stream's own AudioInfo is awaited."""
    if not sample_format:
        return None
    return RawAudioFormat(int(sample_rate), int(channels), sample_format, 'wave')


def decode_pcm(data: Any, fmt: RawAudioFormat) -> np.ndarray:
    """Interleaved PCM bytes → float32 [frames, channels] in [-1, 1].

    Raises ValueError for an undecodable format (mp3, unknown sample format), a byte count that
    is not a whole number of frames, or non-finite float samples.
    """
    sample = fmt.check()
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size % (sample.width * fmt.channels):
        raise ValueError(
            f'{raw.size} bytes are not whole {sample.name} frames of {fmt.channels} channel(s) '
            f'({sample.width * fmt.channels} bytes each)')
    values = _samples(raw, sample)
    if sample.kind == 'u':
        values -= sample.full_scale
    if sample.kind != 'f':
        values /= sample.full_scale
    elif not np.isfinite(values).all():
        raise ValueError('audio contains NaN or Inf samples')
    return values.reshape(-1, fmt.channels)


def _samples(raw: np.ndarray, sample: SampleFormat) -> np.ndarray:
    """Sample values as float32, not yet scaled."""
    order = '>' if sample.big_endian else '<'
    if sample.width == 3:  # packed 24-bit: assemble the three bytes, then sign-extend
        triples = raw.reshape(-1, 3).astype(np.int32)
        if sample.big_endian:
            triples = triples[:, ::-1]
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        return ((value ^ 0x800000) - 0x800000).astype(np.float32)
    if sample.name.startswith('S24_32'):  # 24 significant bits in the low bytes of 32
        value = raw.view(order + 'i4').astype(np.int32) & 0xFFFFFF
        return ((value ^ 0x800000) - 0x800000).astype(np.float32)
    code = {'s': 'i', 'u': 'u', 'f': 'f'}[sample.kind]
    return raw.view(f'{order}{code}{sample.width}').astype(np.float32)


# --------------------------------------------------------------------------------------------
@dataclass
class HeldChunk:
    """One ``AudioData`` payload waiting for (or released with) its format.

    payload: the message (or its bytes) as the caller passed it; size: its byte count;
    received: receipt time in seconds on the caller's clock (used to stamp headerless data).
    """

    payload: Any
    size: int
    received: float


@dataclass
class GateUpdate:
    """What one call to :class:`RawAudioGate` produced.

    ready: chunks to decode now, in arrival order, each with the format to decode it with.
    reset: a sentence when the stream format changed (the consumer restarts its buffers).
    dropped: chunks thrown away (held too long, over the byte bound, or undecodable).
    refusal: a sentence when the announced format cannot be decoded (mp3, unknown sample format).
    """

    ready: list[tuple[HeldChunk, RawAudioFormat]] = field(default_factory=list)
    reset: str | None = None
    dropped: int = 0
    refusal: str | None = None


class RawAudioGate:
    """Orders ros-drivers ``AudioData`` against its ``AudioInfo`` so nothing is decoded wrongly.

    * No format known yet: chunks are held, at most ``hold_sec`` seconds (receipt time) and
      ``max_held_bytes`` bytes; the oldest go first when a bound is hit (counted as dropped).
    * ``explicit`` (a format the user configured): chunks are decoded with it until an
      ``AudioInfo`` says otherwise.
    * First ``AudioInfo``: every held chunk is released with it, in order.
    * A later ``AudioInfo`` with a different format: reported as a reset; chunks received from
      then on use the new format. Repeats of the same ``AudioInfo`` change nothing.
    * An ``AudioInfo`` that cannot be decoded (mp3, unknown sample format): one refusal; held and
      later chunks are dropped until a decodable format is announced.
    """

    def __init__(self, explicit: RawAudioFormat | None = None, hold_sec: float = HOLD_SEC,
                 max_held_bytes: int = HOLD_BYTES) -> None:
        if not (math.isfinite(hold_sec) and hold_sec > 0) or max_held_bytes <= 0:
            raise ValueError(
                f'hold_sec and max_held_bytes must be positive, got {hold_sec}, {max_held_bytes}')
        if explicit is not None:
            explicit.check()
        self.explicit = explicit
        self.hold_sec = float(hold_sec)
        self.max_held_bytes = int(max_held_bytes)
        self.announced: RawAudioFormat | None = None
        self._held: deque[HeldChunk] = deque()
        self._held_bytes = 0

    @property
    def format(self) -> RawAudioFormat | None:
        """The format chunks are decoded with now (None: held until an AudioInfo arrives)."""
        return self.announced if self.announced is not None else self.explicit

    @property
    def held(self) -> int:
        return len(self._held)

    def on_info(self, fmt: RawAudioFormat) -> GateUpdate:
        """An ``AudioInfo`` arrived."""
        update = GateUpdate()
        previous = self.format
        if fmt == self.announced:
            return update
        self.announced = fmt
        update.refusal = fmt.problem()
        if update.refusal is not None:
            update.dropped = self._drop_all()
            return update
        if previous is not None and previous != fmt:
            update.reset = f'audio format changed: {previous.describe()} -> {fmt.describe()}'
        update.ready = [(chunk, fmt) for chunk in self._held]
        self._held.clear()
        self._held_bytes = 0
        return update

    def on_data(self, payload: Any, size: int, received: float) -> GateUpdate:
        """An ``AudioData`` (or ``AudioDataStamped``) of ``size`` bytes arrived at ``received``."""
        update = GateUpdate()
        chunk = HeldChunk(payload, int(size), float(received))
        fmt = self.format
        if fmt is not None:
            update.refusal = fmt.problem()
            if update.refusal is None:
                update.ready.append((chunk, fmt))
            else:
                update.dropped = 1
            return update
        self._held.append(chunk)
        self._held_bytes += chunk.size
        update.dropped = self._trim(received)
        return update

    def _trim(self, now: float) -> int:
        dropped = 0
        while self._held and (self._held_bytes > self.max_held_bytes
                              or now - self._held[0].received > self.hold_sec):
            self._held_bytes -= self._held.popleft().size
            dropped += 1
        return dropped

    def _drop_all(self) -> int:
        count = len(self._held)
        self._held.clear()
        self._held_bytes = 0
        return count
