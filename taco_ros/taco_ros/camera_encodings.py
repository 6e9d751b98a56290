"""Raw ``sensor_msgs/Image`` encodings that robot cameras publish, converted to 8-bit RGB.

cv_bridge is not installable from PyPI, so the pixel layout is read here from the Image
definition: ``height`` rows of ``step`` bytes, the first ``width * bytes_per_pixel`` of each row
holding pixels (the rest is padding), 16-bit samples in the byte order ``is_bigendian`` names.
Encoding names are those of sensor_msgs' ``image_encodings.hpp``.

Colour conversions use OpenCV. Its Bayer constants name the pattern by the second row's second
and third pixels, so ROS ``bayer_rggb8`` (R G / G B from the top-left corner) is OpenCV's
``BayerBG`` (the test suite checks every pattern against a synthetic mosaic). ``yuv422`` is the
deprecated ROS name of ``uyvy`` (U Y0 V Y1 per pixel pair) and ``yuv422_yuy2`` that of ``yuyv``
(Y0 U Y1 V); both are BT.601 as OpenCV decodes them.

16-bit data is scaled to 8 bits over the full range (65535 → 255): ``mono16`` depth images in
millimetres therefore look dark, as they do in image viewers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EncodingLayout:
    """How one encoding stores a pixel.

    channels: samples per pixel in the [H, W, channels] view (2 for 4:2:2 YUV: Y and U or V).
    depth: bits per sample (8 or 16).
    family: 'rgb', 'bgr', 'rgba', 'bgra', 'mono', 'bayer_XXXX' or 'yuv_uyvy' / 'yuv_yuyv'.
    """

    channels: int
    depth: int
    family: str

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.depth // 8


def _layouts() -> dict[str, EncodingLayout]:
    table: dict[str, EncodingLayout] = {}
    for depth in (8, 16):
        for family, channels in (('rgb', 3), ('bgr', 3), ('rgba', 4), ('bgra', 4), ('mono', 1)):
            table[f'{family}{depth}'] = EncodingLayout(channels, depth, family)
        for pattern in ('rggb', 'bggr', 'gbrg', 'grbg'):
            table[f'bayer_{pattern}{depth}'] = EncodingLayout(1, depth, f'bayer_{pattern}')
    for name, family in (('uyvy', 'yuv_uyvy'), ('yuv422', 'yuv_uyvy'),
                         ('yuyv', 'yuv_yuyv'), ('yuv422_yuy2', 'yuv_yuyv')):
        table[name] = EncodingLayout(2, 8, family)
    return table


ENCODINGS: dict[str, EncodingLayout] = _layouts()
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(sorted(ENCODINGS))

# ROS Bayer pattern (top-left 2x2, row by row) → OpenCV conversion-code name.
_BAYER_CODES = {'bayer_rggb': 'COLOR_BayerBG2RGB', 'bayer_bggr': 'COLOR_BayerRG2RGB',
                'bayer_gbrg': 'COLOR_BayerGR2RGB', 'bayer_grbg': 'COLOR_BayerGB2RGB'}
_YUV_CODES = {'yuv_uyvy': 'COLOR_YUV2RGB_UYVY', 'yuv_yuyv': 'COLOR_YUV2RGB_YUYV'}


def layout_of(encoding: str) -> EncodingLayout:
    """The layout of ``encoding``; ValueError naming it when it is not supported."""
    layout = ENCODINGS.get(encoding)
    if layout is None:
        raise ValueError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    return layout


def pixel_view(encoding: str, height: int, width: int, step: int, data: Any,
               max_pixels: int | None = None, is_bigendian: bool = False) -> np.ndarray:
    """Checked, zero-copy, read-only [height, width, channels] view of an Image's pixels.

    uint8 for 8-bit encodings, uint16 (in the message's byte order) for 16-bit ones. Raises
    ValueError for an unsupported encoding, no pixels, more than ``max_pixels`` pixels, a
    ``step`` shorter than a row, an odd width for 4:2:2 YUV or data shorter than the rows.
    """
    layout = layout_of(encoding)
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f'image {width}x{height} has {height * width} pixels, more than max_image_pixels '
            f'= {max_pixels}')
    if layout.family.startswith('yuv') and width % 2:
        raise ValueError(f'{encoding} pairs pixels, so its width must be even (got {width})')
    sample = layout.depth // 8
    dtype = np.dtype(np.uint8) if sample == 1 else np.dtype('>u2' if is_bigendian else '<u2')
    return strided_view(height, width, step, data, dtype, layout.channels, encoding=encoding)


def strided_view(height: int, width: int, step: int, data: Any, dtype: np.dtype, channels: int = 1,
                 *, encoding: str = '', what: str = 'image') -> np.ndarray:
    """Checked, zero-copy, read-only [height, width, channels] view of ``dtype`` samples in rows of
    ``step`` bytes (colour frames and depth images alike). ValueError, naming ``what``, for no
    pixels, a ``step`` shorter than a row or data shorter than the rows."""
    if height <= 0 or width <= 0:
        raise ValueError(f'{what} has no pixels ({width}x{height})')
    bytes_per_pixel = channels * dtype.itemsize
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ValueError(
            f'{what} step {step} is shorter than one row of {width} {encoding} pixels '
            f'({row_bytes} bytes)')
    buffer = memoryview(data).cast('B')
    # The definition says len(data) == step * height; some drivers omit the last row's padding,
    # so only the bytes that hold pixels are required.
    needed = (height - 1) * step + row_bytes
    if buffer.nbytes < needed:
        raise ValueError(
            f'{what} data has {buffer.nbytes} bytes, {height} rows of step {step} need {needed}')
    view = np.ndarray(shape=(height, width, channels), dtype=dtype, buffer=buffer,
                      strides=(step, bytes_per_pixel, dtype.itemsize))
    view.flags.writeable = False
    return view


def to_rgb8(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """A :func:`pixel_view` → new contiguous uint8 RGB [H, W, 3] (never aliases the message)."""
    family = layout_of(encoding).family
    if family.startswith('yuv'):
        return _convert(np.ascontiguousarray(pixels), _YUV_CODES[family])
    if family.startswith('bayer'):
        # Demosaic at full depth (OpenCV takes 8 and 16 bits), then scale.
        return _to_8bit(_convert(np.ascontiguousarray(pixels[..., 0]), _BAYER_CODES[family]))
    pixels = _to_8bit(pixels)
    if family == 'bgr':
        pixels = pixels[..., ::-1]
    elif family == 'rgba':
        pixels = pixels[..., :3]
    elif family == 'bgra':
        pixels = pixels[..., 2::-1]
    elif family == 'mono':
        pixels = np.repeat(pixels, 3, axis=2)
    # Always copy: the result must not alias the message buffer (the message may be reused).
    return np.array(pixels, dtype=np.uint8, order='C', copy=True)


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """uint16 (either byte order) → uint8 over the full range, rounded; uint8 unchanged."""
    if values.dtype == np.uint8:
        return values
    import cv2

    native = np.ascontiguousarray(values, dtype=np.uint16)
    # OpenCV returns a single channel as [H, W]; keep the caller's shape.
    return cv2.convertScaleAbs(native, alpha=255.0 / 65535.0).reshape(values.shape)


def _convert(pixels: np.ndarray, code_name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(pixels, getattr(cv2, code_name))


def image_to_rgb8(encoding: str, height: int, width: int, step: int, data: Any,
                  max_pixels: int | None = None, is_bigendian: bool = False) -> np.ndarray:
    """Raw Image fields → uint8 RGB [H, W, 3] (:func:`pixel_view` then :func:`to_rgb8`)."""
    view = pixel_view(encoding, height, width, step, data, max_pixels, is_bigendian)
    return to_rgb8(view, encoding)
