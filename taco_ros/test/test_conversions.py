"""Image and audio message conversions, checked against the message definitions."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')
cv2 = pytest.importorskip('cv2')

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import (  # noqa: E402
    Float32MultiArray,
    Header,
    Int16MultiArray,
    MultiArrayDimension,
)

from taco_ros import conversions as conv  # noqa: E402

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def raw_image(encoding: str, rgb: np.ndarray, pad: int = 0) -> Image:
    """Build an Image the way the encoding's definition lays it out, with `pad` bytes per row."""
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}[encoding]
    height, width = rgb.shape[:2]
    alpha = np.full((height, width, 1), 200, np.uint8)
    pixels = {
        'rgb8': rgb,
        'bgr8': rgb[..., ::-1],
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[..., ::-1], alpha], axis=2),
        'mono8': rgb[..., :1],
    }[encoding]
    rows = pixels.reshape(height, width * channels)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    msg = Image()
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.step = width * channels + pad
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
@pytest.mark.parametrize('pad', [0, 1, 13])
def test_raw_encodings_with_row_padding(encoding: str, pad: int) -> None:
    rgb = conv.image_to_rgb(raw_image(encoding, RGB, pad))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3) and rgb.flags.c_contiguous
    expected = np.repeat(RGB[..., :1], 3, axis=2) if encoding == 'mono8' else RGB
    np.testing.assert_array_equal(rgb, expected)


def test_last_row_padding_may_be_missing() -> None:
    msg = raw_image('rgb8', RGB, pad=4)
    msg.data = bytes(msg.data)[:-4]
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)


def test_decoded_image_does_not_alias_the_message() -> None:
    msg = raw_image('rgb8', RGB)
    rgb = conv.image_to_rgb(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert rgb[0, 0, 0] == RGB[0, 0, 0]


@pytest.mark.parametrize('mutate,message', [
    (lambda m: setattr(m, 'encoding', 'nv12'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'encoding', '16UC1'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'step', 20), 'step 20 is shorter'),
    (lambda m: setattr(m, 'data', bytes(m.data)[:-30]), 'bytes'),
    (lambda m: setattr(m, 'height', 0), 'no pixels'),
])
def test_bad_raw_images_are_refused(mutate, message: str) -> None:
    msg = raw_image('rgb8', RGB)
    mutate(msg)
    with pytest.raises(ValueError, match=message):
        conv.image_to_rgb(msg)


def test_pixel_limit() -> None:
    with pytest.raises(ValueError, match='max_image_pixels'):
        conv.image_to_rgb(raw_image('rgb8', RGB), max_pixels=34)
    assert conv.image_to_rgb(raw_image('rgb8', RGB), max_pixels=35).shape == (5, 7, 3)


@pytest.mark.parametrize('fmt', ['png', 'rgb8; png compressed bgr8', 'jpeg', 'bgr8; jpeg compressed bgr8'])
def test_compressed_images(fmt: str) -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    smooth[..., 1] = 128
    smooth[..., 2] = np.linspace(255, 0, 32, dtype=np.uint8)[:, None]
    codec = '.png' if 'png' in fmt else '.jpg'
    ok, encoded = cv2.imencode(codec, smooth[..., ::-1])
    assert ok
    msg = CompressedImage(format=fmt)
    msg.data = encoded.tobytes()
    rgb = conv.compressed_to_rgb(msg)
    assert rgb.shape == smooth.shape
    if codec == '.png':
        np.testing.assert_array_equal(rgb, smooth)
    else:
        assert np.abs(rgb.astype(int) - smooth).mean() < 4


@pytest.mark.parametrize('fmt,data,message', [
    ('tiff', b'\x00' * 10, 'unsupported compressed'),
    ('jpeg', b'', 'no data'),
    ('png', b'not a png at all', 'could not decode'),
])
def test_bad_compressed_images(fmt: str, data: bytes, message: str) -> None:
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(ValueError, match=message):
        conv.compressed_to_rgb(msg)


@pytest.mark.parametrize('encoding,array', [
    ('mono8', RGB[..., 0]), ('rgb8', RGB), ('bgr8', RGB),
    ('rgba8', np.concatenate([RGB, RGB[..., :1]], axis=2)),
])
def test_numpy_to_image_round_trip(encoding: str, array: np.ndarray) -> None:
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = conv.numpy_to_image(array, header, encoding)
    assert msg.header.frame_id == 'cam' and msg.header.stamp.nanosec == 345
    assert (msg.height, msg.width) == array.shape[:2]
    assert msg.step * msg.height == len(msg.data)
    back = np.frombuffer(bytes(msg.data), np.uint8).reshape(array.shape)
    np.testing.assert_array_equal(back, array)


def test_numpy_to_image_checks_shape() -> None:
    with pytest.raises(ValueError, match='does not hold'):
        conv.numpy_to_image(RGB, Header(), 'mono8')
    with pytest.raises(ValueError, match='uint8'):
        conv.numpy_to_image(RGB.astype(np.float32), Header(), 'rgb8')


def test_stamp_conversions() -> None:
    stamp = conv.sec_to_stamp(1_700_000_000.123456789)
    assert stamp.sec == 1_700_000_000 and abs(stamp.nanosec - 123456789) < 300
    assert conv.stamp_to_sec(stamp) == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    with pytest.raises(ValueError):
        conv.sec_to_stamp(float('inf'))


# ------------------------------------------------------------------------------------ audio
def interleave(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(-1)


STEREO64 = np.stack([np.linspace(-1, 1, 64), np.linspace(1, -1, 64)], axis=1)
STEREO = STEREO64.astype(np.float32)


def test_taco_audio_chunk_formats() -> None:
    from taco_msgs.msg import AudioChunk

    for fmt, field, scale, dtype in [
        (AudioChunk.FORMAT_S16, 'int16_data', 32767, np.int16),
        (AudioChunk.FORMAT_S32, 'int32_data', 2 ** 31 - 1, np.int32),
        (AudioChunk.FORMAT_F32, 'float32_data', 1.0, np.float32),
    ]:
        msg = AudioChunk(sample_rate=48000, channels=2, sample_format=fmt)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 5, 500_000_000
        setattr(msg, field, interleave(np.round(STEREO64 * scale).astype(dtype)
                                       if dtype != np.float32 else STEREO))
        chunk = conv.decode_audio_chunk(msg)
        assert chunk.sample_rate == 48000 and chunk.stamp == pytest.approx(5.5)
        assert chunk.samples.shape == (64, 2) and chunk.samples.dtype == np.float32
        np.testing.assert_allclose(chunk.samples, STEREO, atol=1e-4)
        assert chunk.duration == pytest.approx(64 / 48000)


def test_taco_audio_chunk_bad_input() -> None:
    from taco_msgs.msg import AudioChunk

    msg = AudioChunk(sample_rate=16000, channels=2, sample_format=AudioChunk.FORMAT_F32)
    msg.float32_data = [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match='channels'):
        conv.decode_audio_chunk(msg)
    msg.float32_data = [0.1, float('nan')]
    with pytest.raises(ValueError, match='NaN'):
        conv.decode_audio_chunk(msg)
    msg.sample_rate = 0
    with pytest.raises(ValueError, match='sample rate'):
        conv.decode_audio_chunk(msg)
    msg.sample_rate, msg.sample_format = 16000, 9
    with pytest.raises(ValueError, match='sample_format'):
        conv.decode_audio_chunk(msg)


def test_zero_stamp_means_unstamped() -> None:
    from taco_msgs.msg import AudioChunk

    msg = AudioChunk(sample_rate=16000, channels=1, sample_format=AudioChunk.FORMAT_S16)
    msg.int16_data = [1, 2, 3]
    assert conv.decode_audio_chunk(msg).stamp is None


def test_multiarrays() -> None:
    msg = Int16MultiArray()
    msg.data = interleave(np.round(STEREO * 32767).astype(np.int16))
    chunk = conv.decode_multiarray(msg, sample_rate=16000, channels=2)
    assert chunk.stamp is None and chunk.samples.shape == (64, 2)
    np.testing.assert_allclose(chunk.samples, STEREO, atol=1e-4)
    fmsg = Float32MultiArray()
    fmsg.data = interleave(STEREO)
    chunk = conv.decode_multiarray(fmsg, sample_rate=8000, channels=1)
    assert chunk.samples.shape == (128, 1) and chunk.sample_rate == 8000
    fmsg.layout.dim = [MultiArrayDimension(label='frames', size=64, stride=128),
                       MultiArrayDimension(label='channels', size=2, stride=2)]
    chunk = conv.decode_multiarray(fmsg, sample_rate=8000, channels=1)
    assert chunk.samples.shape == (64, 2)
    fmsg.layout.dim = []
    fmsg.data = [0.0, float('inf')]
    with pytest.raises(ValueError, match='NaN'):
        conv.decode_multiarray(fmsg, sample_rate=8000, channels=1)


def test_decode_audio_reads_each_kind_as_the_node_and_the_bag_replay_do() -> None:
    msg = Int16MultiArray()
    msg.data = interleave(np.round(STEREO * 32767).astype(np.int16))
    chunk = conv.decode_audio(conv.AUDIO_INT16_MULTIARRAY, msg, 16000, 2)
    assert chunk.samples.shape == (64, 2) and chunk.sample_rate == 16000
    for kind in conv.RAW_AUDIO_KINDS:     # their format comes from audio_info, never from here
        with pytest.raises(ValueError, match='audio_info'):
            conv.decode_audio(kind, msg, 16000, 2)


def test_empty_multiarray_gives_an_empty_chunk() -> None:
    chunk = conv.decode_multiarray(Int16MultiArray(), sample_rate=16000, channels=1)
    assert chunk.samples.shape == (0, 1)


def mgonzs13_msg(fmt: int, field: str, values: np.ndarray, channels: int) -> types.SimpleNamespace:
    """An object with the field layout of mgonzs13 audio_common_msgs/AudioStamped."""
    data = types.SimpleNamespace(float32_data=[], int32_data=[], int16_data=[], int8_data=[],
                                 uint8_data=[])
    setattr(data, field, values)
    info = types.SimpleNamespace(format=fmt, channels=channels, rate=16000, chunk=values.size)
    stamp = types.SimpleNamespace(sec=3, nanosec=0)
    return types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp),
                                 audio=types.SimpleNamespace(audio_data=data, info=info))


@pytest.mark.parametrize('fmt,field,dtype,scale,offset', [
    (conv.PA_FLOAT32, 'float32_data', np.float32, 1.0, 0),
    (conv.PA_INT32, 'int32_data', np.int32, 2 ** 31 - 1, 0),
    (conv.PA_INT16, 'int16_data', np.int16, 32767, 0),
    (conv.PA_INT8, 'int8_data', np.int8, 127, 0),
    (conv.PA_UINT8, 'uint8_data', np.uint8, 127, 128),
])
def test_mgonzs13_audio_stamped(fmt: int, field: str, dtype, scale: float, offset: int) -> None:
    values = interleave(STEREO)
    if dtype != np.float32:
        values = (np.round(interleave(STEREO64) * scale) + offset).astype(dtype)
    chunk = conv.decode_audio_common_stamped(mgonzs13_msg(fmt, field, values, 2))
    assert chunk.stamp == 3.0 and chunk.sample_rate == 16000
    np.testing.assert_allclose(chunk.samples, STEREO, atol=1.0 / 100)


def test_mgonzs13_unknown_format() -> None:
    with pytest.raises(ValueError, match='PortAudio'):
        conv.decode_audio_common_stamped(mgonzs13_msg(4, 'int8_data', np.zeros(4, np.int8), 1))


@pytest.mark.parametrize('sample_format,dtype', [
    ('S16LE', '<i2'), ('S16BE', '>i2'), ('S32LE', '<i4'), ('F32LE', '<f4'), ('U8', 'u1'), ('S8', 'i1'),
])
def test_ros_drivers_audio_data(sample_format: str, dtype: str) -> None:
    values = interleave(STEREO64)
    if np.dtype(dtype).kind != 'f':
        scale = 2.0 ** (8 * np.dtype(dtype).itemsize - 1)
        values = np.round(values * (scale - 1) + (scale if np.dtype(dtype).kind == 'u' else 0))
    raw = values.astype(dtype).tobytes()
    info = conv.RawAudioInfo(sample_rate=44100, channels=2, sample_format=sample_format)
    unstamped = types.SimpleNamespace(data=raw)
    chunk = conv.decode_audio_data(unstamped, info)
    assert chunk.stamp is None and chunk.sample_rate == 44100
    np.testing.assert_allclose(chunk.samples, STEREO, atol=1.0 / 100)
    stamp = types.SimpleNamespace(sec=7, nanosec=250_000_000)
    stamped = types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp), audio=unstamped)
    assert conv.decode_audio_data(stamped, info).stamp == pytest.approx(7.25)


def test_ros_drivers_refuses_mp3_and_odd_bytes() -> None:
    msg = types.SimpleNamespace(data=b'\x00\x01\x02')
    with pytest.raises(ValueError, match='compressed'):
        conv.decode_audio_data(msg, conv.RawAudioInfo(coding_format='mp3'))
    with pytest.raises(ValueError, match='whole'):
        conv.decode_audio_data(msg, conv.RawAudioInfo())
    with pytest.raises(ValueError, match='sample_format'):
        conv.decode_audio_data(msg, conv.RawAudioInfo(sample_format='S20LE'))


def test_select_channel() -> None:
    assert conv.select_channel(STEREO, -1) == pytest.approx(np.zeros(64), abs=1e-6)
    np.testing.assert_array_equal(conv.select_channel(STEREO, 1), STEREO[:, 1])
    np.testing.assert_array_equal(conv.select_channel(STEREO[:, :1], 0), STEREO[:, 0])
    with pytest.raises(ValueError, match='does not exist'):
        conv.select_channel(STEREO, 2)


def _fake_audio_common(monkeypatch: pytest.MonkeyPatch, fields: dict) -> None:
    package = types.ModuleType('audio_common_msgs')
    module = types.ModuleType('audio_common_msgs.msg')
    audio_data = type('AudioData', (), {'_fields_and_field_types': fields})
    module.AudioData = audio_data
    module.AudioStamped = type('AudioStamped', (), {})
    module.AudioDataStamped = type('AudioDataStamped', (), {})
    package.msg = module
    monkeypatch.setitem(sys.modules, 'audio_common_msgs', package)
    monkeypatch.setitem(sys.modules, 'audio_common_msgs.msg', module)
    conv.audio_common_flavour.cache_clear()


def test_audio_common_flavour_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        _fake_audio_common(monkeypatch, {'int16_data': 'sequence<int16>', 'float32_data': 'x'})
        assert conv.audio_common_flavour() == conv.FLAVOUR_MGONZS13
        assert conv.audio_message_class(conv.AUDIO_COMMON_STAMPED).__name__ == 'AudioStamped'
        with pytest.raises(ValueError, match='ros_drivers'):
            conv.audio_message_class(conv.AUDIO_DATA_STAMPED)
        _fake_audio_common(monkeypatch, {'data': 'sequence<uint8>'})
        assert conv.audio_common_flavour() == conv.FLAVOUR_ROS_DRIVERS
        assert conv.audio_message_class(conv.AUDIO_DATA_STAMPED).__name__ == 'AudioDataStamped'
        assert conv.kind_for_topic_types(
            ['audio_common_msgs/msg/AudioStamped', 'audio_common_msgs/msg/AudioDataStamped']
        ) == conv.AUDIO_DATA_STAMPED
    finally:
        monkeypatch.undo()
        conv.audio_common_flavour.cache_clear()


def test_message_classes_without_audio_common() -> None:
    assert conv.audio_message_class(conv.AUDIO_INT16_MULTIARRAY) is Int16MultiArray
    assert conv.audio_message_class(conv.AUDIO_TACO).__name__ == 'AudioChunk'
    assert conv.kind_for_topic_types(['taco_msgs/msg/AudioChunk']) == conv.AUDIO_TACO
    assert conv.kind_for_topic_types(['sensor_msgs/msg/Image']) is None
    with pytest.raises(ValueError, match='unknown'):
        conv.audio_message_class('wav')


def test_check_functions_match_conversion() -> None:
    good = raw_image('bgra8', RGB, pad=3)
    conv.check_image(good)
    bad = raw_image('rgb8', RGB)
    bad.step = 2
    with pytest.raises(ValueError, match='step'):
        conv.check_image(bad)
    with pytest.raises(ValueError, match='no data'):
        conv.check_compressed(CompressedImage(format='jpeg'))
    with pytest.raises(ValueError, match='unsupported'):
        conv.check_compressed(CompressedImage(format='webp'))


# ------------------------------------------------------------------------------ layouts
def _dims(*dims: tuple[str, int, int]) -> list[MultiArrayDimension]:
    return [MultiArrayDimension(label=label, size=size, stride=stride)
            for label, size, stride in dims]


def test_multiarray_layout_is_used() -> None:
    planar = Float32MultiArray()
    planar.layout.dim = _dims(('channels', 2, 128), ('frames', 64, 64))
    planar.data = np.ascontiguousarray(STEREO.T).reshape(-1)
    chunk = conv.decode_multiarray(planar, sample_rate=16000, channels=1)
    np.testing.assert_array_equal(chunk.samples, STEREO)
    padded = Float32MultiArray()
    padded.layout.data_offset = 3
    padded.layout.dim = _dims(('frames', 64, 128), ('channels', 2, 2))
    padded.data = np.concatenate([np.full(3, 9.0, np.float32), interleave(STEREO)])
    np.testing.assert_array_equal(
        conv.decode_multiarray(padded, sample_rate=16000, channels=1).samples, STEREO)
    flat = Int16MultiArray()
    flat.layout.dim = _dims(('samples', 128, 1))
    flat.data = np.zeros(128, np.int16)
    assert conv.decode_multiarray(flat, sample_rate=16000, channels=2).samples.shape == (64, 2)


@pytest.mark.parametrize('dims,offset,message', [
    ([('frames', 64, 128), ('channels', 3, 3)], 0, 'does not match'),
    ([('frames', 128, 128), ('channels', 0, 0)], 0, 'does not match'),
    ([('frames', 64, 128), ('channels', 2, 5)], 0, 'strides'),
    ([('a', 2, 128), ('b', 8, 64), ('c', 8, 8)], 0, '3 dimensions'),
    ([('samples', 100, 1)], 0, 'declares 100'),
    ([], 500, 'data_offset'),
    ([('frames', 1, 128), ('channels', 128, 128)], 0, 'limit'),
])
def test_multiarray_layout_that_does_not_fit_is_refused(dims: list, offset: int,
                                                        message: str) -> None:
    msg = Float32MultiArray()
    msg.layout.dim = _dims(*dims)
    msg.layout.data_offset = offset
    msg.data = interleave(STEREO)
    with pytest.raises(ValueError, match=message):
        conv.decode_multiarray(msg, sample_rate=16000, channels=1)


# ------------------------------------------------------------------------------- bounds
def test_audio_sizes_are_bounded_before_decoding() -> None:
    from taco_msgs.msg import AudioChunk

    msg = AudioChunk(sample_rate=1_000_000_000, channels=1, sample_format=AudioChunk.FORMAT_S16)
    msg.int16_data = np.zeros(512, np.int16)
    with pytest.raises(conv.InputTooLargeError, match='Hz limit'):
        conv.decode_audio_chunk(msg)
    msg.sample_rate, msg.channels = 16000, 1000
    msg.int16_data = np.zeros(1000, np.int16)
    with pytest.raises(conv.InputTooLargeError, match='channels'):
        conv.decode_audio_chunk(msg)
    msg.channels = 1
    msg.int16_data = np.zeros(conv.MAX_AUDIO_VALUES + 1, np.int16)
    with pytest.raises(conv.InputTooLargeError, match='values'):
        conv.decode_audio_chunk(msg)
    info = conv.RawAudioInfo(sample_rate=10 ** 9)
    with pytest.raises(conv.InputTooLargeError):
        conv.decode_audio_data(types.SimpleNamespace(data=b'\x00\x00'), info)
    with pytest.raises(conv.InputTooLargeError):
        conv.decode_multiarray(Int16MultiArray(), sample_rate=10 ** 9, channels=1)


@pytest.mark.parametrize('codec', ['.png', '.jpg'])
def test_compressed_image_size_is_read_from_its_header(codec: str) -> None:
    ok, encoded = cv2.imencode(codec, np.zeros((37, 53, 3), np.uint8))
    assert ok
    assert conv.compressed_size(encoded.reshape(-1)) == (53, 37)
    msg = CompressedImage(format='png' if codec == '.png' else 'jpeg')
    msg.data = encoded.tobytes()
    conv.check_compressed(msg, max_pixels=53 * 37)
    with pytest.raises(conv.InputTooLargeError, match='max_image_pixels'):
        conv.check_compressed(msg, max_pixels=53 * 37 - 1)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    """A png whose header declares 60000 x 60000 pixels: refused from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack('>IIBBBBB', 60000, 60000, 8, 2, 0, 0, 0)
    png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
           + chunk(b'IDAT', zlib.compress(b'\x00' * 1000)) + chunk(b'IEND', b''))
    msg = CompressedImage(format='png')
    msg.data = png
    with pytest.raises(conv.InputTooLargeError, match='60000x60000'):
        conv.check_compressed(msg, max_pixels=16_777_216)
    with pytest.raises(conv.InputTooLargeError, match='60000x60000'):
        conv.compressed_to_rgb(msg, max_pixels=16_777_216)


def test_unreadable_compressed_header_is_refused() -> None:
    msg = CompressedImage(format='jpeg')
    msg.data = b'\xff\xd8' + b'\x00' * 40
    with pytest.raises(ValueError, match='image size'):
        conv.check_compressed(msg)
