"""taco_node's results read back from a bag: one :class:`WindowResult` per window, joining the
objects, mask and audio_activation messages that share the window's header.

The same reader serves bags recorded from a live node (``bag record``, the demo) and bags written by
``bag process``; the demo draws from it and ``bag compare`` compares two of them.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taco_ros.bags.rosbag import read_messages
from taco_ros.bags.schema import stamp_ns
from taco_ros.bags.topics import NODE_NAME


@dataclass
class ObjectView:
    """One sounding object of a window (fields of taco_msgs/SoundingObject)."""

    mask_value: int
    label: str
    score: float
    confidence: float
    bbox: tuple[int, int, int, int]      # x, y, w, h


@dataclass
class WindowResult:
    """One window as published by taco_node (times in ns of the node's clock)."""

    stamp_ns: int                    # header stamp = the paired camera frame's stamp
    audio_start_ns: int
    audio_end_ns: int
    sounding: bool
    confidence: float
    steps: int
    cold_start: bool
    mode: str
    objects: list[ObjectView] = field(default_factory=list)
    received_ns: int | None = None   # when the result arrived (recorder's log time)
    mask: np.ndarray | None = None   # uint8 [H, W], values = ObjectView.mask_value
    activation: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    factor_index: int | None = None  # k*, the sounding factor (from audio_activation)

    @property
    def label(self) -> str:
        return self.objects[0].label if self.objects else ''

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]

    @property
    def latency_ms(self) -> float | None:
        """Result arrival minus the end of the audio window (the earliest it could be computed)."""
        if self.received_ns is None:
            return None
        return (self.received_ns - self.audio_end_ns) / 1e6


def _window_of(msg: Any, stamp: int, log_ns: int) -> WindowResult:
    return WindowResult(
        stamp_ns=stamp, audio_start_ns=stamp_ns(msg.audio_start),
        audio_end_ns=stamp_ns(msg.audio_end), sounding=bool(msg.sounding),
        confidence=float(msg.confidence), steps=int(msg.solver_steps),
        cold_start=bool(msg.cold_start), mode=str(msg.mode), received_ns=log_ns,
        objects=[ObjectView(int(o.mask_value), str(o.label), float(o.score), float(o.confidence),
                            (int(o.bbox.x_offset), int(o.bbox.y_offset), int(o.bbox.width),
                             int(o.bbox.height)))
                 for o in msg.objects])


def read_windows(path: str | os.PathLike, node_name: str = NODE_NAME) -> list[WindowResult]:
    """The windows of a bag of taco_node outputs, in stamp order.

    Messages of one window share its header; a stamp that repeats (two windows paired with one
    frame) is told apart by its occurrence on each topic, so every window is kept.
    """
    base = '/' + node_name.strip('/')
    topics = {f'{base}/objects': 'objects', f'{base}/mask': 'mask',
              f'{base}/audio_activation': 'activation'}
    windows: dict[tuple[int, int], WindowResult] = {}
    masks: dict[tuple[int, int], np.ndarray] = {}
    activations: dict[tuple[int, int], Any] = {}
    seen: dict[str, Counter[int]] = {kind: Counter() for kind in topics.values()}
    for message in read_messages(path, list(topics)):
        kind = topics[message.topic]
        msg = message.msg
        stamp = stamp_ns(msg.header.stamp)
        key = (stamp, seen[kind][stamp])
        seen[kind][stamp] += 1
        if kind == 'objects':
            windows[key] = _window_of(msg, stamp, message.log_ns)
        elif kind == 'mask':
            masks[key] = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width]
        else:
            activations[key] = msg
    for key, window in windows.items():
        window.mask = masks.get(key)
        if key in activations:
            window.activation = np.asarray(activations[key].activation, np.float32)
            window.factor_index = int(activations[key].factor_index)
    return [windows[k] for k in sorted(windows)]


def read_vocabulary(path: str | os.PathLike, node_name: str = NODE_NAME) -> list[list[str]]:
    """Every vocabulary the bag's label_info announced, in order."""
    topic = '/' + node_name.strip('/') + '/label_info'
    return [[str(c.class_name) for c in m.msg.class_map] for m in read_messages(path, [topic])]
