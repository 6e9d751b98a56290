"""rosbag2 files without a ROS install: write camera + microphone bags, read any bag.

Bags are written with ``rosbags`` in the standard rosbag2 layout (sqlite3 or MCAP storage, metadata
version 9) with standard message types (sensor_msgs/Image or CompressedImage) and taco_msgs/AudioChunk,
so ``ros2 bag play`` replays them on a full ROS install that has taco_msgs built.

Timing convention of the written bags:
- camera frame i: header.stamp = start + t_i, logged at its stamp (a driver publishes at once);
- audio block k: header.stamp = time of its first sample (AudioChunk.msg), logged one block later,
  when a microphone driver could publish it.
"""

from __future__ import annotations

import heapq
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taco_ros.bags.messages import audio_message, compressed_message, image_message
from taco_ros.bags.schema import stamp_ns, typestore
from taco_ros.bags.topics import AUDIO_TOPIC, AUDIO_TYPE, COMPRESSED_TYPE, IMAGE_TOPIC, IMAGE_TYPE

STORAGES = ('sqlite3', 'mcap')


# ------------------------------------------------------------------------------------- storage
def offered_qos(depth: int, transient_local: bool = False) -> Any:
    """Offered QoS recorded with a connection (reliable: every subscriber can connect)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(sec=0, nsec=0)   # rmw's "default" (infinite) deadline/lifespan/lease
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {", ".join(STORAGES)}, got {storage!r}')
    return StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP


# ------------------------------------------------------------------------------------- writing
@dataclass
class BagSummary:
    """What was written: topics, message counts and the time span (ns since the epoch)."""

    path: str
    storage: str
    image_topic: str
    audio_topic: str
    frames: int
    audio_chunks: int
    start_ns: int
    end_ns: int
    frame_stamps_ns: list[int] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def write_bag(
    path: str | os.PathLike,
    frames: Iterable[tuple[float, np.ndarray]],
    audio: np.ndarray,
    sample_rate: int,
    *,
    block_size: int = 512,
    storage: str = 'sqlite3',
    image_topic: str = IMAGE_TOPIC,
    audio_topic: str = AUDIO_TOPIC,
    compressed: bool = False,
    jpeg_quality: int = 90,
    start_ns: int | None = None,
    camera_frame: str = 'camera',
    mic_frame: str = 'microphone',
) -> BagSummary:
    """Write camera ``frames`` ((seconds from start, RGB uint8)) and int16 ``audio`` into a new bag.

    With ``compressed`` the images go to ``<image_topic>/compressed`` as JPEG CompressedImage (what
    image_transport's compressed plugin publishes). ``path`` must not exist yet.
    """
    from rosbags.rosbag2 import Writer

    if block_size <= 0 or sample_rate <= 0:
        raise ValueError('block_size and sample_rate must be positive')
    audio = np.asarray(audio)
    if audio.dtype != np.int16 or audio.ndim not in (1, 2) or audio.shape[0] == 0:
        raise ValueError(f'audio must be non-empty int16 [n] or [n, channels], got {audio.dtype} '
                         f'{audio.shape}')
    path = Path(path)
    if path.exists():
        raise FileExistsError(f'{path} exists; rosbag2 writes a new directory')
    start = time.time_ns() if start_ns is None else int(start_ns)
    store = typestore()
    block_ns = block_size * 1_000_000_000 // sample_rate
    if compressed and not image_topic.endswith('/compressed'):
        image_topic = image_topic.rstrip('/') + '/compressed'

    def camera() -> Iterator[tuple[int, int, Any]]:
        for t, rgb in frames:
            ns = start + round(t * 1e9)
            msg = (compressed_message(rgb, ns, camera_frame, jpeg_quality) if compressed
                   else image_message(rgb, ns, camera_frame))
            yield ns, 0, msg

    def microphone() -> Iterator[tuple[int, int, Any]]:
        for first in range(0, audio.shape[0], block_size):
            ns = start + first * 1_000_000_000 // sample_rate
            yield ns + block_ns, 1, audio_message(audio[first:first + block_size], sample_rate,
                                                  ns, mic_frame)

    summary = BagSummary(str(path), storage, image_topic, audio_topic, 0, 0, start, start)
    try:
        _write_merged(Writer(path, version=9, storage_plugin=storage_plugin(storage)), store,
                      image_topic, audio_topic, compressed, camera(), microphone(), summary)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)    # no half-written bag left behind
        raise
    return summary


def _write_merged(writer: Any, store: Any, image_topic: str, audio_topic: str, compressed: bool,
                  camera: Iterator[tuple[int, int, Any]], microphone: Iterator[tuple[int, int, Any]],
                  summary: BagSummary) -> None:
    with writer:
        image_type = COMPRESSED_TYPE if compressed else IMAGE_TYPE
        connections = (
            writer.add_connection(image_topic, image_type, typestore=store,
                                  offered_qos_profiles=[offered_qos(10)]),
            writer.add_connection(audio_topic, AUDIO_TYPE, typestore=store,
                                  offered_qos_profiles=[offered_qos(50)]),
        )
        types = (image_type, AUDIO_TYPE)
        # Merge by log time: readers (and ros2 bag play) expect time order.
        for log_ns, which, msg in heapq.merge(camera, microphone, key=lambda item: item[:2]):
            writer.write(connections[which], log_ns, store.serialize_cdr(msg, types[which]))
            if which == 0:
                summary.frames += 1
                summary.frame_stamps_ns.append(stamp_ns(msg.header.stamp))
            else:
                summary.audio_chunks += 1
            summary.end_ns = max(summary.end_ns, log_ns)
        if summary.frames == 0:
            raise ValueError('no camera frames were given')


def remove_bag(path: str | os.PathLike) -> None:
    """Delete a bag directory (only one that rosbag2 wrote: it must hold metadata.yaml)."""
    path = Path(path)
    if not path.exists():
        return
    if not (path / 'metadata.yaml').is_file():
        raise ValueError(f'{path} is not a rosbag2 directory (no metadata.yaml); not removing it')
    shutil.rmtree(path)


# ------------------------------------------------------------------------------------- reading
@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_ns: int        # receive/record time
    raw: bytes         # CDR, as on the wire
    _msg: Any = None

    @property
    def msg(self) -> Any:
        """The deserialized (rosbags) message."""
        if self._msg is None:
            self._msg = typestore().deserialize_cdr(self.raw, self.msgtype)
        return self._msg


def read_messages(path: str | os.PathLike, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Messages of a bag in log-time order, optionally only some topics."""
    from rosbags.rosbag2 import Reader

    wanted = None if topics is None else set(topics)
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for connection, log_ns, raw in reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, log_ns, bytes(raw))


def bag_topics(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """{topic: (message type, message count)} of a bag."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def find_topic(path: str | os.PathLike, msgtypes: Iterable[str]) -> str | None:
    """First topic of the bag whose type is one of ``msgtypes``."""
    wanted = tuple(msgtypes)
    for topic, (msgtype, _) in sorted(bag_topics(path).items()):
        if msgtype in wanted:
            return topic
    return None
