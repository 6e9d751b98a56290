"""The demo's pictures of a result bag: contact sheet PNG, overlay GIF (and MP4) and the per-window
table, drawn on the camera frames each window was paired with (ROS-free; frames come from the
input bag)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taco_ros import bags
from taco_ros.bags.results import WindowResult
from taco_ros.demo import report


@dataclass
class Pictures:
    contact_sheet: str
    gif: str
    mp4: str | None
    table_file: str
    table: str          # the table's text (also printed by the demo)


def bag_frames(bag: str | os.PathLike, image_topic: str, stamps: set[int]) -> dict[int, np.ndarray]:
    """{header stamp: RGB frame} of the bag's camera frames whose stamp is in ``stamps``."""
    frames: dict[int, np.ndarray] = {}
    for message in bags.read_messages(bag, [image_topic]):
        stamp = bags.stamp_ns(message.msg.header.stamp)
        if stamp in stamps and stamp not in frames:
            frames[stamp] = bags.frame_from_message(message.msg)
    return frames


def played_frames(bag: str | os.PathLike, image_topic: str, stamps_ns: list[int],
                  wanted: set[int]) -> dict[int, np.ndarray]:
    """{played stamp: RGB frame} for the played (re-stamped) stamps in ``wanted``, the bag's frames
    in order, pass after pass."""
    frames: dict[int, np.ndarray] = {}
    per_pass = bags.bag_topics(bag)[image_topic][1]
    for index, message in enumerate(bags.read_messages(bag, [image_topic])):
        for played in stamps_ns[index::per_pass]:
            if played in wanted:
                frames[played] = bags.frame_from_message(message.msg)
    return frames


def first_frame_offset(bag: str | os.PathLike, image_topic: str) -> int:
    """ns from the bag's first message to its first camera frame (the time axis of the report)."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(bag)) as reader:
        start = reader.start_time
    first = next(bags.read_messages(bag, [image_topic]), None)
    return bags.stamp_ns(first.msg.header.stamp) - start if first else 0


def write_pictures(out: Path, windows: Sequence[WindowResult], frames: dict[int, np.ndarray],
                   start_ns: int, *, random_weights: bool, title: str,
                   events: Sequence[dict[str, Any]] | None = None,
                   seconds_per_window: float | None = None) -> Pictures:
    """Contact sheet, GIF/MP4 of the windows whose frame is in ``frames``, and the table of all.

    ``seconds_per_window``: display time of one window in the animations (default: the median
    spacing of the windows, i.e. real time).
    """
    if not windows:
        raise ValueError('no windows to draw')
    shown = [w for w in windows if w.stamp_ns in frames]
    if not shown:
        raise ValueError('none of the windows has its camera frame in the bag')
    out.mkdir(parents=True, exist_ok=True)
    images = [frames[w.stamp_ns] for w in shown]
    sheet = report.contact_sheet(images, shown, start_ns, random_weights, title, events)
    sheet_path = report.write_png(out / 'contact_sheet.png', sheet)
    animation = report.animation_frames(images, shown, start_ns, random_weights)
    if seconds_per_window is None:
        spacing = np.diff([w.stamp_ns for w in shown])
        seconds_per_window = float(np.median(spacing)) / 1e9 if spacing.size else 1.0
    gif = report.write_gif(out / 'overlay.gif', animation, seconds_per_window)
    mp4 = report.write_mp4(out / 'overlay.mp4', animation, 1.0 / max(seconds_per_window, 1e-3))
    table = report.window_table(windows, start_ns, events)
    (out / 'windows.txt').write_text(table + '\n')
    return Pictures(str(sheet_path), str(gif), str(mp4) if mp4 else None,
                    str(out / 'windows.txt'), table)


def replayed_windows(results_bag: str | os.PathLike,
                     node_name: str = bags.NODE_NAME) -> list[WindowResult]:
    """The windows of a ``bag process`` result bag, without latencies: its log times are bag
    times at which a window became due, not arrival times."""
    windows = bags.read_windows(results_bag, node_name)
    for window in windows:
        window.received_ns = None
    return windows


def pictures_of_bag(out: Path, input_bag: str | os.PathLike, results_bag: str | os.PathLike,
                    image_topic: str, *, random_weights: bool, title: str,
                    node_name: str = bags.NODE_NAME) -> Pictures:
    """The pictures of ``bag process`` output: frames by stamp from the input bag, time axis from
    the input bag's start, true sounds when the input is a synthetic scene."""
    from rosbags.rosbag2 import Reader

    windows = replayed_windows(results_bag, node_name)
    frames = bag_frames(input_bag, image_topic, {w.stamp_ns for w in windows})
    with Reader(Path(input_bag)) as reader:
        start_ns = reader.start_time
    scene = bags.read_scene(input_bag)
    return write_pictures(out, windows, frames, start_ns, random_weights=random_weights,
                          title=title, events=scene['events'] if scene else None)
