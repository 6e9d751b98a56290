"""``taco-ros bag make|play|record|info``: rosbag2 files for machines without ``ros2 bag``.

- make: a new bag from the synthetic scene (moving shapes; speech, tones and silences) or from a video
  file / image folder plus a WAV file (taco_ros.bags; no ROS needed).
- play: publishes a bag through rclpy with its recorded timing (rate, loops, start offset, /clock for
  use_sim_time, optional re-stamping to the wall clock).
- record: writes topics (by default taco_node's outputs) into a new bag with the publishers' QoS.

The player and recorder are classes (BagPlayer, BagRecorder) that work on any rclpy node, so the demo
and the tests run them in-process. rclpy is imported inside functions: the CLI imports this module
at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taco_ros import bags

OUTPUT_TOPICS = {   # taco_node's outputs (params.TOPICS, private names) → message type
    'mask': 'sensor_msgs/msg/Image',
    'objects': 'taco_msgs/msg/SoundingObjectArray',
    'audio_activation': 'taco_msgs/msg/AudioActivation',
    'debug_image': 'sensor_msgs/msg/Image',
    'label_info': 'taco_msgs/msg/LabelInfo',
}
DIAGNOSTICS_TOPIC = ('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray')


def output_topics(node_name: str = '/taco_node', debug_image: bool = True,
                  diagnostics: bool = True) -> dict[str, str]:
    """{topic: type} that taco_node publishes when its fully qualified name is ``node_name``."""
    base = '/' + node_name.strip('/')
    topics = {f'{base}/{name}': msgtype for name, msgtype in OUTPUT_TOPICS.items()
              if debug_image or name != 'debug_image'}
    if diagnostics:
        topics[DIAGNOSTICS_TOPIC[0]] = DIAGNOSTICS_TOPIC[1]
    return topics


def message_class(msgtype: str) -> type:
    """rclpy message class of 'pkg/msg/Name'."""
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def _header_first(msgtype: str) -> bool:
    """Whether the CDR of ``msgtype`` starts with a std_msgs/Header (stamp at bytes 4..12)."""
    fields = bags.typestore().fielddefs.get(msgtype)
    if not fields or not fields[1]:
        return False
    name, (_, ref) = fields[1][0]
    return name == 'header' and ref == 'std_msgs/msg/Header'


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


# ------------------------------------------------------------------------------------------ play
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
            self._restampable[connection.topic] = _header_first(connection.msgtype)
        self._image_topics = {c.topic for c in connections
                              if c.msgtype in (bags.IMAGE_TYPE, bags.COMPRESSED_TYPE)}
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


# ---------------------------------------------------------------------------------------- record
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
        self._writer = Writer(self.path, version=9, storage_plugin=bags._storage_plugin(storage))
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
                        topic, msgtype, typestore=bags.typestore(), offered_qos_profiles=[qos])
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
    qos = bags._qos(max(1, int(offered.depth or 1)), transient_local=latched)
    return qos._replace(reliability=QosReliability.RELIABLE if reliable
                        else QosReliability.BEST_EFFORT,
                        durability=QosDurability.TRANSIENT_LOCAL if latched
                        else QosDurability.VOLATILE)


# ------------------------------------------------------------------------------------------- CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'bag', help='make, play, record and inspect rosbag2 files (no ros2 CLI needed)')
    sub = parser.add_subparsers(dest='bag_command', metavar='ACTION', required=True)

    make = sub.add_parser('make', help='write a bag: synthetic scene, or video/images + WAV')
    make.add_argument('output', help='bag directory to create')
    source = make.add_mutually_exclusive_group()
    source.add_argument('--synthetic', action='store_true',
                        help='moving shapes with speech, tones and silences (the default)')
    source.add_argument('--video', help='video file or folder of images (with --wav)')
    make.add_argument('--wav', help='audio file recorded with --video (same start instant)')
    make.add_argument('--duration', type=float, default=12.0, help='synthetic scene length, s')
    make.add_argument('--max-duration', type=float, default=None, help='cut --video/--wav after S s')
    make.add_argument('--fps', type=float, default=None,
                      help='frame rate (synthetic default 15; an image folder needs it)')
    make.add_argument('--size', default=None, metavar='WxH',
                      help='frame size (synthetic default 640x480; resizes --video frames)')
    make.add_argument('--sample-rate', type=int, default=16000, help='synthetic audio rate')
    make.add_argument('--block-size', type=int, default=512, help='audio frames per message')
    make.add_argument('--seed', type=int, default=0, help='synthetic scene motion phase')
    make.add_argument('--storage', choices=bags.STORAGES, default='sqlite3')
    make.add_argument('--compressed', action='store_true',
                      help='JPEG sensor_msgs/CompressedImage on <image topic>/compressed')
    make.add_argument('--image-topic', default=bags.IMAGE_TOPIC)
    make.add_argument('--audio-topic', default=bags.AUDIO_TOPIC)
    make.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    make.set_defaults(func=run_make)

    play = sub.add_parser('play', help='publish a bag with its recorded timing (rclpy)')
    play.add_argument('bag')
    play.add_argument('--rate', type=float, default=1.0, help='speed factor')
    loop = play.add_mutually_exclusive_group()
    loop.add_argument('--loop', action='store_true', help='repeat until Ctrl-C')
    loop.add_argument('--repeat', type=int, default=1, help='play N times')
    play.add_argument('--start-offset', type=float, default=0.0, help='skip the first S seconds')
    play.add_argument('--clock', nargs='?', type=float, const=40.0, default=None, metavar='HZ',
                      help='publish /clock with the bag time (default 40 Hz) for use_sim_time')
    play.add_argument('--restamp', action='store_true',
                      help='shift header stamps to the wall clock, as if captured live')
    play.add_argument('--topics', nargs='+', default=None, help='play only these topics')
    play.add_argument('--remap', nargs='+', default=[], metavar='FROM:=TO',
                      help='publish a bag topic under another name')
    play.add_argument('--qos', default=None, help='publisher QoS (default: as recorded)')
    play.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                      help='wait up to S seconds for a subscriber on every topic before playing')
    play.set_defaults(func=run_play)

    record = sub.add_parser('record', help="record taco_node's outputs (or --topics) into a bag")
    record.add_argument('output', help='bag directory to create')
    record.add_argument('--topics', nargs='+', default=None,
                        help="topics to record (default: taco_node's outputs and /diagnostics)")
    record.add_argument('--node', default='/taco_node',
                        help="fully qualified name of taco_node (namespace/name)")
    record.add_argument('--inputs', nargs='*', default=None, metavar='TOPIC',
                        help='also record these input topics (default /camera/image_raw /audio)')
    record.add_argument('--duration', type=float, default=None, help='stop after S seconds')
    record.add_argument('--storage', choices=bags.STORAGES, default='sqlite3')
    record.add_argument('--use-sim-time', action='store_true',
                        help='log times from /clock (with bag play --clock)')
    record.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    record.set_defaults(func=run_record)

    info = sub.add_parser('info', help='topics, types, counts and duration of a bag')
    info.add_argument('bag')
    info.set_defaults(func=run_info)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'--size must look like 640x480, got {text!r}') from None
    return width, height


def run_make(args: argparse.Namespace) -> int:
    if args.overwrite:
        bags.remove_bag(args.output)
    size = _parse_size(args.size)
    common = dict(storage=args.storage, compressed=args.compressed, block_size=args.block_size,
                  image_topic=args.image_topic, audio_topic=args.audio_topic)
    if args.video:
        if not args.wav:
            raise SystemExit('--video needs --wav (the audio recorded with it)')
        summary = bags.make_media_bag(args.output, args.video, args.wav, fps=args.fps,
                                      max_duration=args.max_duration, resize=size, **common)
    else:
        width, height = size or (640, 480)
        config = bags.SceneConfig(width=width, height=height, fps=args.fps or 15.0,
                                  duration=args.duration, sample_rate=args.sample_rate,
                                  seed=args.seed)
        summary = bags.make_synthetic_bag(args.output, config, **common)
    print(f'wrote {summary.path} ({summary.storage}): {summary.frames} frames on '
          f'{summary.image_topic}, {summary.audio_chunks} audio chunks on {summary.audio_topic}, '
          f'{summary.duration:.2f} s')
    return 0


def _parse_remaps(items: list[str]) -> dict[str, str]:
    remap = {}
    for item in items:
        if ':=' not in item:
            raise ValueError(f'--remap expects FROM:=TO, got {item!r}')
        source, target = item.split(':=', 1)
        remap[source] = target
    return remap


def _ros_node(name: str, use_sim_time: bool = False) -> tuple[Any, Any, Any]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context, parameter_overrides=[
        Parameter('use_sim_time', Parameter.Type.BOOL, use_sim_time)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return context, node, executor


def run_play(args: argparse.Namespace) -> int:
    context, node, executor = _ros_node('taco_bag_player')
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, loops=0 if args.loop else args.repeat,
                           start_offset=args.start_offset, clock=args.clock is not None,
                           clock_hz=args.clock or 40.0, restamp=args.restamp, topics=args.topics,
                           remap=_parse_remaps(args.remap), qos=args.qos)
        # Publishing and graph queries need no spinning: the player runs in this thread.
        signal.signal(signal.SIGINT, lambda *_: player.stop_event.set())
        signal.signal(signal.SIGTERM, lambda *_: player.stop_event.set())
        if args.wait_for_subscribers and not player.wait_for_subscribers(args.wait_for_subscribers):
            node.get_logger().warning('playing although not every topic has a subscriber yet')
        report = player.play()
        for topic, count in sorted(report.published.items()):
            print(f'{topic}: {count} messages')
        print(f'{report.loops} pass(es) in {report.wall_seconds:.2f} s')
        return 0
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()


def run_record(args: argparse.Namespace) -> int:
    if args.overwrite:
        bags.remove_bag(args.output)
    topics: dict[str, str | None] = ({t: None for t in args.topics} if args.topics
                                     else dict(output_topics(args.node)))
    if args.inputs is not None:
        for topic in args.inputs or [bags.IMAGE_TOPIC, bags.AUDIO_TOPIC]:
            topics[topic] = None
    context, node, executor = _ros_node('taco_bag_recorder', args.use_sim_time)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    recorder = BagRecorder(node, args.output, topics, storage=args.storage)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    finally:
        recorder.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
    for topic, count in sorted(recorder.counts.items()):
        print(f'{topic}: {count} messages')
    return 0


def run_info(args: argparse.Namespace) -> int:
    from rosbags.rosbag2 import Reader

    with Reader(Path(args.bag)) as reader:
        print(f'bag       {args.bag}')
        print(f'duration  {reader.duration / 1e9:.3f} s')
        print(f'messages  {reader.message_count}')
        for connection in reader.connections:
            print(f'  {connection.topic}  {connection.msgtype}  {connection.msgcount}')
    scene = bags.read_scene(args.bag)
    if scene:
        for event in scene['events']:
            print(f"  sound: {event['kind']:<7} {event['start']:6.2f}-{event['end']:6.2f} s "
                  f"({event['source']})")
    return 0
