"""ROS message ↔ numpy conversions for taco_node (camera images and audio chunks).

ROS 2 ``cv_bridge`` is not installable from PyPI, so images are converted here, straight from the
``sensor_msgs/Image`` definition (row ``step`` and padding, ``is_bigendian`` for 16-bit data); the
encodings cameras publish (8/16-bit RGB, BGR, mono, Bayer, 4:2:2 YUV) are read by
:mod:`taco_ros.camera_encodings`.

Audio arrives in several message layouts (docs/ros_interface.md, "Audio inputs"); each decoder returns an
:class:`AudioChunkData` holding float32 frames [n, channels] in [-1, 1], the sample rate and the
capture time of the first sample (None when the message carries no stamp). Both
``audio_common_msgs`` flavours are supported when one is importable; which one is installed is
detected from the fields of its ``AudioData`` (they share type names with different fields).

Every size a message declares is bounded before anything is allocated for it: sample rate and
channels (:data:`MAX_SAMPLE_RATE`, :data:`MAX_CHANNELS`), values per audio message
(:data:`MAX_AUDIO_VALUES`), pixels of raw and compressed images (``max_pixels``, read from a jpeg or
png header before decoding). Such a refusal raises :class:`InputTooLargeError`.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from taco_ros import camera_encodings
from taco_ros.audio_formats import RawAudioFormat, decode_pcm
from taco_ros.core.windows import MAX_CHANNELS, MAX_SAMPLE_RATE, SizeLimitError

# Values (samples of all channels) in one audio message: 4 Mi float32 = 16 MiB once decoded,
# over 4 minutes of 16 kHz mono; a microphone sends tens of milliseconds per message.
MAX_AUDIO_VALUES = 2 ** 22


class InputTooLargeError(SizeLimitError):
    """A message declares a size over a limit (refused before allocating for it)."""


# Encodings numpy_to_image writes → channels (camera_encodings.SUPPORTED_ENCODINGS are read).
IMAGE_ENCODINGS: dict[str, int] = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1,
                                   'mono16': 1}
COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')

# Audio message kinds accepted by the node's `audio_msg_type` parameter.
AUDIO_TACO = 'taco'
AUDIO_INT16_MULTIARRAY = 'int16_multiarray'
AUDIO_FLOAT32_MULTIARRAY = 'float32_multiarray'
AUDIO_COMMON_STAMPED = 'audio_common_stamped'     # mgonzs13/audio_common: AudioStamped
AUDIO_DATA_STAMPED = 'audio_data_stamped'         # ros-drivers/audio_common: AudioDataStamped
AUDIO_DATA = 'audio_data'                         # ros-drivers/audio_common: AudioData (no header)
# Raw bytes described by a separate audio_info topic (audio_formats.RawAudioGate orders the two).
RAW_AUDIO_KINDS = (AUDIO_DATA, AUDIO_DATA_STAMPED)
AUDIO_MSG_KINDS = (AUDIO_TACO, AUDIO_INT16_MULTIARRAY, AUDIO_FLOAT32_MULTIARRAY,
                   AUDIO_COMMON_STAMPED, AUDIO_DATA_STAMPED, AUDIO_DATA)

FLAVOUR_MGONZS13 = 'mgonzs13'
FLAVOUR_ROS_DRIVERS = 'ros_drivers'

# PortAudio sample-format codes used by mgonzs13/audio_common's AudioInfo.format.
PA_FLOAT32, PA_INT32, PA_INT16, PA_INT8, PA_UINT8 = 1, 2, 8, 16, 32


# --------------------------------------------------------------------------------------------
# time
def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time → float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(seconds: float) -> Any:
    """Float seconds → builtin_interfaces/Time (rounded to the nanosecond)."""
    from builtin_interfaces.msg import Time
    if not math.isfinite(seconds):
        raise ValueError(f'cannot stamp a non-finite time {seconds}')
    total = round(seconds * 1e9)
    return Time(sec=int(total // 1_000_000_000), nanosec=int(total % 1_000_000_000))


# --------------------------------------------------------------------------------------------
# images
def image_array_to_rgb(
    encoding: str, height: int, width: int, step: int, data: Any, max_pixels: int | None = None,
    is_bigendian: bool = False,
) -> np.ndarray:
    """Pixels of a raw ``sensor_msgs/Image`` as a contiguous uint8 RGB array [height, width, 3].

    ``data`` is anything exposing the buffer protocol (the message's ``array('B')`` or bytes).
    Raises ValueError naming the problem for an unsupported encoding, a ``step`` shorter than a
    row, data shorter than ``height`` rows, zero size or more than ``max_pixels`` pixels.
    """
    view = _pixel_view(encoding, height, width, step, data, max_pixels, is_bigendian)
    return _to_rgb(view, encoding)


def _pixel_view(encoding: str, height: int, width: int, step: int, data: Any,
                max_pixels: int | None, is_bigendian: bool = False) -> np.ndarray:
    """Checked, zero-copy [height, width, channels] view of the message bytes."""
    _check_pixels(width, height, max_pixels)   # counted as a size refusal, before any view
    return camera_encodings.pixel_view(encoding, height, width, step, data, max_pixels,
                                       is_bigendian)


def check_image(msg: Any, max_pixels: int | None = None) -> None:
    """Raise ValueError if a raw ``sensor_msgs/Image`` cannot be converted (no pixel copy)."""
    _pixel_view(msg.encoding, int(msg.height), int(msg.width), int(msg.step), msg.data, max_pixels,
                bool(msg.is_bigendian))


def check_compressed(msg: Any, max_pixels: int | None = None) -> None:
    """Raise ValueError if a ``CompressedImage`` has an unsupported format, no data, or a header
    that cannot be read or declares more than ``max_pixels`` pixels (nothing is decoded)."""
    codec = _compressed_codec(msg.format)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ValueError('compressed image has no data')
    size = compressed_size(data)
    if size is None:
        raise ValueError(f'cannot read the image size from the {codec} header')
    _check_pixels(*size, max_pixels)


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise InputTooLargeError(
            f'image {width}x{height} has {height * width} pixels, more than max_image_pixels '
            f'= {max_pixels}')


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def compressed_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a png or jpeg header, None when it cannot be read."""
    head = data[:24].tobytes()
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b'IHDR' and len(head) >= 24:
        return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    index = 2
    while index + 9 <= data.size:
        if data[index] != 0xFF:
            return None
        marker = int(data[index + 1])
        if marker == 0xFF:          # fill byte
            index += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):     # markers without a length
            index += 2
            continue
        if marker in _JPEG_SOF:
            height = int(data[index + 5]) << 8 | int(data[index + 6])
            width = int(data[index + 7]) << 8 | int(data[index + 8])
            return width, height
        index += 2 + (int(data[index + 2]) << 8 | int(data[index + 3]))
    return None


def _to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    return camera_encodings.to_rgb8(pixels, encoding)


def image_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` → uint8 RGB [H, W, 3] (see :func:`image_array_to_rgb`)."""
    return image_array_to_rgb(
        msg.encoding, int(msg.height), int(msg.width), int(msg.step), msg.data, max_pixels,
        bool(msg.is_bigendian))


def compressed_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg or png) → uint8 RGB [H, W, 3].

    ``format`` may be a bare codec name or image_transport's "<encoding>; <codec> compressed ..."
    form. Raises ValueError for other codecs, undecodable data or too many pixels.
    """
    import cv2

    codec = _compressed_codec(msg.format)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ValueError('compressed image has no data')
    size = compressed_size(data)
    if size is not None:    # refused before OpenCV allocates the decoded frame
        _check_pixels(*size, max_pixels)
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError(f'could not decode {data.size} bytes as {codec}')
    height, width = decoded.shape[:2]
    _check_pixels(width, height, max_pixels)
    return np.ascontiguousarray(decoded[..., ::-1])  # OpenCV decodes to BGR


def _compressed_codec(fmt: str) -> str:
    text = (fmt or '').lower()
    for codec in COMPRESSED_FORMATS:
        if codec in text.replace(';', ' ').split() or text.startswith(codec):
            return 'jpeg' if codec == 'jpg' else codec
    raise ValueError(
        f'unsupported compressed image format {fmt!r}; expected jpeg or png')


def numpy_to_image(array: np.ndarray, header: Any, encoding: str) -> Any:
    """uint8 (uint16 for mono16) array → ``sensor_msgs/Image`` with a tight ``step`` (no padding).

    ``encoding`` must match the array: 'mono8' for [H, W], 'rgb8'/'bgr8' for [H, W, 3],
    'rgba8'/'bgra8' for [H, W, 4], 'mono16' for uint16 [H, W] (written little-endian,
    ``is_bigendian`` 0).
    """
    from sensor_msgs.msg import Image

    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f'unsupported image encoding {encoding!r}')
    array = np.ascontiguousarray(array)
    dtype = np.dtype(np.uint16 if encoding == 'mono16' else np.uint8)
    if array.dtype != dtype:
        raise ValueError(f'{encoding} image array must be {dtype}, got {array.dtype}')
    channels = IMAGE_ENCODINGS[encoding]
    shape_ok = (array.ndim == 2 and channels == 1) or (
        array.ndim == 3 and array.shape[2] == channels)
    if not shape_ok:
        raise ValueError(f'array of shape {array.shape} does not hold {encoding} pixels')
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.shape[1] * channels * dtype.itemsize)
    msg.data = array.astype(dtype.newbyteorder('<'), copy=False).tobytes()
    return msg


# --------------------------------------------------------------------------------------------
# audio
@dataclass
class AudioChunkData:
    """One decoded audio message.

    samples: float32 [n, channels] in [-1, 1].
    sample_rate: frames per second.
    stamp: capture time of the first frame (seconds), None when the message has no header
        (the node then stamps it at receipt time minus its duration and flags that).
    """

    samples: np.ndarray
    sample_rate: int
    stamp: float | None

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / float(self.sample_rate)


def interleaved_to_frames(values: Any, channels: int, scale: float = 1.0,
                          offset: float = 0.0) -> np.ndarray:
    """Interleaved samples → float32 [n, channels], ``(value - offset) / scale``.

    Raises ValueError when the count is not a multiple of ``channels`` or values are not finite.
    """
    if channels < 1:
        raise ValueError(f'channel count must be >= 1, got {channels}')
    array = np.asarray(values)
    if array.ndim != 1:
        array = array.reshape(-1)
    if array.size % channels:
        raise ValueError(f'{array.size} samples do not split into {channels} channels')
    frames = array.astype(np.float32)
    if offset:
        frames -= offset
    if scale != 1.0:
        frames /= scale
    if not np.isfinite(frames).all():
        raise ValueError('audio contains NaN or Inf samples')
    return frames.reshape(-1, channels)


def _header_stamp(msg: Any) -> float | None:
    stamp = stamp_to_sec(msg.header.stamp)
    # A zero stamp means the publisher never set it; treat it like a headerless message.
    return stamp if stamp > 0.0 else None


def _check_rate(rate: int) -> int:
    if int(rate) <= 0:
        raise ValueError(f'audio sample rate must be positive, got {rate}')
    if int(rate) > MAX_SAMPLE_RATE:
        raise InputTooLargeError(f'audio sample rate {rate} Hz is above the {MAX_SAMPLE_RATE} Hz limit')
    return int(rate)


def _check_channels(channels: int) -> int:
    if int(channels) < 1:
        raise ValueError(f'channel count must be >= 1, got {channels}')
    if int(channels) > MAX_CHANNELS:
        raise InputTooLargeError(f'{channels} audio channels is more than the {MAX_CHANNELS} limit')
    return int(channels)


def _check_length(values: Any) -> Any:
    if len(values) > MAX_AUDIO_VALUES:
        raise InputTooLargeError(
            f'audio message has {len(values)} values, more than the {MAX_AUDIO_VALUES} limit')
    return values


def decode_audio_chunk(msg: Any) -> AudioChunkData:
    """``taco_msgs/AudioChunk`` → :class:`AudioChunkData`."""
    rate = _check_rate(msg.sample_rate)
    channels = _check_channels(msg.channels)
    fmt = int(msg.sample_format)
    if fmt == msg.FORMAT_S16:
        frames = interleaved_to_frames(_check_length(msg.int16_data), channels, 32768.0)
    elif fmt == msg.FORMAT_S32:
        frames = interleaved_to_frames(_check_length(msg.int32_data), channels, 2.0 ** 31)
    elif fmt == msg.FORMAT_F32:
        frames = interleaved_to_frames(_check_length(msg.float32_data), channels)
    else:
        raise ValueError(f'unknown AudioChunk sample_format {fmt}')
    return AudioChunkData(frames, rate, _header_stamp(msg))


def decode_multiarray(msg: Any, sample_rate: int, channels: int) -> AudioChunkData:
    """``std_msgs/Int16MultiArray`` or ``Float32MultiArray`` → chunk without stamp.

    The message carries no rate, so ``sample_rate`` comes from a parameter. Its layout is used or
    refused, never ignored: no dimension = interleaved samples with ``channels`` from the
    parameter; one dimension = the same, its size must match the data; two dimensions = [frames,
    channels] interleaved, or [channels, frames] planar when the first is labelled 'channel(s)';
    ``data_offset`` values are skipped. Sizes or strides that do not match the data, or more
    dimensions, raise ValueError.
    """
    rate = _check_rate(sample_rate)
    data = np.asarray(_check_length(msg.data))
    offset, channels, planar = multiarray_layout(msg.layout, data.size, channels)
    values = data[offset:]
    scale = 32768.0 if values.dtype.kind in 'iu' else 1.0
    if planar:
        values = values.reshape(channels, -1).T
    return AudioChunkData(interleaved_to_frames(values, channels, scale), rate, None)


def multiarray_layout(layout: Any, count: int, channels: int) -> tuple[int, int, bool]:
    """(data_offset, channels, planar) of a MultiArrayLayout over ``count`` values; ValueError
    when the layout does not describe audio that fits the data."""
    offset = int(layout.data_offset)
    dims = list(layout.dim)
    values = count - offset
    if values < 0:
        raise ValueError(f'layout data_offset {offset} is past the {count} values')
    sizes = [int(d.size) for d in dims]
    if len(dims) > 2:
        raise ValueError(f'a multiarray layout with {len(dims)} dimensions is not audio; use '
                         '[frames, channels] or [channels, frames]')
    if len(dims) == 1 and sizes[0] not in (0, values):
        raise ValueError(f'layout declares {sizes[0]} values, the message has {values}')
    if len(dims) == 2:
        if 0 in sizes or sizes[0] * sizes[1] != values:
            raise ValueError(f'layout {sizes[0]}x{sizes[1]} does not match the {values} values')
        strides = [int(d.stride) for d in dims]
        if strides[0] not in (0, values) or strides[1] not in (0, sizes[1]):
            raise ValueError(f'layout strides {strides} do not describe a dense '
                             f'{sizes[0]}x{sizes[1]} array')
        planar = dims[0].label.strip().lower() in ('channel', 'channels')
        return offset, _check_channels(sizes[0] if planar else sizes[1]), planar
    return offset, _check_channels(channels), False


def decode_audio_common_stamped(msg: Any) -> AudioChunkData:
    """mgonzs13 ``audio_common_msgs/AudioStamped`` (PortAudio format codes) → chunk.

    The capturer stamps each chunk with ``now()`` taken just before its blocking read: the stamp
    is about the first sample's capture time, late by the device's input latency, and jitters
    with the driver's period; when the capture loop falls behind, an already buffered chunk is
    stamped late by up to the backlog. Use a ``stamp_tolerance`` of at least half a chunk
    (chunk / rate / 2; the ring buffer caps it there) so such stamps stay contiguous: the
    default 0.02 s covers the capturer's default 512 frames at 16 kHz (0.016 s); 4096-frame
    chunks at 16 kHz need 0.128 s.
    """
    info = msg.audio.info
    data = msg.audio.audio_data
    rate = _check_rate(info.rate)
    channels = _check_channels(info.channels)
    fmt = int(info.format)
    if fmt == PA_FLOAT32:
        frames = interleaved_to_frames(_check_length(data.float32_data), channels)
    elif fmt == PA_INT32:
        frames = interleaved_to_frames(_check_length(data.int32_data), channels, 2.0 ** 31)
    elif fmt == PA_INT16:
        frames = interleaved_to_frames(_check_length(data.int16_data), channels, 32768.0)
    elif fmt == PA_INT8:
        frames = interleaved_to_frames(_check_length(data.int8_data), channels, 128.0)
    elif fmt == PA_UINT8:
        frames = interleaved_to_frames(_check_length(data.uint8_data), channels, 128.0, 128.0)
    else:
        raise ValueError(f'unsupported PortAudio sample format code {fmt}')
    return AudioChunkData(frames, rate, _header_stamp(msg))


def decode_audio(kind: str, msg: Any, sample_rate: int, channels: int) -> AudioChunkData:
    """One audio message of ``kind`` (an AUDIO_MSG_KINDS name) → chunk; ValueError when unusable.

    A multiarray carries neither its rate nor its channel count: ``sample_rate`` and ``channels``
    (the node's audio_sample_rate / audio_channels) say them. The RAW_AUDIO_KINDS are not read
    here: their format comes from another topic (:func:`decode_audio_data` with what
    :class:`taco_ros.audio_formats.RawAudioGate` releases).
    """
    if kind == AUDIO_TACO:
        return decode_audio_chunk(msg)
    if kind in (AUDIO_INT16_MULTIARRAY, AUDIO_FLOAT32_MULTIARRAY):
        return decode_multiarray(msg, sample_rate, channels)
    if kind == AUDIO_COMMON_STAMPED:
        return decode_audio_common_stamped(msg)
    raise ValueError(f'{kind} audio is raw bytes read as its audio_info says: use decode_audio_data')


# Stream description for ros-drivers ``AudioData`` (the content of its ``audio_info`` topic).
RawAudioInfo = RawAudioFormat


def audio_data_bytes(msg: Any) -> Any:
    """The raw byte buffer of a ros-drivers ``AudioData`` or ``AudioDataStamped``."""
    stamped = hasattr(msg, 'audio') and hasattr(msg, 'header')
    return msg.audio.data if stamped else msg.data


def decode_audio_data(msg: Any, info: RawAudioFormat) -> AudioChunkData:
    """ros-drivers ``AudioData`` or ``AudioDataStamped`` (raw bytes) → chunk, read as ``info`` says.

    Only uncompressed streams can be decoded: ``coding_format`` must be wave/raw (the capture
    node's default is mp3; run it with ``format:=wave``). Raises ValueError naming the reason for
    mp3, an unsupported ``sample_format`` or a byte count that is not whole frames. Decode with
    the stream's own ``AudioInfo`` (see :class:`taco_ros.audio_formats.RawAudioGate`), never with
    guessed defaults.
    """
    stamped = hasattr(msg, 'audio') and hasattr(msg, 'header')
    data = audio_data_bytes(msg)
    if len(data) > MAX_AUDIO_VALUES * 4:
        raise InputTooLargeError(f'audio message has {len(data)} bytes, more than '
                                 f'{MAX_AUDIO_VALUES} 32-bit samples')
    rate = _check_rate(info.sample_rate)
    _check_channels(info.channels)
    frames = decode_pcm(data, info)
    return AudioChunkData(frames, rate,
                          _header_stamp(msg) if stamped else None)


def select_channel(frames: np.ndarray, channel: int) -> np.ndarray:
    """[n, C] → mono [n]: channel ``channel``, or the mean of all channels when it is -1."""
    if channel == -1:
        return frames.mean(axis=1) if frames.shape[1] > 1 else frames[:, 0]
    if not 0 <= channel < frames.shape[1]:
        raise ValueError(
            f'audio_channel {channel} does not exist in a {frames.shape[1]}-channel stream')
    return frames[:, channel]


# --------------------------------------------------------------------------------------------
# audio message types
@functools.cache
def audio_common_flavour() -> str | None:
    """Which ``audio_common_msgs`` is importable: 'mgonzs13', 'ros_drivers' or None."""
    try:
        module = importlib.import_module('audio_common_msgs.msg')
    except ImportError:
        return None
    fields = getattr(getattr(module, 'AudioData', None), '_fields_and_field_types', {}) or {}
    if 'int16_data' in fields:
        return FLAVOUR_MGONZS13
    if 'data' in fields:
        return FLAVOUR_ROS_DRIVERS
    return None


def audio_message_class(kind: str) -> type:
    """Message class for an ``audio_msg_type`` kind; ValueError when it is not importable."""
    if kind == AUDIO_TACO:
        from taco_msgs.msg import AudioChunk
        return AudioChunk
    if kind == AUDIO_INT16_MULTIARRAY:
        from std_msgs.msg import Int16MultiArray
        return Int16MultiArray
    if kind == AUDIO_FLOAT32_MULTIARRAY:
        from std_msgs.msg import Float32MultiArray
        return Float32MultiArray
    flavour = audio_common_flavour()
    wanted = FLAVOUR_MGONZS13 if kind == AUDIO_COMMON_STAMPED else FLAVOUR_ROS_DRIVERS
    if kind not in (AUDIO_COMMON_STAMPED, AUDIO_DATA_STAMPED, AUDIO_DATA):
        raise ValueError(f'unknown audio message kind {kind!r}; expected one of {AUDIO_MSG_KINDS}')
    if flavour != wanted:
        raise ValueError(
            f'audio_msg_type {kind!r} needs the {wanted} audio_common_msgs, but '
            f'{"none" if flavour is None else "the " + flavour + " one"} is installed')
    module = importlib.import_module('audio_common_msgs.msg')
    name = {AUDIO_COMMON_STAMPED: 'AudioStamped', AUDIO_DATA_STAMPED: 'AudioDataStamped',
            AUDIO_DATA: 'AudioData'}[kind]
    return getattr(module, name)


# ROS type names (as get_topic_names_and_types reports them) → kind, for audio_msg_type 'auto'.
TOPIC_TYPE_KINDS = {
    'taco_msgs/msg/AudioChunk': AUDIO_TACO,
    'std_msgs/msg/Int16MultiArray': AUDIO_INT16_MULTIARRAY,
    'std_msgs/msg/Float32MultiArray': AUDIO_FLOAT32_MULTIARRAY,
    'audio_common_msgs/msg/AudioStamped': AUDIO_COMMON_STAMPED,
    'audio_common_msgs/msg/AudioDataStamped': AUDIO_DATA_STAMPED,
    'audio_common_msgs/msg/AudioData': AUDIO_DATA,
}


def kind_for_topic_types(type_names: list[str]) -> str | None:
    """First supported, importable audio kind among a topic's advertised types."""
    for name in type_names:
        kind = TOPIC_TYPE_KINDS.get(name)
        if kind is None:
            continue
        try:
            audio_message_class(kind)
        except ValueError:
            continue
        return kind
    return None
