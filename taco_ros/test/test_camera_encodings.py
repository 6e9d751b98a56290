"""Camera encodings robots publish, each laid out here from its definition and read back as RGB."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')
pytest.importorskip('cv2')

from sensor_msgs.msg import Image

from taco_ros import camera_encodings as ce
from taco_ros import conversions as conv

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(11)
RGB16 = RNG.integers(0, 65536, size=(6, 8, 3), dtype=np.uint16)
# ROS Bayer pattern → which RGB channel sits at (row % 2, column % 2).
BAYER = {'rggb': ((0, 1), (1, 2)), 'bggr': ((2, 1), (1, 0)),
         'gbrg': ((1, 2), (0, 1)), 'grbg': ((1, 0), (2, 1))}


def image(encoding: str, rows: np.ndarray, pad: int, bigendian: bool = False) -> Image:
    """An Image whose rows are ``rows`` [H, row bytes] followed by ``pad`` filler bytes each."""
    rows = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)
    filler = np.full((rows.shape[0], pad), 0xA5, np.uint8)
    msg = Image(encoding=encoding, height=rows.shape[0], is_bigendian=int(bigendian))
    msg.step = rows.shape[1] + pad
    msg.data = np.concatenate([rows, filler], axis=1).tobytes()
    return msg


def to8(values: np.ndarray) -> np.ndarray:
    """Full-range 16 → 8 bits, rounded (the documented scaling)."""
    return np.round(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def sixteen_bit_rows(encoding: str, rgb: np.ndarray, bigendian: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows as stored, expected RGB8) for the 16-bit RGB/BGR/mono encodings."""
    alpha = np.full((*rgb.shape[:2], 1), 4321, np.uint16)
    pixels = {'rgb16': rgb, 'bgr16': rgb[..., ::-1], 'mono16': rgb[..., :1],
              'rgba16': np.concatenate([rgb, alpha], axis=2),
              'bgra16': np.concatenate([rgb[..., ::-1], alpha], axis=2)}[encoding]
    stored = pixels.astype('>u2' if bigendian else '<u2')
    expected = np.repeat(to8(rgb[..., :1]), 3, axis=2) if encoding == 'mono16' else to8(rgb)
    return stored.reshape(rgb.shape[0], -1), expected


@pytest.mark.parametrize('encoding', ['rgb16', 'bgr16', 'rgba16', 'bgra16', 'mono16'])
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('pad', [0, 3])  # 3: odd step, 16-bit samples off their alignment
def test_sixteen_bit_encodings(encoding: str, bigendian: bool, pad: int) -> None:
    rows, expected = sixteen_bit_rows(encoding, RGB16, bigendian)
    msg = image(encoding, rows, pad, bigendian)
    msg.width = RGB16.shape[1]
    conv.check_image(msg)
    rgb = conv.image_to_rgb(msg)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 8, 3) and rgb.flags.c_contiguous
    assert np.abs(rgb.astype(int) - expected).max() <= 1   # rounding of x.5 may differ


def mosaic(pattern: str, rgb: np.ndarray) -> np.ndarray:
    """Single-channel Bayer image of ``rgb`` under a ROS pattern."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, BAYER[pattern][dy][dx]]
    return out


@pytest.mark.parametrize('pattern', list(BAYER))
@pytest.mark.parametrize('pad', [0, 5])
def test_bayer_patterns_give_the_true_colour(pattern: str, pad: int) -> None:
    """A flat colour survives demosaicing exactly, only when the pattern is read right: a swapped
    R/B or a one-pixel shift of the pattern (OpenCV names patterns from the second row) would
    give other colours."""
    for colour in [(200, 100, 30), (10, 240, 90), (255, 0, 128)]:
        flat = np.broadcast_to(np.array(colour, np.uint8), (8, 10, 3))
        msg = image(f'bayer_{pattern}8', mosaic(pattern, flat), pad)
        msg.width = 10
        np.testing.assert_array_equal(conv.image_to_rgb(msg), flat)


@pytest.mark.parametrize('pattern', list(BAYER))
def test_sixteen_bit_bayer(pattern: str) -> None:
    flat = np.broadcast_to(np.array([51400, 25700, 7710], np.uint16), (6, 8, 3))
    for bigendian in (False, True):
        rows = mosaic(pattern, flat).astype('>u2' if bigendian else '<u2')
        msg = image(f'bayer_{pattern}16', rows, pad=2, bigendian=bigendian)
        msg.width = 8
        np.testing.assert_array_equal(conv.image_to_rgb(msg), to8(flat))


def test_bayer_smooth_scene_is_reconstructed() -> None:
    """A smooth scene (not only flat colour) comes back close to the original."""
    yy, xx = np.mgrid[0:32, 0:40].astype(np.float64)
    scene = np.stack([60 + 4 * xx, 200 - 3 * yy, 40 + 2 * xx + 2 * yy], axis=2).astype(np.uint8)
    msg = image('bayer_rggb8', mosaic('rggb', scene), pad=0)
    msg.width = 40
    error = np.abs(conv.image_to_rgb(msg).astype(int) - scene)[2:-2, 2:-2]
    assert error.max() <= 2


def yuv_reference(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing YUV → RGB (u, v per pixel), written out from the standard's formula."""
    luma = 1.164 * (y - 16.0)
    u, v = u - 128.0, v - 128.0
    rgb = np.stack([luma + 1.596 * v, luma - 0.813 * v - 0.391 * u, luma + 2.018 * u], axis=-1)
    return np.clip(rgb, 0, 255)


@pytest.mark.parametrize('encoding', ['uyvy', 'yuv422', 'yuyv', 'yuv422_yuy2'])
@pytest.mark.parametrize('pad', [0, 6])
def test_yuv422_byte_orders(encoding: str, pad: int) -> None:
    height, width = 4, 6
    y = RNG.integers(16, 236, size=(height, width)).astype(np.uint8)
    u = RNG.integers(16, 241, size=(height, width // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, size=(height, width // 2)).astype(np.uint8)
    rows = np.zeros((height, width * 2), np.uint8)
    # uyvy (yuv422): U Y0 V Y1; yuyv (yuv422_yuy2): Y0 U Y1 V.
    order = (u, y[:, 0::2], v, y[:, 1::2]) if encoding in ('uyvy', 'yuv422') else (
        y[:, 0::2], u, y[:, 1::2], v)
    for slot, values in enumerate(order):
        rows[:, slot::4] = values
    msg = image(encoding, rows, pad)
    msg.width = width
    expected = yuv_reference(y.astype(float), np.repeat(u, 2, axis=1).astype(float),
                             np.repeat(v, 2, axis=1).astype(float))
    assert np.abs(conv.image_to_rgb(msg) - expected).max() <= 1.0


@pytest.mark.parametrize('encoding', ['nv12', 'nv21', '32FC1', '16UC1', '8UC3', 'bayer_rggb12',
                                      'RGB8', '', 'jpeg'])
def test_other_encodings_get_one_clear_refusal(encoding: str) -> None:
    msg = image('rgb8', np.zeros((2, 12), np.uint8), 0)
    msg.width, msg.encoding = 4, encoding
    for call in (conv.check_image, conv.image_to_rgb):
        with pytest.raises(ValueError, match=f"unsupported image encoding '{encoding}'; supported:"):
            call(msg)


@pytest.mark.parametrize('encoding,width,step,message', [
    ('rgb16', 4, 23, 'step 23 is shorter than one row of 4 rgb16 pixels \\(24 bytes\\)'),
    ('mono16', 4, 7, 'step 7 is shorter'),
    ('uyvy', 3, 6, 'width must be even'),
    ('bayer_gbrg16', 4, 7, 'step 7 is shorter'),
])
def test_row_sizes_are_checked_per_encoding(encoding: str, width: int, step: int,
                                            message: str) -> None:
    msg = image(encoding, np.zeros((2, 24), np.uint8), 0)
    msg.width, msg.step = width, step
    with pytest.raises(ValueError, match=message):
        conv.check_image(msg)


def test_sizes_are_bounded_before_allocation() -> None:
    """A header claiming a huge image is refused from its fields, before any buffer is made."""
    msg = Image(encoding='rgb16', height=100_000, width=100_000, step=600_000)
    msg.data = b'\x00' * 64
    with pytest.raises(ValueError, match='max_image_pixels'):
        conv.check_image(msg, max_pixels=1_000_000)
    with pytest.raises(ValueError, match='64 bytes'):
        conv.check_image(msg)
    msg.height = 0
    with pytest.raises(ValueError, match='no pixels'):
        conv.check_image(msg)


def test_last_row_padding_may_be_missing_for_16_bit_rows() -> None:
    rows, expected = sixteen_bit_rows('rgb16', RGB16, False)
    msg = image('rgb16', rows, pad=4)
    msg.width = 8
    msg.data = bytes(msg.data)[:-4]
    assert np.abs(conv.image_to_rgb(msg).astype(int) - expected).max() <= 1


@pytest.mark.parametrize('encoding', ce.SUPPORTED_ENCODINGS)
def test_every_encoding_gives_an_unaliased_rgb8_copy(encoding: str) -> None:
    layout = ce.layout_of(encoding)
    height, width = 4, 6
    rows = RNG.integers(0, 256, size=(height, width * layout.bytes_per_pixel), dtype=np.uint8)
    msg = image(encoding, rows, pad=1)
    msg.width = width
    rgb = conv.image_to_rgb(msg)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    before = rgb.copy()
    msg.data[0] = (int(msg.data[0]) + 128) % 256
    np.testing.assert_array_equal(rgb, before)
