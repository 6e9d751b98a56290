"""Synthetic depth scenes for the taco_node depth tests: a plane at a known distance in 16UC1 or 32FC1,
its CameraInfo, a camera stream that sends both beside each frame, and the position each published
object should have (computed here with numpy from the published mask, independently of the node)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from node_fixtures import image_msg, make_frame, stamp_msg


@dataclass(frozen=True)
class PlaneScene:
    """A fronto-parallel plane ``z`` metres away seen by a ``width`` x ``height`` depth camera."""

    z: float
    encoding: str = '16UC1'
    width: int = 320
    height: int = 240
    fx: float = 200.0
    fy: float = 210.0

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0 + 3.0     # off centre: a sign error would show

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0 - 2.0

    def values(self) -> np.ndarray:
        """The depth image as the node receives it (mm for 16UC1, m for 32FC1)."""
        if self.encoding == '16UC1':
            return np.full((self.height, self.width), round(self.z * 1000), np.uint16)
        return np.full((self.height, self.width), self.z, np.float32)

    def metres(self) -> float:
        """The depth the node reads back (one quantum of the encoding)."""
        if self.encoding == '16UC1':
            return float(np.float32(round(self.z * 1000)) * np.float32(0.001))
        return float(np.float32(self.z))

    def depth_msg(self, stamp: float, frame_id: str = 'camera') -> Any:
        from sensor_msgs.msg import Image

        values = self.values()
        msg = Image(height=self.height, width=self.width, encoding=self.encoding, is_bigendian=0,
                    step=self.width * values.dtype.itemsize)
        msg.header.stamp, msg.header.frame_id = stamp_msg(stamp), frame_id
        msg.data = values.astype(values.dtype.newbyteorder('<')).tobytes()
        return msg

    def info_msg(self, stamp: float, frame_id: str = 'camera') -> Any:
        from sensor_msgs.msg import CameraInfo

        msg = CameraInfo(width=self.width, height=self.height)
        msg.header.stamp, msg.header.frame_id = stamp_msg(stamp), frame_id
        msg.k = [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]
        return msg

    def expected(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(median point, 5-95 percentile size) of ``mask`` (bool, frame-sized) on this plane;
        None when the mask is empty."""
        rows = np.minimum(((np.arange(self.height) + 0.5) * mask.shape[0] / self.height).astype(int),
                          mask.shape[0] - 1)
        cols = np.minimum(((np.arange(self.width) + 0.5) * mask.shape[1] / self.width).astype(int),
                          mask.shape[1] - 1)
        v, u = np.nonzero(mask[rows][:, cols])
        if v.size == 0:
            return None
        z = self.metres()
        points = np.stack([(u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy,
                           np.full(u.shape, z)], axis=1)
        size = np.percentile(points, 95, axis=0) - np.percentile(points, 5, axis=0)
        return np.median(points, axis=0), size


def camera_with_depth(scene: PlaneScene | None, depth_pub: Any, info_pub: Any,
                      frame: np.ndarray | None = None) -> Any:
    """A StreamPublisher ``make_image`` that publishes the scene's depth and CameraInfo, stamped
    like the frame, just before each frame (scene None: frames only)."""
    frame = make_frame() if frame is None else frame

    def make_image(_index: int, stamp: float) -> Any:
        if scene is not None:
            info_pub.publish(scene.info_msg(stamp))
            depth_pub.publish(scene.depth_msg(stamp))
        return image_msg(frame, stamp)
    return make_image


def open_the_sounding_gate(node: Any) -> None:
    """Random weights seldom reach the sounding threshold, and a window that is not sounding has no
    object to place: lower the node's pipeline threshold to 0 (its real solver config, as the
    pipeline tests do) so that every window has objects and masks."""
    steps = int(node._p['solver_max_steps'])
    with node._pipeline_lock:   # between windows
        node._pipeline.update(solver_overrides={'max_steps': steps, 'sounding_threshold': 0.0})


def mask_pixels(msg: Any) -> np.ndarray:
    """A mono8 ~/mask message as a [H, W] uint8 array."""
    assert msg.encoding == 'mono8', msg.encoding
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    return data[:, :msg.width]


def stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


def placed_objects(masks: list[Any], arrays: list[Any]) -> list[tuple[Any, np.ndarray]]:
    """(SoundingObject, its bool mask) of every object of every window whose mask was received."""
    by_stamp = {stamp_key(m.header): mask_pixels(m) for m in masks}
    found = []
    for array in arrays:
        mask = by_stamp.get(stamp_key(array.header))
        if mask is None:
            continue
        found += [(obj, mask == obj.mask_value) for obj in array.objects]
    return found
