"""BagPlayer: publishes a bag through rclpy with its recorded timing (rate, loops, start offset,
/clock for use_sim_time, optional re-stamping to the wall clock) on any rclpy node, so the CLI, the
demo and the tests run it in-process. rclpy is imported inside functions."""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taco_ros.bags.schema import header_first
from taco_ros.bags.topics import COMPRESSED_TYPE, IMAGE_TYPE, message_class


def restamp_cdr(raw: bytes, shift_ns: int) -> bytes:
    """CDR of a message whose first field is a Header, with header.stamp moved by ``shift_ns``."""
    little = raw[1] == 1      # encapsulation: 0x0001 CDR_LE, 0x0000 CDR_BE
    fmt = '<iI' if little else '>iI'
    sec, nanosec = struct.unpack_from(fmt, raw, 4)
    total = sec * 1_000_000_000 + nanosec + shift_ns
    out = bytearray(raw)
    struct.pack_into(fmt, out, 4, *divmod(total, 1_000_000_000))
    return bytes(out)


def _rclpy_qos(qos_name: str | None, offered: Any | None, default_depth: int) -> Any:
    """Publisher QoS: a named profile, else what the bag recorded, else reliable."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    from taco_ros.params import qos_profile
    if qos_name:
        return qos_profile(qos_name, default_depth)
    if offered is None:
        return QoSProfile(depth=default_depth, reliability=ReliabilityPolicy.RELIABLE)
    reliable = offered.reliability.name != 'BEST_EFFORT'
    latched = offered.durability.name == 'TRANSIENT_LOCAL'
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=max(1, int(offered.depth) or default_depth),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


@dataclass
class PlayReport:
    published: dict[str, int] = field(default_factory=dict)
    # header stamps (ns) of the images as published, in order (after re-stamping)
    image_stamps_ns: list[int] = field(default_factory=list)
    loops: int = 0
    wall_seconds: float = 0.0


class BagPlayer:
    """Publishes the messages of a bag with their recorded timing on ``node``'s publishers.

    rate: playback speed factor; loops: times through the bag (0 = until stopped);
    start_offset: seconds of the bag skipped at the start; clock: publish rosgraph_msgs/Clock with
    the bag time (for nodes with use_sim_time), ``clock_hz`` times a second and before each message;
    restamp: shift every header stamp so the bag looks live: the first pass is stamped from the wall
    time it starts at, keeping the recorded spacing (with rate != 1 stamps advance at the recorded
    speed); pass k is the first pass shifted by k * (bag span + loop gap), so stamps never go back.
    """

    def __init__(self, node: Any, path: str | Path, *, rate: float = 1.0, loops: int = 1,
                 start_offset: float = 0.0, clock: bool = False, clock_hz: float = 40.0,
                 restamp: bool = False, topics: list[str] | None = None,
                 remap: dict[str, str] | None = None, qos: str | None = None,
                 loop_gap: float = 0.5):
        from rosbags.rosbag2 import Reader

        if rate <= 0:
            raise ValueError(f'rate must be positive, got {rate}')
        if loops < 0 or start_offset < 0 or clock_hz <= 0 or loop_gap < 0:
            raise ValueError('loops, start_offset and loop_gap must be >= 0 and clock_hz > 0')
        self.node = node
        self.path = Path(path)
        self.rate, self.loops, self.start_offset = rate, loops, start_offset
        self.clock, self.clock_hz, self.restamp, self.loop_gap = clock, clock_hz, restamp, loop_gap
        remap = remap or {}
        with Reader(self.path) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            self._bag_start = reader.start_time
            self._bag_end = reader.end_time
        if not connections:
            raise ValueError(f'{self.path}: no topics to play (asked for {topics})')
        self._publishers: dict[str, Any] = {}
        self._restampable: dict[str, bool] = {}
        for connection in connections:
            if connection.topic in self._publishers:
                continue
            offered = (connection.ext.offered_qos_profiles or [None])[0]
            self._publishers[connection.topic] = node.create_publisher(
                message_class(connection.msgtype), remap.get(connection.topic, connection.topic),
                _rclpy_qos(qos, offered, 10))
            self._restampable[connection.topic] = header_first(connection.msgtype)
        self._image_topics = {c.topic for c in connections
                              if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)}
        self._clock_publisher = None
        if clock:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock
            self._clock_publisher = node.create_publisher(
                Clock, '/clock', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._bag_now_ns = self._bag_start
        self._first_shift_ns: int | None = None
        self.stop_event = threading.Event()

    @property
    def duration(self) -> float:
        return (self._bag_end - self._bag_start) / 1e9

    def wait_for_subscribers(self, timeout: float, topics: list[str] | None = None) -> bool:
        """Block until every (or each named) publisher has a subscriber; False on timeout."""
        chosen = [self._publishers[t] for t in (topics or list(self._publishers))]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if all(p.get_subscription_count() > 0 for p in chosen):
                return True
            time.sleep(0.05)
        return all(p.get_subscription_count() > 0 for p in chosen)

    def _publish_clock(self, bag_ns: int) -> None:
        if self._clock_publisher is None:
            return
        from rosgraph_msgs.msg import Clock
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
        self._clock_publisher.publish(msg)

    def _clock_loop(self) -> None:
        while not self.stop_event.wait(1.0 / self.clock_hz):
            self._publish_clock(self._bag_now_ns)

    def play(self) -> PlayReport:
        """Play (blocking) until done or ``stop_event`` is set; returns what was published."""
        report = PlayReport(published={t: 0 for t in self._publishers})
        clock_thread = None
        if self._clock_publisher is not None:
            clock_thread = threading.Thread(target=self._clock_loop, daemon=True)
            clock_thread.start()
        first_ns = self._bag_start + round(self.start_offset * 1e9)
        started = time.monotonic()
        try:
            while not self.stop_event.is_set() and (self.loops == 0 or report.loops < self.loops):
                self._play_once(first_ns, report)
                report.loops += 1
                if self.loop_gap and (self.loops == 0 or report.loops < self.loops):
                    self.stop_event.wait(self.loop_gap)
        finally:
            self.stop_event.set()
            if clock_thread is not None:
                clock_thread.join(timeout=2)
            report.wall_seconds = time.monotonic() - started
        return report

    def _play_once(self, first_ns: int, report: PlayReport) -> None:
        from rosbags.rosbag2 import Reader

        loop_start = time.monotonic()
        # Re-stamping maps bag time first_ns to the wall time at which this pass starts, but never
        # before the end of the previous pass (rate > 1 plays faster than the stamps advance).
        shift_ns = 0
        if self.restamp:
            # Later passes continue the first one's time line: shifted by whole periods of
            # (bag span + loop gap), so the stamps of every pass are the first pass's plus k periods.
            if self._first_shift_ns is None:
                self._first_shift_ns = time.time_ns() - first_ns
            period_ns = self._bag_end - first_ns + round(self.loop_gap * 1e9 * self.rate)
            shift_ns = self._first_shift_ns + report.loops * period_ns
        with Reader(self.path) as reader:
            connections = [c for c in reader.connections if c.topic in self._publishers]
            for connection, log_ns, raw in reader.messages(connections=connections, start=first_ns):
                due = loop_start + (log_ns - first_ns) / 1e9 / self.rate
                delay = due - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    return
                topic = connection.topic
                data = bytes(raw)
                if shift_ns and self._restampable[topic]:
                    data = restamp_cdr(data, shift_ns)
                self._bag_now_ns = log_ns
                self._publish_clock(log_ns)
                self._publishers[topic].publish(data)
                report.published[topic] += 1
                if topic in self._image_topics:
                    report.image_stamps_ns.append(_stamp_of(data) if self._restampable[topic]
                                                  else log_ns)


def _stamp_of(raw: bytes) -> int:
    fmt = '<iI' if raw[1] == 1 else '>iI'
    sec, nanosec = struct.unpack_from(fmt, raw, 4)
    return sec * 1_000_000_000 + nanosec


def play_bag(path: str | Path, *, wait_for_subscribers: float = 0.0, **options: Any) -> PlayReport:
    """Play a bag from a node of its own until done or SIGINT/SIGTERM (the ``bag play`` command).

    ``options`` are BagPlayer's; with ``wait_for_subscribers`` it first waits up to that many
    seconds for a subscriber on every topic.
    """
    import signal

    from taco_ros.bags.session import standalone_node

    with standalone_node('taco_bag_player') as (node, _):
        player = BagPlayer(node, path, **options)
        # Publishing and graph queries need no spinning: the player runs in this thread.
        signal.signal(signal.SIGINT, lambda *_: player.stop_event.set())
        signal.signal(signal.SIGTERM, lambda *_: player.stop_event.set())
        if wait_for_subscribers and not player.wait_for_subscribers(wait_for_subscribers):
            node.get_logger().warning('playing although not every topic has a subscriber yet')
        return player.play()
