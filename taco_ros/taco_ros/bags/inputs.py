"""Camera and microphone messages of a bag, taken as taco_node takes them off its subscriptions:
deserialized into the rclpy message classes, checked and decoded with taco_ros.conversions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taco_ros import conversions as conv
from taco_ros.audio_formats import GateUpdate, RawAudioFormat, RawAudioGate, configured_format
from taco_ros.bags.topics import AUDIO_INFO_TYPE, COMPRESSED_TYPE, IMAGE_TYPE, message_class

IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)


def audio_kind(msgtype: str, audio_msg_type: str = 'auto') -> str:
    """The node's audio kind for a bag topic of ``msgtype`` (``audio_msg_type``: its parameter)."""
    kind = conv.TOPIC_TYPE_KINDS.get(msgtype)
    if kind is None:
        raise ValueError(f'{msgtype} is not an audio type taco_node reads; it reads '
                         f'{", ".join(conv.TOPIC_TYPE_KINDS)}')
    if audio_msg_type not in ('auto', kind):
        raise ValueError(f'audio_msg_type is {audio_msg_type!r} but the audio topic holds {msgtype}')
    conv.audio_message_class(kind)      # ValueError when its package is not installed
    return kind


@dataclass
class AudioSamples:
    """One decoded chunk: mono float32 samples, rate, capture stamp (None: the message has none;
    the caller stamps it by ``received``) and the bag time it was received at."""

    samples: np.ndarray
    sample_rate: int
    stamp: float | None
    duration: float
    received: float


@dataclass
class AudioRelease:
    """What one audio or audio_info message of a bag gives, as taco_node would get it.

    chunks: decoded, in order, to place in the window policy. problems: chunks that could not be
    decoded. For ros-drivers audio, what the format gate said: refusal (the announced format
    cannot be decoded), dropped (chunks thrown away: held too long, or refused), reset (the format
    changed).
    """

    chunks: list[AudioSamples] = field(default_factory=list)
    problems: list[ValueError] = field(default_factory=list)
    refusal: str | None = None
    dropped: int = 0
    reset: str | None = None


class InputDecoder:
    """Bag CDR → rclpy messages → what the window policy takes (parameters as taco_node's).

    ros-drivers audio goes through the node's :class:`RawAudioGate`: held until its audio_info
    (or read as audio_sample_format says when set), never with a guessed format.
    """

    def __init__(self, image_type: str, audio_type: str, values: dict[str, Any]) -> None:
        if image_type not in IMAGE_TYPES:
            raise ValueError(f'the camera topic holds {image_type}; taco_node reads '
                             f'{" or ".join(IMAGE_TYPES)}')
        self.image_class = message_class(image_type)
        self.compressed = image_type == COMPRESSED_TYPE
        self.audio_kind = audio_kind(audio_type, values['audio_msg_type'])
        self.audio_class = conv.audio_message_class(self.audio_kind)
        self.values = values
        self.raw_gate = RawAudioGate(configured_format(
            values['audio_sample_format'], values['audio_sample_rate'], values['audio_channels'])) \
            if self.audio_kind in conv.RAW_AUDIO_KINDS else None

    def image(self, raw: bytes) -> Any:
        """The frame message, checked without decoding its pixels; ValueError when unusable."""
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(raw, self.image_class)
        if self.compressed:
            conv.check_compressed(msg, self.values['max_image_pixels'])
        else:
            conv.check_image(msg, self.values['max_image_pixels'])
        return msg

    def rgb(self, msg: Any) -> np.ndarray:
        """Decoded RGB pixels of a frame message (done only for paired frames, as in the node)."""
        limit = self.values['max_image_pixels']
        return conv.compressed_to_rgb(msg, limit) if self.compressed else conv.image_to_rgb(msg, limit)

    def audio_info(self, raw: bytes) -> AudioRelease:
        """A ros-drivers audio_common_msgs/AudioInfo: the format of the raw chunks (ignored, as
        by the node, beside an audio type that describes itself)."""
        from rclpy.serialization import deserialize_message

        if self.raw_gate is None:
            return AudioRelease()
        info = deserialize_message(raw, message_class(AUDIO_INFO_TYPE))
        return self._released(self.raw_gate.on_info(RawAudioFormat.from_msg(info)))

    def audio(self, raw: bytes, received: float) -> AudioRelease:
        """One audio message received at bag time ``received`` (seconds)."""
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(raw, self.audio_class)
        if self.raw_gate is not None:
            size = len(conv.audio_data_bytes(msg))
            return self._released(self.raw_gate.on_data(msg, size, received))
        release = AudioRelease()
        v = self.values
        try:
            chunk = conv.decode_audio(self.audio_kind, msg, v['audio_sample_rate'], v['audio_channels'])
        except ValueError as exc:
            release.problems.append(exc)
            return release
        self._add(release, chunk, received)
        return release

    def _released(self, update: GateUpdate) -> AudioRelease:
        release = AudioRelease(refusal=update.refusal, dropped=update.dropped, reset=update.reset)
        for held, fmt in update.ready:
            try:
                chunk = conv.decode_audio_data(held.payload, fmt)
            except ValueError as exc:
                release.problems.append(exc)
                continue
            self._add(release, chunk, held.received)
        return release

    def _add(self, release: AudioRelease, chunk: conv.AudioChunkData, received: float) -> None:
        try:
            mono = conv.select_channel(chunk.samples, self.values['audio_channel'])
        except ValueError as exc:
            release.problems.append(exc)
            return
        release.chunks.append(AudioSamples(mono, chunk.sample_rate, chunk.stamp, chunk.duration,
                                           received))
