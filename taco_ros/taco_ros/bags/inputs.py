"""Camera and microphone messages of a bag, taken as taco_node takes them off its subscriptions:
deserialized into the rclpy message classes, checked and decoded with taco_ros.conversions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taco_ros import conversions as conv
from taco_ros.bags.topics import COMPRESSED_TYPE, IMAGE_TYPE, message_class

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
    """One decoded chunk: mono float32 samples, rate and capture stamp (None: the message has
    none; the caller stamps it by receipt)."""

    samples: np.ndarray
    sample_rate: int
    stamp: float | None
    duration: float


class InputDecoder:
    """Bag CDR → rclpy messages → what the window policy takes (parameters as taco_node's)."""

    def __init__(self, image_type: str, audio_type: str, values: dict[str, Any]) -> None:
        if image_type not in IMAGE_TYPES:
            raise ValueError(f'the camera topic holds {image_type}; taco_node reads '
                             f'{" or ".join(IMAGE_TYPES)}')
        self.image_class = message_class(image_type)
        self.compressed = image_type == COMPRESSED_TYPE
        self.audio_kind = audio_kind(audio_type, values['audio_msg_type'])
        self.audio_class = conv.audio_message_class(self.audio_kind)
        self.values = values
        self.raw_audio_info = conv.RawAudioInfo()    # ros-drivers AudioData: from audio_info

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

    def audio_info(self, raw: bytes) -> None:
        """Take a ros-drivers audio_common_msgs/AudioInfo (format of headerless AudioData)."""
        import importlib

        from rclpy.serialization import deserialize_message

        module = importlib.import_module(self.audio_class.__module__)
        self.raw_audio_info = conv.RawAudioInfo.from_msg(deserialize_message(raw, module.AudioInfo))

    def audio(self, raw: bytes) -> AudioSamples:
        """Decoded mono samples of one audio message; ValueError when unusable."""
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(raw, self.audio_class)
        kind, v = self.audio_kind, self.values
        if kind == conv.AUDIO_TACO:
            chunk = conv.decode_audio_chunk(msg)
        elif kind in (conv.AUDIO_INT16_MULTIARRAY, conv.AUDIO_FLOAT32_MULTIARRAY):
            chunk = conv.decode_multiarray(msg, v['audio_sample_rate'], v['audio_channels'])
        elif kind == conv.AUDIO_COMMON_STAMPED:
            chunk = conv.decode_audio_common_stamped(msg)
        else:
            chunk = conv.decode_audio_data(msg, self.raw_audio_info)
        mono = conv.select_channel(chunk.samples, v['audio_channel'])
        return AudioSamples(mono, chunk.sample_rate, chunk.stamp, chunk.duration)
