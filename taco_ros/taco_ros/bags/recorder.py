"""BagRecorder: records topics of a running ROS graph into a new bag through rclpy (any node),
with each publisher's QoS, so latched topics are caught too. rclpy is imported inside functions."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from taco_ros.bags.rosbag import offered_qos, storage_plugin
from taco_ros.bags.schema import typestore
from taco_ros.bags.topics import message_class


class BagRecorder:
    """Records topics into a new bag: each topic is subscribed (raw CDR) once a publisher offers it,
    with the publisher's reliability and durability, so latched topics (label_info) are caught too.

    topics: {topic: message type or None (take the advertised type)}. Callbacks may run on any
    executor thread: one writer thread owns the bag (rosbags' sqlite3 storage is thread-bound).
    """

    def __init__(self, node: Any, path: str | Path, topics: dict[str, str | None], *,
                 storage: str = 'sqlite3', depth: int = 100):
        import queue

        from rosbags.rosbag2 import Writer

        if not topics:
            raise ValueError('no topics to record')
        self.node = node
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists; recording writes a new bag')
        self.topics = {node.resolve_topic_name(t): m for t, m in topics.items()}
        self.depth = depth
        self.counts: dict[str, int] = {t: 0 for t in self.topics}
        self._writer = Writer(self.path, version=9, storage_plugin=storage_plugin(storage))
        self._queue: queue.Queue[tuple[str, tuple] | None] = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name='bag_writer', daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None:
            raise self._error
        self._subscriptions: dict[str, Any] = {}
        self._closed = False
        self._subscribe_available()
        self._timer = node.create_timer(0.2, self._subscribe_available)

    def _write_loop(self) -> None:
        connections: dict[str, Any] = {}
        try:
            self._writer.open()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (item := self._queue.get()) is not None:
                op, args = item
                if op == 'connect':
                    topic, msgtype, qos = args
                    connections[topic] = self._writer.add_connection(
                        topic, msgtype, typestore=typestore(), offered_qos_profiles=[qos])
                else:
                    topic, log_ns, raw = args
                    self._writer.write(connections[topic], log_ns, raw)
                    self.counts[topic] += 1
        except BaseException as exc:
            self._error = exc
        finally:
            self._writer.close()

    def _subscribe_available(self) -> None:
        advertised = dict(self.node.get_topic_names_and_types())
        for topic, msgtype in self.topics.items():
            if topic in self._subscriptions:
                continue
            types = advertised.get(topic)
            if not types:
                continue
            msgtype = msgtype or types[0]
            publishers = self.node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            self._subscribe(topic, msgtype, [p.qos_profile for p in publishers])

    def _subscribe(self, topic: str, msgtype: str, offered: list[Any]) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
        latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=self.depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        if self._closed:
            return
        self._queue.put(('connect', (topic, msgtype, _bag_qos(offered[0], reliable, latched))))
        self._subscriptions[topic] = self.node.create_subscription(
            message_class(msgtype), topic, lambda raw, t=topic: self._write(t, raw), qos, raw=True)

    def _write(self, topic: str, raw: bytes) -> None:
        if not self._closed:
            self._queue.put(('write', (topic, self.node.get_clock().now().nanoseconds, raw)))

    def subscribed(self) -> list[str]:
        return sorted(self._subscriptions)

    def close(self) -> None:
        """Stop recording and finish the bag (metadata.yaml is written here)."""
        if self._closed:
            return
        self._closed = True
        self.node.destroy_timer(self._timer)
        for subscription in self._subscriptions.values():
            self.node.destroy_subscription(subscription)
        self._queue.put(None)
        self._thread.join(timeout=60)
        if self._error is not None:
            raise RuntimeError(f'recording {self.path} failed: {self._error}') from self._error


def _bag_qos(offered: Any, reliable: bool, latched: bool) -> Any:
    from rosbags.interfaces import QosDurability, QosReliability
    qos = offered_qos(max(1, int(offered.depth or 1)), transient_local=latched)
    return qos._replace(reliability=QosReliability.RELIABLE if reliable
                        else QosReliability.BEST_EFFORT,
                        durability=QosDurability.TRANSIENT_LOCAL if latched
                        else QosDurability.VOLATILE)


def record_bag(path: str | Path, topics: dict[str, str | None], *, duration: float | None = None,
               storage: str = 'sqlite3', use_sim_time: bool = False) -> dict[str, int]:
    """Record ``topics`` from a node of its own until ``duration`` or SIGINT/SIGTERM (the
    ``bag record`` command); returns the message count per topic."""
    import signal
    import time

    from taco_ros.bags.session import standalone_node

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with standalone_node('taco_bag_recorder', use_sim_time) as (node, executor):
        recorder = BagRecorder(node, path, topics, storage=storage)
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                executor.spin_once(timeout_sec=0.1)
        finally:
            recorder.close()
    return dict(recorder.counts)
