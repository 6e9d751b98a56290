"""Human-facing debug image: the camera frame with the sounding-object mask blended in, each object's
label and score, and a strip showing the audio activation of the sounding factor over the window.

Works on any object with the fields of :class:`taco_ros.core.pipeline.TacoResult` that it reads
(mask, objects, sounding, confidence, activation, random_weights, mode), so it stays free of torch.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

# Distinct, saturated RGB colours for mask values 1, 2, ... (cycled).
PALETTE = np.array([
    (255, 64, 64), (64, 200, 255), (255, 200, 0), (160, 96, 255), (0, 220, 120),
    (255, 128, 200), (255, 140, 0), (0, 160, 160),
], dtype=np.uint8)

FONT = cv2.FONT_HERSHEY_SIMPLEX


def colour_of(mask_value: int) -> tuple[int, int, int]:
    """RGB colour used for mask value ``mask_value`` (≥ 1)."""
    r, g, b = PALETTE[(int(mask_value) - 1) % len(PALETTE)]
    return int(r), int(g), int(b)


def blend_mask(frame: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """Frame [H, W, 3] uint8 with each mask value v > 0 tinted in colour_of(v) at opacity alpha."""
    if frame.shape[:2] != mask.shape:
        raise ValueError(f'mask {mask.shape} and frame {frame.shape[:2]} differ in size')
    out = frame.copy()
    for value in np.unique(mask):
        if value == 0:
            continue
        region = mask == value
        tint = np.array(colour_of(int(value)), np.float32)
        out[region] = (out[region].astype(np.float32) * (1.0 - alpha) + tint * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour_of(int(value)), thickness=2)
    return out


def _fit_scale(text: str, width: int, scale: float, thickness: int) -> float:
    """The largest scale ≤ ``scale`` at which ``text`` fits in ``width`` pixels (at least 0.25)."""
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    return max(0.25, scale * min(1.0, (width - 8) / max(tw, 1)))


def _text_scale(width: int) -> tuple[float, int]:
    scale = max(0.4, min(1.2, width / 900.0))
    return scale, max(1, round(scale * 2))


def put_label(image: np.ndarray, text: str, origin: tuple[int, int],
              colour: tuple[int, int, int], scale: float, thickness: int,
              boxed: bool = True) -> None:
    """Text (on a dark box unless ``boxed`` is False) whose top-left corner is ``origin``, kept
    inside the image."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    x = int(np.clip(origin[0], 0, max(0, image.shape[1] - tw - 4)))
    y = int(np.clip(origin[1], 0, max(0, image.shape[0] - th - base - 4)))
    if boxed:
        cv2.rectangle(image, (x, y), (x + tw + 4, y + th + base + 4), (0, 0, 0), thickness=-1)
    cv2.putText(image, text, (x + 2, y + th + 2), FONT, scale, colour, thickness, cv2.LINE_AA)


def activation_strip(activation: np.ndarray, width: int, height: int,
                     colour: tuple[int, int, int]) -> np.ndarray:
    """[height, width, 3] bar chart of activations in [0, 1], one bar per audio token, time left → right."""
    strip = np.full((height, width, 3), 24, np.uint8)
    values = np.clip(np.nan_to_num(np.asarray(activation, np.float32)), 0.0, 1.0)
    if values.size == 0:
        return strip
    edges = np.linspace(0, width, values.size + 1).round().astype(int)
    for value, left, right in zip(values, edges[:-1], edges[1:], strict=True):
        top = height - 1 - round(float(value) * (height - 2))
        cv2.rectangle(strip, (int(left), int(top)), (max(int(left), int(right) - 2), height - 1),
                      colour, thickness=-1)
    return strip


def draw_debug(frame: np.ndarray, result: Any, alpha: float = 0.5) -> np.ndarray:
    """The debug view of one window as an RGB uint8 image of the frame's size.

    frame: RGB uint8 [H, W, 3]; result: a TacoResult (mask the frame's size).
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f'frame must be RGB uint8 [H, W, 3], got {frame.dtype} {frame.shape}')
    height, width = frame.shape[:2]
    image = blend_mask(frame, result.mask, alpha)
    scale, thickness = _text_scale(width)
    for obj in result.objects:
        x, y, w, h = obj.bbox
        colour = colour_of(obj.mask_value)
        cv2.rectangle(image, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), colour, thickness)
        text = f'{obj.label} {obj.score:.2f}'
        (_, th), base = cv2.getTextSize(text, FONT, scale, thickness)
        # Above the box when there is room, so the label does not hide the object.
        top = int(y) - th - base - 4 if y >= th + base + 4 else int(y)
        put_label(image, text, (int(x), top), colour, scale, thickness)
    random_weights = bool(getattr(result, 'random_weights', False))
    banner = max(18, height // 12) if random_weights else 0
    if not result.objects:
        put_label(image, f'nothing sounding ({result.mode})', (4, banner + 4), (220, 220, 220), scale,
                  thickness)
    strip_height = max(16, height // 10)
    colour = colour_of(result.objects[0].mask_value) if result.objects else (150, 150, 150)
    strip = activation_strip(result.activation, width, strip_height, colour)
    image[height - strip_height:] = (
        image[height - strip_height:].astype(np.float32) * 0.3 + strip.astype(np.float32) * 0.7
    ).astype(np.uint8)
    put_label(image, f'audio activation  conf {result.confidence:.2f}',
              (4, height - strip_height - int(30 * scale) - 6), (230, 230, 230), scale * 0.8,
              max(1, thickness - 1))
    if random_weights:
        image[:banner] = (image[:banner].astype(np.float32) * 0.3
                          + np.array((200, 0, 0), np.float32) * 0.7).astype(np.uint8)
        text = 'RANDOM WEIGHTS - output is meaningless'
        fitted = _fit_scale(text, width, scale, 1)
        put_label(image, text, (4, max(0, banner // 2 - 8)), (255, 255, 255), fitted, 1,
                  boxed=False)
    return image
