"""A new bag holding taco_node's outputs (and optionally copies of its inputs), written from
rclpy-serialized messages so ``ros2 bag play`` and Foxglove read it like a recording of the node.
Offered QoS as the node publishes: reliable, depth params.OUTPUT_DEPTH; label_info latched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from taco_ros.bags.rosbag import STORAGES, offered_qos, storage_plugin
from taco_ros.bags.schema import typestore
from taco_ros.bags.topics import NODE_NAME, OUTPUT_TOPICS


class ResultWriter:
    """Open with ``with``; :meth:`write` takes a topic name relative to the node ('mask') or an
    input topic registered with :meth:`add_input`. A failed run leaves no half-written bag."""

    def __init__(self, path: str | os.PathLike, *, storage: str = 'sqlite3',
                 node_name: str = NODE_NAME, debug_image: bool = False) -> None:
        from rosbags.rosbag2 import Writer

        from taco_ros.params import OUTPUT_DEPTH

        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {", ".join(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists; the results go into a new bag')
        self.base = '/' + node_name.strip('/')
        self._writer = Writer(self.path, version=9, storage_plugin=storage_plugin(storage))
        self._depth = OUTPUT_DEPTH
        self._names = [n for n in OUTPUT_TOPICS if debug_image or n != 'debug_image']
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> ResultWriter:
        self._writer.open()
        store = typestore()
        try:
            for name in self._names:
                latched = name == 'label_info'
                self._connections[name] = self._writer.add_connection(
                    f'{self.base}/{name}', OUTPUT_TOPICS[name], typestore=store,
                    offered_qos_profiles=[offered_qos(1 if latched else self._depth, latched)])
        except BaseException:
            self._abort()
            raise
        return self

    def add_input(self, topic: str, msgtype: str) -> None:
        """Also write this input topic (raw CDR as read from the input bag)."""
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=[offered_qos(10)])

    def write(self, name: str, log_ns: int, raw: bytes) -> None:
        self._writer.write(self._connections[name], int(log_ns), raw)
        self.counts[name] = self.counts.get(name, 0) + 1

    def write_message(self, name: str, log_ns: int, msg: Any) -> None:
        """Serialize an rclpy message (CDR, as a publisher sends it) and write it."""
        from rclpy.serialization import serialize_message
        self.write(name, log_ns, serialize_message(msg))

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is None:
            self._writer.close()
        else:
            self._abort()

    def _abort(self) -> None:
        try:
            self._writer.close()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
