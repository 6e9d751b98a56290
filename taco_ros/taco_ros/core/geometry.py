"""Where a sounding object is in 3D: its mask over an aligned depth image, back-projected (pinhole model).

Camera frame: the optical frame of the depth image's CameraInfo (x right, y down, z forward, metres). A pixel
(u, v) with depth z maps to ((u − cx) z / fx, (v − cy) z / fy, z), (u, v) being the pixel centre's index as in
ROS's image_geometry.

Depth encodings (sensor_msgs/Image): 16UC1 in millimetres and 32FC1 in metres, as REP 118 specifies. A value
of 0 (both encodings), NaN or ±Inf means "no measurement" and is skipped, as are values beyond the
caller's range.

The object's position is the coordinate-wise median of its back-projected valid pixels and its extent the
5–95 percentile box: a mask that spills a few pixels onto the wall behind the object, or a few flying pixels
at depth edges, move neither. Both describe the visible surface (a depth camera sees no further), so the
median lies on the object's front rather than at its volumetric centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    'DEFAULT_MIN_POINTS',
    'ObjectPosition',
    'PinholeIntrinsics',
    'depth_in_metres',
    'object_position',
    'resize_mask_nearest',
]

DEFAULT_MIN_POINTS = 20  # fewer valid pixels than this give no position (a median of a handful is noise)
DEFAULT_PERCENTILES = (5.0, 95.0)
_MAX_PIXELS = 64 * 1024 * 1024  # bound on the depth or mask size before any allocation
_ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class PinholeIntrinsics:
    """fx, fy, cx, cy in pixels (CameraInfo.k = [fx, 0, cx, 0, fy, cy, 0, 0, 1]).

    width, height: size of the image these intrinsics describe (CameraInfo.width/height); 0 = the depth
    image's own size. When they differ from the depth image, the intrinsics are scaled to it (same aspect
    ratio only).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        for name in ('fx', 'fy'):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'PinholeIntrinsics.{name} must be positive and finite, got {value}')
        for name in ('cx', 'cy'):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f'PinholeIntrinsics.{name} must be finite, got {getattr(self, name)}')
        if self.width < 0 or self.height < 0 or (self.width == 0) != (self.height == 0):
            raise ValueError(f'PinholeIntrinsics width/height must both be 0 or both positive, got '
                             f'{self.width}x{self.height}')

    @classmethod
    def from_k(cls, k: Sequence[float], width: int = 0, height: int = 0) -> PinholeIntrinsics:
        """From a row-major 3×3 camera matrix (CameraInfo.k) and optionally the image size it belongs to."""
        values = [float(v) for v in k]
        if len(values) != 9:
            raise ValueError(f'the camera matrix K needs 9 values (row-major 3x3), got {len(values)}')
        return cls(fx=values[0], fy=values[4], cx=values[2], cy=values[5], width=int(width),
                   height=int(height))

    def for_image(self, width: int, height: int) -> PinholeIntrinsics:
        """These intrinsics for an image of ``width`` × ``height`` pixels (a resized copy of the original)."""
        if self.width == 0 or (self.width, self.height) == (width, height):
            return self
        _check_same_aspect((self.height, self.width), (height, width), 'the camera intrinsics',
                           'the depth image')
        sx, sy = width / self.width, height / self.height
        # Pixel centres: u' + 0.5 = (u + 0.5) s, so c' = (c + 0.5) s − 0.5.
        return PinholeIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                                 (self.cy + 0.5) * sy - 0.5, width, height)


@dataclass
class ObjectPosition:
    """An object's position and extent in the camera frame, in metres.

    centroid: [3] coordinate-wise median of the valid back-projected pixels.
    box_min, box_max: [3] the low and high percentiles (default 5th and 95th) per axis;
        size = box_max − box_min.
    n_points: valid pixels used; valid_fraction: n_points over the mask's pixels.
    """

    centroid: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    n_points: int
    valid_fraction: float

    @property
    def size(self) -> np.ndarray:
        return self.box_max - self.box_min

    @property
    def distance(self) -> float:
        """Euclidean distance of the centroid from the camera centre."""
        return float(np.linalg.norm(self.centroid))


def depth_in_metres(depth: np.ndarray, max_depth: float = math.inf) -> np.ndarray:
    """float32 [H, W] depth in metres with NaN where there is no valid measurement.

    uint16 (16UC1) is millimetres, float32/float64 (32FC1) metres; 0, NaN, ±Inf, negative values and values
    beyond ``max_depth`` metres are invalid. Other dtypes or shapes raise ValueError.
    """
    depth = np.asarray(depth)
    _check_image('depth', depth)
    if depth.dtype == np.uint16:
        metres = depth.astype(np.float32) * np.float32(0.001)
    elif depth.dtype in (np.float32, np.float64):
        metres = depth.astype(np.float32, copy=True)
    else:
        raise ValueError(f'depth must be uint16 (16UC1, mm) or float32 (32FC1, m), got dtype {depth.dtype}')
    with np.errstate(invalid='ignore'):
        invalid = ~np.isfinite(metres) | (metres <= 0) | (metres > max_depth)
    metres[invalid] = np.nan
    return metres


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` [h, w] resampled to [height, width] by nearest pixel centre (same aspect ratio only)."""
    mask = np.asarray(mask).astype(bool, copy=False)
    _check_image('mask', mask)
    if mask.shape == (height, width):
        return mask
    _check_same_aspect(mask.shape, (height, width), 'the mask', 'the depth image')
    rows = _nearest_source(height, mask.shape[0])
    cols = _nearest_source(width, mask.shape[1])
    return mask[rows[:, None], cols[None, :]]


def _nearest_source(size: int, source_size: int) -> np.ndarray:
    """For each of ``size`` output pixels, the source pixel whose extent holds its centre."""
    return np.minimum(((np.arange(size) + 0.5) * source_size / size).astype(np.int64), source_size - 1)


def object_position(mask: np.ndarray, depth: np.ndarray, intrinsics: PinholeIntrinsics, *,
                    min_points: int = DEFAULT_MIN_POINTS,
                    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                    max_depth: float = math.inf) -> ObjectPosition | None:
    """Position and extent of the object under ``mask`` (bool [H, W]) in the depth image's camera frame.

    ``depth``: 16UC1 (uint16 mm) or 32FC1 (float32 m) image aligned with the camera the mask was computed on.
    A mask of another size is resized to the depth image by nearest pixel (same aspect ratio, else
    ValueError). ``intrinsics`` describe the depth image (scaled to it when their width/height say
    otherwise). Returns None when fewer than ``min_points`` masked pixels have a valid depth.
    """
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f'percentiles must satisfy 0 <= low < high <= 100, got {percentiles}')
    if min_points < 1:
        raise ValueError(f'min_points must be >= 1, got {min_points}')
    metres = depth_in_metres(depth, max_depth)
    height, width = metres.shape
    mask = resize_mask_nearest(mask, height, width)
    camera = intrinsics.for_image(width, height)
    rows, cols = np.nonzero(mask)
    z = metres[rows, cols]
    valid = ~np.isnan(z)
    n_points = int(valid.sum())
    if n_points < min_points:
        return None
    z, rows, cols = z[valid].astype(np.float64), rows[valid], cols[valid]
    points = np.stack([(cols - camera.cx) * z / camera.fx, (rows - camera.cy) * z / camera.fy, z], axis=1)
    return ObjectPosition(
        centroid=np.median(points, axis=0),
        box_min=np.percentile(points, low, axis=0),
        box_max=np.percentile(points, high, axis=0),
        n_points=n_points,
        valid_fraction=n_points / max(len(valid), 1),
    )


def _check_image(name: str, image: np.ndarray) -> None:
    if image.ndim != 2:
        raise ValueError(f'{name} must be a single-channel [H, W] image, got shape {image.shape}')
    if image.size == 0 or image.size > _MAX_PIXELS:
        raise ValueError(f'{name} has {image.size} pixels; expected 1 to {_MAX_PIXELS}')


def _check_same_aspect(source: Sequence[int], target: Sequence[int], source_name: str,
                       target_name: str) -> None:
    """ValueError unless two (height, width) sizes have the same aspect ratio (a resize, not a crop)."""
    source_aspect = source[1] / source[0]
    target_aspect = target[1] / target[0]
    if abs(source_aspect / target_aspect - 1.0) > _ASPECT_TOLERANCE:
        raise ValueError(f'{source_name} is {source[1]}x{source[0]} and {target_name} '
                         f'{target[1]}x{target[0]}: '
                         'different aspect ratios, so one is not a resize of the other (align the depth '
                         'image to the camera first)')
