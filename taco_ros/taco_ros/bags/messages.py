"""Camera and microphone messages as rosbags objects (to write into bags) and back to arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from taco_ros.bags.schema import header as _header
from taco_ros.bags.schema import typestore
from taco_ros.bags.topics import AUDIO_TYPE, COMPRESSED_TYPE, IMAGE_TYPE


def image_message(rgb: np.ndarray, stamp: int, frame_id: str) -> Any:
    """rosbags sensor_msgs/Image (rgb8, tight step) of a uint8 [H, W, 3] frame."""
    rgb = _check_frame(rgb)
    cls = typestore().types[IMAGE_TYPE]
    height, width = rgb.shape[:2]
    return cls(header=_header(stamp, frame_id), height=height, width=width, encoding='rgb8',
               is_bigendian=0, step=width * 3, data=rgb.reshape(-1))


def compressed_message(rgb: np.ndarray, stamp: int, frame_id: str, quality: int = 90) -> Any:
    """rosbags sensor_msgs/CompressedImage (jpeg, image_transport's format string) of a frame."""
    import cv2

    rgb = _check_frame(rgb)
    ok, jpeg = cv2.imencode('.jpg', rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError('JPEG encoding failed')
    cls = typestore().types[COMPRESSED_TYPE]
    return cls(header=_header(stamp, frame_id), format='rgb8; jpeg compressed bgr8',
               data=np.asarray(jpeg, dtype=np.uint8).reshape(-1))


def audio_message(samples: np.ndarray, sample_rate: int, stamp: int, frame_id: str) -> Any:
    """rosbags taco_msgs/AudioChunk of int16 samples [n] or [n, channels], first sample at ``stamp``."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise ValueError(f'audio samples must be int16, got {samples.dtype}')
    frames = samples.reshape(samples.shape[0], -1)
    cls = typestore().types[AUDIO_TYPE]
    return cls(header=_header(stamp, frame_id), sample_rate=int(sample_rate),
               channels=frames.shape[1], sample_format=cls.FORMAT_S16,
               int16_data=np.ascontiguousarray(frames).reshape(-1),
               int32_data=np.zeros(0, np.int32), float32_data=np.zeros(0, np.float32))


def _check_frame(rgb: np.ndarray) -> np.ndarray:
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'frames must be uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}')
    return rgb


def frame_from_message(msg: Any) -> np.ndarray:
    """RGB frame of a (rosbags or rclpy) sensor_msgs/Image or CompressedImage."""
    from taco_ros.conversions import compressed_to_rgb, image_to_rgb
    return compressed_to_rgb(msg) if hasattr(msg, 'format') else image_to_rgb(msg)


def samples_from_message(msg: Any) -> np.ndarray:
    """Interleaved samples of an AudioChunk as [n, channels] in its own sample type."""
    field_name = {1: 'int16_data', 2: 'int32_data', 3: 'float32_data'}.get(int(msg.sample_format))
    if field_name is None:
        raise ValueError(f'unknown AudioChunk sample_format {msg.sample_format}')
    data = np.asarray(getattr(msg, field_name))
    return data.reshape(-1, max(1, int(msg.channels)))
