"""Tests of core/geometry.py on synthetic depth scenes of known geometry (ray-cast planes and a box).

Tolerances: one depth quantum (1 mm for 16UC1) plus the mask error, i.e. the footprint of the pixels by which
the mask can be off (one pixel of footprint z/f for the discretised edge of an exact mask).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from taco_ros.core.geometry import (
    PinholeIntrinsics,
    depth_in_metres,
    object_position,
    resize_mask_nearest,
)

WIDTH, HEIGHT = 640, 480
CAMERA = PinholeIntrinsics(fx=525.0, fy=520.0, cx=319.5, cy=239.5)
QUANTUM = 0.001  # 16UC1: one millimetre


def rays(camera: PinholeIntrinsics, height: int = HEIGHT,
         width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the x and y of its viewing ray at z = 1."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return (u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy


def plane_depth(camera: PinholeIntrinsics, z0: float, slope_x: float = 0.0, **size: int) -> np.ndarray:
    """Exact depth (m) of the plane z = z0 + slope_x · x."""
    ray_x, _ = rays(camera, **size)
    return z0 / (1.0 - slope_x * ray_x)


def box_scene(camera: PinholeIntrinsics, box: tuple[float, float, float, float], z_box: float,
              z_wall: float) -> tuple[np.ndarray, np.ndarray]:
    """A box whose front face spans x in [x0, x1], y in [y0, y1] at z_box, before a wall at z_wall.

    Returns the exact depth (m) and the exact mask of the face's pixels.
    """
    x0, x1, y0, y1 = box
    ray_x, ray_y = rays(camera)
    face = (ray_x * z_box >= x0) & (ray_x * z_box <= x1) & (ray_y * z_box >= y0) & (ray_y * z_box <= y1)
    return np.where(face, z_box, z_wall), face


def as_16uc1(metres: np.ndarray) -> np.ndarray:
    return np.round(metres * 1000.0).astype(np.uint16)


def footprint(z: float, pixels: float = 1.0) -> float:
    return pixels * z / min(CAMERA.fx, CAMERA.fy)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


BOX = (-0.15, 0.25, -0.10, 0.20)  # front face, metres
Z_BOX, Z_WALL = 1.2, 3.0
FACE_CENTRE = np.array([(BOX[0] + BOX[1]) / 2, (BOX[2] + BOX[3]) / 2, Z_BOX])


def test_fronto_parallel_plane_in_both_encodings() -> None:
    exact = plane_depth(CAMERA, 2.0)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[200:281, 300:341] = True  # rows 200..280, cols 300..340: centre pixel (320, 240)
    expected = np.array([(320 - CAMERA.cx) * 2.0 / CAMERA.fx, (240 - CAMERA.cy) * 2.0 / CAMERA.fy, 2.0])

    for depth in (as_16uc1(exact), exact.astype(np.float32)):
        position = object_position(mask, depth, CAMERA)
        assert position is not None
        assert np.abs(position.centroid - expected).max() <= QUANTUM
        assert position.n_points == mask.sum() and position.valid_fraction == 1.0
    # 5-95 percentile box of 41 columns x 81 rows of pixels at 2 m
    position = object_position(mask, as_16uc1(exact), CAMERA)
    assert position.size[0] == pytest.approx(0.9 * 40 * 2.0 / CAMERA.fx, abs=footprint(2.0))
    assert position.size[1] == pytest.approx(0.9 * 80 * 2.0 / CAMERA.fy, abs=footprint(2.0))
    assert position.size[2] <= QUANTUM
    assert position.distance == pytest.approx(float(np.linalg.norm(expected)), abs=QUANTUM)


def test_box_in_front_of_a_wall() -> None:
    exact, face = box_scene(CAMERA, BOX, Z_BOX, Z_WALL)
    position = object_position(face, as_16uc1(exact), CAMERA)
    assert position is not None
    assert np.abs(position.centroid - FACE_CENTRE).max() <= QUANTUM + footprint(Z_BOX)
    width, height = BOX[1] - BOX[0], BOX[3] - BOX[2]
    assert position.size[0] == pytest.approx(0.9 * width, abs=2 * footprint(Z_BOX))
    assert position.size[1] == pytest.approx(0.9 * height, abs=2 * footprint(Z_BOX))
    assert position.size[2] <= QUANTUM
    assert np.all(position.box_min >= [BOX[0], BOX[2], Z_BOX - QUANTUM])
    assert np.all(position.box_max <= [BOX[1], BOX[3], Z_BOX + QUANTUM])


@pytest.mark.parametrize('spill', [1, 4])
def test_a_mask_that_spills_onto_the_wall_keeps_the_object_depth(spill: int) -> None:
    exact, face = box_scene(CAMERA, BOX, Z_BOX, Z_WALL)
    loose = dilate(face, spill)
    depth = as_16uc1(exact)
    position = object_position(loose, depth, CAMERA)
    assert position is not None
    # The median stays on the face; x and y move by at most the mask error.
    assert abs(position.centroid[2] - Z_BOX) <= QUANTUM
    assert np.abs(position.centroid[:2] - FACE_CENTRE[:2]).max() <= QUANTUM + footprint(Z_BOX, spill + 1)
    # The 95th percentile ignores the wall while the spill is under 5 % of the mask.
    on_wall = (loose & ~face).sum() / loose.sum()
    assert (position.box_max[2] <= Z_BOX + QUANTUM) == (on_wall < 0.05)
    # A mean would be pulled towards the wall: the test scene does exercise the robustness.
    rows, cols = np.nonzero(loose)
    assert depth_in_metres(depth)[rows, cols].mean() > Z_BOX + 0.02


def test_tilted_plane() -> None:
    slope = math.tan(math.radians(30))
    exact = plane_depth(CAMERA, 2.0, slope_x=slope)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[190:291, 270:371] = True  # centred on the principal point (319.5, 239.5) to within half a pixel
    position = object_position(mask, as_16uc1(exact), CAMERA)
    assert position is not None
    # Along a row x and z increase with u, so the median point is the plane's point on the optical axis.
    z_error = QUANTUM + slope * footprint(2.0)
    assert abs(position.centroid[2] - 2.0) <= z_error
    assert abs(position.centroid[0]) <= footprint(2.0) + z_error
    assert abs(position.centroid[1]) <= footprint(2.0) + z_error
    assert position.size[2] == pytest.approx(slope * position.size[0], rel=0.02)


def test_holes_zero_nan_and_inf_are_skipped() -> None:
    exact, face = box_scene(CAMERA, BOX, Z_BOX, Z_WALL)
    holes = np.random.default_rng(0).random(exact.shape) < 0.4
    millimetres = as_16uc1(exact)
    millimetres[holes] = 0
    metres = exact.astype(np.float32)
    metres[holes] = np.nan
    metres[holes & (np.arange(WIDTH) % 2 == 0)] = np.inf
    metres[holes & (np.arange(WIDTH) % 3 == 0)] = 0.0
    for depth in (millimetres, metres):
        position = object_position(face, depth, CAMERA)
        assert position is not None
        assert position.n_points == int((face & ~holes).sum())
        assert position.valid_fraction == pytest.approx(1 - holes[face].mean())
        assert np.abs(position.centroid - FACE_CENTRE).max() <= QUANTUM + footprint(Z_BOX)


def test_too_few_valid_pixels_give_no_position() -> None:
    exact, face = box_scene(CAMERA, BOX, Z_BOX, Z_WALL)
    depth = as_16uc1(exact)
    depth[face] = 0
    rows, cols = np.nonzero(face)
    depth[rows[:19], cols[:19]] = 1200
    assert object_position(face, depth, CAMERA) is None  # 19 < 20 valid pixels
    assert object_position(face, depth, CAMERA, min_points=19) is not None
    assert object_position(np.zeros_like(face), as_16uc1(exact), CAMERA) is None
    # max_depth: the wall is out of range, so a mask on the wall alone has no valid pixel
    assert object_position(~face, as_16uc1(exact), CAMERA, max_depth=2.5) is None


def test_depth_of_another_size_is_matched_by_nearest_resize() -> None:
    exact, face = box_scene(CAMERA, BOX, Z_BOX, Z_WALL)
    camera = PinholeIntrinsics(CAMERA.fx, CAMERA.fy, CAMERA.cx, CAMERA.cy, WIDTH, HEIGHT)
    half = PinholeIntrinsics(CAMERA.fx / 2, CAMERA.fy / 2, CAMERA.cx / 2 - 0.25, CAMERA.cy / 2 - 0.25)
    low, _ = box_scene(half, BOX, Z_BOX, Z_WALL)
    low = low[:HEIGHT // 2, :WIDTH // 2]
    # the full-size mask on the half-size depth, intrinsics of the full-size camera (scaled inside)
    position = object_position(face, as_16uc1(low), camera)
    assert position is not None
    assert np.abs(position.centroid - FACE_CENTRE).max() <= QUANTUM + footprint(Z_BOX, 2)
    # a half-size mask on the full-size depth
    small_mask = resize_mask_nearest(face, HEIGHT // 2, WIDTH // 2)
    position = object_position(small_mask, as_16uc1(exact), CAMERA)
    assert np.abs(position.centroid - FACE_CENTRE).max() <= QUANTUM + footprint(Z_BOX, 2)
    with pytest.raises(ValueError, match='aspect'):
        object_position(face[:, :400], as_16uc1(exact), CAMERA)
    with pytest.raises(ValueError, match='aspect'):
        object_position(face, as_16uc1(exact), PinholeIntrinsics(525, 525, 320, 240, 640, 360))


def test_intrinsics_from_camera_info_k_and_scaling() -> None:
    k = [525.0, 0.0, 319.5, 0.0, 520.0, 239.5, 0.0, 0.0, 1.0]
    camera = PinholeIntrinsics.from_k(k, 640, 480)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (525.0, 520.0, 319.5, 239.5)
    half = camera.for_image(320, 240)
    assert (half.fx, half.fy, half.cx, half.cy) == (262.5, 260.0, 159.5, 119.5)
    assert PinholeIntrinsics.from_k(k).for_image(320, 240) == PinholeIntrinsics.from_k(k)
    assert resize_mask_nearest(np.eye(2, dtype=bool), 4, 4).tolist() == [
        [True, True, False, False], [True, True, False, False],
        [False, False, True, True], [False, False, True, True]]


@pytest.mark.parametrize('call, match', [
    (lambda: PinholeIntrinsics.from_k([1.0] * 8), '9 values'),
    (lambda: PinholeIntrinsics(0.0, 500.0, 320.0, 240.0), 'fx'),
    (lambda: PinholeIntrinsics(500.0, math.nan, 320.0, 240.0), 'fy'),
    (lambda: PinholeIntrinsics(500.0, 500.0, math.inf, 240.0), 'cx'),
    (lambda: PinholeIntrinsics(500.0, 500.0, 320.0, 240.0, 640, 0), 'width/height'),
    (lambda: depth_in_metres(np.zeros((4, 4), dtype=np.int32)), 'uint16'),
    (lambda: depth_in_metres(np.zeros((4, 4, 3), dtype=np.uint16)), 'single-channel'),
    (lambda: depth_in_metres(np.zeros((0, 4), dtype=np.uint16)), 'pixels'),
    (lambda: object_position(np.ones((4, 4, 1), dtype=bool), np.ones((4, 4), dtype=np.uint16), CAMERA),
     'mask'),
    (lambda: object_position(np.ones((4, 4), dtype=bool), np.ones((4, 4), dtype=np.uint16), CAMERA,
                             percentiles=(95, 5)), 'percentiles'),
    (lambda: object_position(np.ones((4, 4), dtype=bool), np.ones((4, 4), dtype=np.uint16), CAMERA,
                             min_points=0), 'min_points'),
])
def test_bad_input_raises_a_clear_value_error(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_depth_conversion() -> None:
    millimetres = np.array([[0, 1, 1500, 65535]], dtype=np.uint16)
    metres = depth_in_metres(millimetres, max_depth=10.0)
    assert np.isnan(metres[0, 0]) and np.isnan(metres[0, 3])
    assert metres[0, 1] == pytest.approx(0.001) and metres[0, 2] == pytest.approx(1.5)
    floats = depth_in_metres(np.array([[-1.0, np.nan, 2.5, np.inf]], dtype=np.float32))
    assert np.isnan(floats[0, [0, 1, 3]]).all() and floats[0, 2] == 2.5
