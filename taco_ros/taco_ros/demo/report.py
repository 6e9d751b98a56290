"""Pictures and tables of a demo run (ROS-free): per-window overlays, a contact sheet, an animated
overlay (GIF, and MP4 when OpenCV can encode it) and the per-window table.

A window is one result of taco_node: the camera frame it was paired with, its mask and sounding
objects, and the activation of the sounding factor over the window's audio tokens (method.md: k*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from taco_ros.bags.results import ObjectView, WindowResult
from taco_ros.overlay import FONT, colour_of, draw_debug

RANDOM_WEIGHTS_BANNER = ('RANDOM WEIGHTS: masks are meaningless until you run '
                         '`taco-ros models fetch`')


@dataclass
class _DrawableResult:
    """The fields of a TacoResult that core.overlay.draw_debug reads."""

    mask: np.ndarray
    objects: list[ObjectView]
    sounding: bool
    confidence: float
    activation: np.ndarray
    mode: str
    random_weights: bool


def overlay(frame: np.ndarray, window: WindowResult, random_weights: bool,
            alpha: float = 0.5, width: int | None = None) -> np.ndarray:
    """The frame with the window's mask, labels, boxes and audio-activation strip drawn on it.

    ``width``: draw at this width (frame, mask and boxes scaled first, so text keeps its size).
    """
    mask = window.mask
    objects = list(window.objects)
    if mask is None or mask.shape != frame.shape[:2]:
        mask, objects = np.zeros(frame.shape[:2], np.uint8), []
    if width is not None and width != frame.shape[1]:
        factor = width / frame.shape[1]
        size = (width, max(1, round(frame.shape[0] * factor)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if factor < 1
                           else cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        objects = [ObjectView(o.mask_value, o.label, o.score, o.confidence,
                              tuple(round(v * factor) for v in o.bbox)) for o in objects]
    return draw_debug(frame, _DrawableResult(mask, objects, window.sounding, window.confidence,
                                             window.activation, window.mode, random_weights), alpha)


def _text_bar(text: str, width: int, height: int, colour: tuple[int, int, int],
              background: tuple[int, int, int] = (20, 20, 20), scale: float = 0.45) -> np.ndarray:
    bar = np.zeros((height, width, 3), np.uint8)
    bar[:] = background
    thickness = 1
    (tw, th), _ = cv2.getTextSize(text, FONT, scale, thickness)
    while tw > width - 8 and scale > 0.25:      # shrink long captions to fit the tile
        scale *= 0.9
        (tw, th), _ = cv2.getTextSize(text, FONT, scale, thickness)
    cv2.putText(bar, text, (4, (height + th) // 2), FONT, scale, colour, thickness, cv2.LINE_AA)
    return bar


def sound_truth_strip(events: Sequence[dict[str, Any]], window: WindowResult, start_ns: int,
                      width: int, height: int) -> np.ndarray:
    """What really sounded during the window (synthetic scenes): a bar per event, coloured by kind."""
    strip = np.full((height, width, 3), 40, np.uint8)
    begin = (window.audio_start_ns - start_ns) / 1e9
    end = (window.audio_end_ns - start_ns) / 1e9
    if end <= begin:
        return strip
    colours = {'speech': (255, 110, 110), 'tone': (110, 170, 255), 'beeps': (255, 220, 90)}
    for event in events:
        left = (max(event['start'], begin) - begin) / (end - begin)
        right = (min(event['end'], end) - begin) / (end - begin)
        if right > left:
            cv2.rectangle(strip, (int(left * width), 0), (int(right * width) - 1, height - 1),
                          colours.get(event['kind'], (200, 200, 200)), thickness=-1)
    return strip


def sound_at(events: Sequence[dict[str, Any]], begin: float, end: float) -> str:
    """Kinds of the events overlapping [begin, end) seconds, '-' when silent."""
    kinds = [e['kind'] for e in events if e['start'] < end and e['end'] > begin]
    return '+'.join(kinds) if kinds else '-'


def window_caption(window: WindowResult, start_ns: int) -> str:
    t = (window.stamp_ns - start_ns) / 1e9
    what = ' + '.join(window.labels) or ('nothing sounding' if not window.sounding else '?')
    return f't={t:5.2f}s  {what}  conf {window.confidence:.2f}  {window.steps} steps'


def contact_sheet(frames: Sequence[np.ndarray], windows: Sequence[WindowResult], start_ns: int,
                  random_weights: bool, title: str, events: Sequence[dict[str, Any]] | None = None,
                  columns: int = 4, tile_width: int = 320, max_tiles: int = 16) -> np.ndarray:
    """Grid of window overlays with captions (and the true sounds of a synthetic scene)."""
    if len(frames) != len(windows):
        raise ValueError('one frame per window is needed')
    if not windows:
        raise ValueError('no windows to draw')
    picks = np.unique(np.linspace(0, len(windows) - 1, min(max_tiles, len(windows))).round()
                      .astype(int))
    tiles = []
    for index in picks:
        window = windows[index]
        tile = overlay(frames[index], window, random_weights, width=tile_width)
        parts = [tile, _text_bar(window_caption(window, start_ns), tile_width, 20,
                                 (235, 235, 235))]
        if events is not None:
            parts.append(sound_truth_strip(events, window, start_ns, tile_width, 8))
        tiles.append(np.vstack(parts))
    tile_h = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.zeros((tile_h - t.shape[0], tile_width, 3), np.uint8)]) for t in tiles]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    blank = np.zeros_like(tiles[0])
    grid_rows = [np.hstack(tiles[r * columns:(r + 1) * columns]
                           + [blank] * (columns - len(tiles[r * columns:(r + 1) * columns])))
                 for r in range(rows)]
    sheet = np.vstack(grid_rows)
    width = sheet.shape[1]
    header = [_text_bar(title, width, 28, (255, 255, 255), scale=0.6)]
    if random_weights:
        header.append(_text_bar(RANDOM_WEIGHTS_BANNER, width, 28, (255, 255, 255),
                                background=(170, 0, 0), scale=0.6))
    if events is not None:
        header.append(_text_bar('bar under each tile: true sound in the window (red speech, '
                                'blue tone, yellow beeps)', width, 20, (200, 200, 200)))
    return np.vstack([*header, sheet])


def animation_frames(frames: Sequence[np.ndarray], windows: Sequence[WindowResult], start_ns: int,
                     random_weights: bool, width: int = 480) -> list[np.ndarray]:
    """One overlay per window, captioned, for the GIF/MP4."""
    images = []
    for frame, window in zip(frames, windows, strict=True):
        parts = [overlay(frame, window, random_weights, width=width),
                 _text_bar(window_caption(window, start_ns), width, 22, (235, 235, 235))]
        if random_weights:
            parts.append(_text_bar(RANDOM_WEIGHTS_BANNER, width, 22, (255, 255, 255),
                                   background=(170, 0, 0)))
        images.append(np.vstack(parts))
    return images


def write_gif(path: str | Path, images: Sequence[np.ndarray], seconds_per_image: float) -> Path:
    """Animated GIF (Pillow), looping forever."""
    from PIL import Image

    if not images:
        raise ValueError('no images for the GIF')
    path = Path(path)
    pictures = [Image.fromarray(np.ascontiguousarray(i)) for i in images]
    pictures[0].save(path, save_all=True, append_images=pictures[1:],
                     duration=max(20, round(seconds_per_image * 1000)), loop=0, optimize=False)
    return path


def write_mp4(path: str | Path, images: Sequence[np.ndarray], fps: float) -> Path | None:
    """MP4 (OpenCV's mp4v encoder); None when this OpenCV build cannot write it."""
    if not images:
        raise ValueError('no images for the video')
    path = Path(path)
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), float(fps), (width, height))
    if not writer.isOpened():
        return None
    try:
        for image in images:
            writer.write(np.ascontiguousarray(image[..., ::-1]))
    finally:
        writer.release()
    return path if path.is_file() and path.stat().st_size > 0 else None


def write_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f'could not write {path}')
    return path


def window_table(windows: Sequence[WindowResult], start_ns: int,
                 events: Sequence[dict[str, Any]] | None = None) -> str:
    """Fixed-width table: one row per window (time, labels of its objects, confidence, steps,
    latency)."""
    header = ['time s', 'label', 'conf', 'steps', 'cold', 'latency ms']
    if events is not None:
        header.append('true sound')
    rows = [header]
    for window in windows:
        latency = window.latency_ms
        row = [f'{(window.stamp_ns - start_ns) / 1e9:.2f}',
               ' + '.join(window.labels) or ('(nothing)' if not window.sounding else '?'),
               f'{window.confidence:.2f}', str(window.steps), 'yes' if window.cold_start else '',
               '' if latency is None else f'{latency:.0f}']
        if events is not None:
            row.append(sound_at(events, (window.audio_start_ns - start_ns) / 1e9,
                                (window.audio_end_ns - start_ns) / 1e9))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def mask_colour_legend(objects: Sequence[ObjectView]) -> list[tuple[str, tuple[int, int, int]]]:
    """(label, RGB colour) of each object as drawn in the overlays."""
    return [(o.label, colour_of(o.mask_value)) for o in objects]
