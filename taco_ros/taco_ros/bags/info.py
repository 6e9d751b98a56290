"""A bag's summary as text (the ``bag info`` command)."""

from __future__ import annotations

import os
from pathlib import Path

from taco_ros.bags.scene import read_scene


def describe_bag(path: str | os.PathLike) -> str:
    """Duration, message count, topics with types and counts, and a synthetic scene's sounds."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        lines = [f'bag       {path}', f'duration  {reader.duration / 1e9:.3f} s',
                 f'messages  {reader.message_count}']
        lines += [f'  {c.topic}  {c.msgtype}  {c.msgcount}' for c in reader.connections]
    scene = read_scene(path)
    if scene:
        lines += [f"  sound: {e['kind']:<7} {e['start']:6.2f}-{e['end']:6.2f} s ({e['source']})"
                  for e in scene['events']]
    return '\n'.join(lines)
