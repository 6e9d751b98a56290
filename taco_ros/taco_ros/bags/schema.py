"""Message definitions for reading and writing bags without a ROS install: a rosbags typestore with
ROS 2 Jazzy's standard messages plus taco_msgs, and header/stamp helpers."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any


def taco_msgs_dir() -> Path:
    """Directory holding taco_msgs' .msg files: the installed share dir, else the source tree."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        candidate = Path(prefix) / 'share' / 'taco_msgs' / 'msg'
        if prefix and candidate.is_dir():
            return candidate
    source = Path(__file__).resolve().parents[3] / 'taco_msgs' / 'msg'
    if source.is_dir():
        return source
    raise FileNotFoundError(
        'taco_msgs message definitions not found: source install/setup.bash (AMENT_PREFIX_PATH) '
        'or run from a taco_ros checkout')


@functools.cache
def typestore() -> Any:
    """rosbags Typestore: ROS 2 Jazzy's standard messages plus taco_msgs (from its .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for path in sorted(taco_msgs_dir().glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'taco_msgs/msg/{path.stem}'))
    store.register(types)
    return store


def header_first(msgtype: str) -> bool:
    """Whether the CDR of ``msgtype`` starts with a std_msgs/Header (stamp at bytes 4..12)."""
    fields = typestore().fielddefs.get(msgtype)
    if not fields or not fields[1]:
        return False
    name, (_, ref) = fields[1][0]
    return name == 'header' and ref == 'std_msgs/msg/Header'


def ros_time(ns: int) -> Any:
    """rosbags builtin_interfaces/Time of integer nanoseconds."""
    from rosbags.typesys.stores.ros2_jazzy import builtin_interfaces__msg__Time as Time
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def header(ns: int, frame_id: str) -> Any:
    """rosbags std_msgs/Header."""
    from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__Header as Header
    return Header(stamp=ros_time(ns), frame_id=frame_id)


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rosbags or rclpy) → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
