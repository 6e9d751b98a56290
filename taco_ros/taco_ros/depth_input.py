"""taco_node's optional depth input: where each sounding object is in 3D.

With ``use_depth`` (applied at activate) the node subscribes to ``depth`` (``sensor_msgs/Image``
aligned to the colour camera: 16UC1 in millimetres or 32FC1 in metres, REP 118) and
``depth_camera_info`` (its calibration). The callbacks check a message's declared sizes against
its data and ``max_image_pixels`` without copying its pixels, then store it by stamp (bounded in
count and bytes); a message that fails a check is refused, counted and reported (throttled).

For each window the depth image nearest the paired frame's stamp and the depth CameraInfo nearest
that image's stamp (both within ``pair_tolerance``) give every object a position: its pixels in
the window's mask, resized to the depth image (nearest pixel), back-projected with the depth
CameraInfo's K (:func:`taco_ros.core.geometry.object_position`). The depth image may have another
size than the colour frame (same aspect ratio): K is the depth image's own.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from taco_ros import camera_encodings, params
from taco_ros import conversions as conv
from taco_ros.core.contract import TacoResult
from taco_ros.core.geometry import ObjectPosition, PinholeIntrinsics, depth_in_metres, object_position
from taco_ros.node_inputs import THROTTLE_SEC, CameraInfoStore, StampedStore

# encoding → numpy sample type (REP 118: 16UC1 millimetres, 32FC1 metres)
DEPTH_ENCODINGS = {'16UC1': np.dtype(np.uint16), '32FC1': np.dtype(np.float32)}
MAX_DEPTH_IMAGES = 64           # 2 s of a 30 Hz camera: windows are paired with recent frames
MAX_DEPTH_BYTES = 256 << 20     # 64 images of 1280x720 32FC1 would be 236 MB


def _depth_view(msg: Image, max_pixels: int | None = None) -> np.ndarray:
    """Checked, zero-copy [H, W] view of a depth Image's values (in the message's byte order)."""
    dtype = DEPTH_ENCODINGS.get(msg.encoding)
    if dtype is None:
        raise ValueError(f'depth encoding {msg.encoding!r} is not one of {", ".join(DEPTH_ENCODINGS)}')
    height, width = int(msg.height), int(msg.width)
    if max_pixels is not None and height * width > max_pixels:
        raise conv.InputTooLargeError(f'depth image {width}x{height} has {height * width} pixels, '
                                      f'more than max_image_pixels = {max_pixels}')
    dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    return camera_encodings.strided_view(height, width, int(msg.step), msg.data, dtype,
                                         encoding=msg.encoding, what='depth')[..., 0]


def check_depth_image(msg: Image, max_pixels: int) -> None:
    """Raise ValueError when a depth Image cannot be read (sizes checked, nothing copied)."""
    _depth_view(msg, max_pixels)


def depth_array(msg: Image) -> np.ndarray:
    """A checked depth Image's values as a native-endian [H, W] uint16 or float32 copy."""
    view = _depth_view(msg)
    return view.astype(view.dtype.newbyteorder('='), copy=True)


def intrinsics_of(info: CameraInfo) -> PinholeIntrinsics:
    """The pinhole intrinsics of a CameraInfo (K and the image size it describes)."""
    return PinholeIntrinsics.from_k(list(info.k), int(info.width), int(info.height))


class DepthInput:
    """Depth subscriptions, the stored depth images and CameraInfos, and the objects' positions.

    ``node`` is the TacoNode: its parameters, counters, logger, input callback group and the list
    of activation subscriptions (destroyed at deactivate with the others)."""

    def __init__(self, node: Any) -> None:
        self._node = node
        self._lock = threading.Lock()
        # (stamp used for pairing, message): an unset header stamp is replaced by the receipt time
        self._images: StampedStore[tuple[float, Image]] = StampedStore(
            MAX_DEPTH_IMAGES, MAX_DEPTH_BYTES, lambda item: len(item[1].data))
        self._infos = CameraInfoStore()

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._infos.clear()

    def subscribe(self) -> None:
        """Subscribe to depth and depth_camera_info when use_depth is set (at activate)."""
        node = self._node
        if not node._p['use_depth']:
            return
        qos = params.qos_profile(node._p['image_qos'], node._p['image_qos_depth'])
        for msg_type, topic, callback in ((Image, params.TOPIC_DEPTH, self._on_depth),
                                          (CameraInfo, params.TOPIC_DEPTH_CAMERA_INFO, self._on_info)):
            node._input_subs.append(node.create_subscription(
                msg_type, topic, callback, qos, callback_group=node._input_group))
        node.get_logger().info(f'depth: {node.resolve_topic_name(params.TOPIC_DEPTH)} and '
                               f'{node.resolve_topic_name(params.TOPIC_DEPTH_CAMERA_INFO)}')

    # ------------------------------------------------------------------ callbacks
    def _refuse(self, exc: ValueError) -> None:
        key = 'oversized_depth' if isinstance(exc, conv.InputTooLargeError) else 'bad_depth'
        self._node._stats.problem(key, f'depth: {exc}')
        self._node.get_logger().warning(f'dropping depth message: {exc}',
                                        throttle_duration_sec=THROTTLE_SEC)

    def _stamp(self, header: Any) -> float:
        stamp = conv.stamp_to_sec(header.stamp)
        return stamp if stamp > 0.0 else self._node._now()   # unset: paired by receipt time

    def _on_depth(self, msg: Image) -> None:
        self._node._stats.add('depth_images_received')
        try:
            check_depth_image(msg, self._node._p['max_image_pixels'])
        except ValueError as exc:
            self._refuse(exc)
            return
        stamp = self._stamp(msg.header)
        with self._lock:
            self._images.add(stamp, (stamp, msg))

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            intrinsics_of(msg)
        except ValueError as exc:
            self._refuse(ValueError(f'depth_camera_info: {exc}'))
            return
        with self._lock:
            self._infos.add(self._stamp(msg.header), msg)

    # ------------------------------------------------------------------ per window
    def locate(self, result: TacoResult, frame_stamp: float) -> list[ObjectPosition | None]:
        """Each object's position (None: no depth near the frame, or too few valid pixels)."""
        positions: list[ObjectPosition | None] = [None] * len(result.objects)
        p = self._node._p
        if not p['use_depth']:
            return positions
        with self._lock:
            stamped = self._images.nearest(frame_stamp, p['pair_tolerance'])
            info = (self._infos.nearest(stamped[0], p['pair_tolerance'])
                    if stamped is not None else None)
        if stamped is None or info is None:
            self._node._stats.add('windows_without_depth')
            return positions
        if not result.objects:
            return positions
        try:
            positions = self._positions(result, depth_array(stamped[1]), intrinsics_of(info))
        except ValueError as exc:    # a depth image that is not a resize of the frame
            self._node._stats.add('windows_without_depth')
            self._node._stats.problem('unusable_depth', f'depth: {exc}')
            self._node.get_logger().warning(f'no 3D positions for this window: {exc}',
                                            throttle_duration_sec=THROTTLE_SEC)
            return [None] * len(result.objects)
        self._node._stats.add('objects_without_position', positions.count(None))
        return positions

    def _positions(self, result: TacoResult, depth: np.ndarray,
                   intrinsics: PinholeIntrinsics) -> list[ObjectPosition | None]:
        p = self._node._p
        metres = depth_in_metres(depth, p['depth_max'])
        with np.errstate(invalid='ignore'):
            metres[metres < p['depth_min']] = np.nan
        mask = np.asarray(result.mask)
        positions = [object_position(mask == obj.mask_value, metres, intrinsics,
                                     min_points=int(p['depth_min_points']))
                     for obj in result.objects]
        return positions
