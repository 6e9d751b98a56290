"""Mask decision for the sounding factor: hand-built semantic maps and coarse activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taco_ros.core.masks import (
    DEFAULT_MASK_THRESHOLD,
    bounding_box,
    clean_components,
    coarse_mask,
    coarse_score_map,
    decide_mask,
)


def test_empty_map_gives_empty_mask_and_zero_box() -> None:
    decision = decide_mask(np.zeros((48, 64), dtype=np.float32))
    assert decision.empty
    assert decision.area == 0
    assert decision.box == (0, 0, 0, 0)
    assert decision.score == 0.0
    assert decision.mask.shape == (48, 64) and decision.mask.dtype == bool


def test_map_below_threshold_everywhere_is_empty() -> None:
    # An absolute threshold: a uniformly weak map must NOT become a mask (min-max would make one).
    weak = np.full((30, 30), DEFAULT_MASK_THRESHOLD - 0.05, dtype=np.float32)
    weak[10:20, 10:20] = DEFAULT_MASK_THRESHOLD - 0.01
    assert decide_mask(weak).empty


def test_one_blob_gives_that_blob_and_its_box() -> None:
    score = np.full((60, 80), 0.1, dtype=np.float32)
    score[12:30, 40:71] = 0.9  # rows 12..29, cols 40..70
    decision = decide_mask(torch.from_numpy(score))
    expected = np.zeros_like(score, dtype=bool)
    expected[12:30, 40:71] = True
    np.testing.assert_array_equal(decision.mask, expected)
    assert decision.box == (40, 12, 31, 18)
    assert decision.area == 18 * 31
    assert decision.score == pytest.approx(0.9)


def test_threshold_is_strict_and_configurable() -> None:
    score = np.array([[0.2, 0.5, 0.7]], dtype=np.float32)
    assert decide_mask(score).mask.tolist() == [[False, False, True]]
    assert decide_mask(score, threshold=0.1).mask.tolist() == [[True, True, True]]


def test_component_cleanup_drops_speckles_and_keeps_largest() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:12, 2:12] = True     # 100 px
    mask[20:26, 20:26] = True   # 36 px
    mask[35, 35] = True         # 1 px speckle
    mask[36, 36] = True         # diagonal neighbour: same 8-connected component (2 px)
    np.testing.assert_array_equal(clean_components(mask), mask)
    dropped = clean_components(mask, min_area_fraction=10 / mask.size)
    assert dropped.sum() == 136 and not dropped[35, 35]
    largest = clean_components(mask, largest_only=True)
    assert largest.sum() == 100 and largest[2:12, 2:12].all()
    decision = decide_mask(mask.astype(np.float32), largest_only=True)
    assert decision.box == (2, 2, 10, 10)


def test_bounding_box_of_single_pixel() -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[3, 6] = True
    assert bounding_box(mask) == (6, 3, 1, 1)


def test_coarse_map_upsamples_token_grid_bicubic() -> None:
    activation = torch.zeros(576)
    grid = activation.view(24, 24)
    grid[6:12, 12:24] = 1.0  # right half of rows 6..11
    score = coarse_score_map(activation, (240, 240))
    assert score.shape == (240, 240) and score.dtype == np.float32
    assert 0.0 <= score.min() and score.max() <= 1.0  # bicubic overshoot clipped
    # align_corners=True maps token i to pixel i·239/23; the blob centre stays on.
    assert score[90, 200] > 0.9 and score[200, 50] < 0.1
    decision = coarse_mask(activation, (240, 240))
    x, y, w, h = decision.box
    assert 110 <= x <= 125 and x + w == 240
    assert 55 <= y <= 65 and 110 <= y + h <= 125


def test_coarse_map_constant_grid_is_constant_and_rectangular_grid_needs_shape() -> None:
    score = coarse_score_map(np.full((24, 24), 0.3), (50, 70))
    np.testing.assert_allclose(score, 0.3, atol=1e-6)
    assert coarse_mask(np.full(576, 0.3), (50, 70)).empty
    with pytest.raises(ValueError, match='square'):
        coarse_score_map(np.zeros(24 * 18), (10, 10))
    assert coarse_score_map(np.zeros(24 * 18), (10, 10), grid=(18, 24)).shape == (10, 10)


@pytest.mark.parametrize('bad', [np.zeros((2, 3, 4)), np.zeros((0, 5)), np.array([[np.nan]])])
def test_bad_maps_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        decide_mask(bad)
