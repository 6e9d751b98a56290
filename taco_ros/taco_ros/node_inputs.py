"""taco_node's inputs: the camera, camera_info and microphone subscriptions and their callbacks.

Mixed into :class:`taco_ros.taco_node.TacoNode`. The callbacks only check and store: a camera frame
is checked without copying its pixels (sizes bounded, header read) and stored as the message, to be
decoded only if a window is paired with it; an audio chunk is decoded and placed in the window
policy; a CameraInfo is kept by stamp for the frame it will be paired with. They hold the input
lock for a few microseconds and never wait for inference, which runs on its own thread without it.

ros-drivers audio (``AudioData``, ``AudioDataStamped``) is raw bytes described by a separate
``audio_info`` topic: a :class:`taco_ros.audio_formats.RawAudioGate` holds the chunks until the
format is known (or decodes them with ``audio_sample_format`` when the user set one), so nothing
is ever read with a guessed format.
"""

from __future__ import annotations

import bisect
import importlib
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from taco_ros import conversions as conv
from taco_ros import params
from taco_ros.audio_formats import HOLD_SEC, GateUpdate, RawAudioFormat, RawAudioGate, configured_format
from taco_ros.core.windows import PushReport, SizeLimitError, WindowPolicy
from taco_ros.diagnostics import NodeStats

# Receipt-stamped audio (no header) is never out of order: a generous contiguity tolerance keeps
# executor and network jitter from being mistaken for gaps.
RECEIPT_STAMP_TOLERANCE = 0.25
THROTTLE_SEC = 5.0
MAX_CAMERA_INFOS = 256         # as many as frames held (taco_node.MAX_FRAMES); 0.5 kB each
T = TypeVar('T')


def receipt_stamp(received: float, duration: float, stamp_tolerance: float) -> tuple[float, float]:
    """(stamp, contiguity tolerance) of an audio chunk without a capture stamp (multiarray, zero
    header): the best guess is that it ended when it was received. Used by the node and bag replay."""
    return received - duration, max(RECEIPT_STAMP_TOLERANCE, stamp_tolerance)


class StampedStore(Generic[T]):
    """Recent messages by stamp (bounded in count and, optionally, in bytes), to pair one with a
    window's frame. ``cost`` gives a message's size in bytes for ``max_bytes``."""

    def __init__(self, capacity: int = MAX_CAMERA_INFOS, max_bytes: int | None = None,
                 cost: Callable[[T], int] | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._cost = cost or (lambda _item: 0)
        self._stamps: list[float] = []
        self._items: list[T] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp: float, item: T) -> None:
        index = bisect.bisect_right(self._stamps, stamp)
        self._stamps.insert(index, stamp)
        self._items.insert(index, item)
        self._bytes += self._cost(item)
        while len(self._stamps) > self.capacity or (    # the oldest go first; the newest stays
                self.max_bytes is not None and self._bytes > self.max_bytes and len(self._stamps) > 1):
            self._bytes -= self._cost(self._items[0])
            del self._stamps[0], self._items[0]

    def nearest(self, stamp: float, tolerance: float) -> T | None:
        """The item stamped nearest ``stamp``, if within ``tolerance`` seconds."""
        index = bisect.bisect_left(self._stamps, stamp)
        best = min((i for i in (index - 1, index) if 0 <= i < len(self._stamps)),
                   key=lambda i: abs(self._stamps[i] - stamp), default=None)
        if best is None or abs(self._stamps[best] - stamp) > tolerance:
            return None
        return self._items[best]

    def clear(self) -> None:
        self._stamps.clear()
        self._items.clear()
        self._bytes = 0


class CameraInfoStore(StampedStore[CameraInfo]):
    """Recent CameraInfo messages by stamp (bounded), to pair one with a window's frame."""


class NodeInputs:
    """Subscriptions and input callbacks of TacoNode (a mixin: the node provides the attributes)."""

    _p: dict[str, Any]
    _lifecycle: str
    _policy: WindowPolicy[Image | CompressedImage]
    _input_lock: threading.Lock
    _input_group: CallbackGroup
    _stats: NodeStats
    _input_subs: list[Any]
    _activation_timers: list[Any]
    _audio_retry: Any
    _audio_kind: str | None
    _raw_gate: RawAudioGate
    _camera_infos: CameraInfoStore
    _audio_info_cls: type
    _latched_info_sub: Any

    # ------------------------------------------------------------------ subscriptions
    def _subscribe_image(self) -> None:
        qos = params.qos_profile(self._p['image_qos'], self._p['image_qos_depth'])
        if self._p['image_transport'] == 'compressed':
            msg_type, topic = CompressedImage, params.TOPIC_IMAGE_COMPRESSED
        else:
            msg_type, topic = Image, params.TOPIC_IMAGE
        self._input_subs.append(self.create_subscription(
            msg_type, topic, self._on_image, qos, callback_group=self._input_group))
        self.get_logger().info(
            f'image: {self.resolve_topic_name(topic)} ({msg_type.__name__}, QoS '
            f'{self._p["image_qos"]}: {qos.reliability.name.lower()}, depth {qos.depth})')

    def _subscribe_camera_info(self) -> None:
        qos = params.qos_profile(self._p['image_qos'], self._p['image_qos_depth'])
        self._input_subs.append(self.create_subscription(
            CameraInfo, params.TOPIC_CAMERA_INFO, self._on_camera_info, qos,
            callback_group=self._input_group))

    def _subscribe_audio(self) -> None:
        """Subscribe to the audio topic now, or keep retrying from a timer: with 'auto' the type
        is unknown until a publisher appears, and a subscription of another type that was just
        destroyed (a reactivation with a new audio_msg_type) may still block the topic."""
        if self._try_audio_subscription():
            return
        self.get_logger().info(
            f'waiting for a publisher on {self.resolve_topic_name(params.TOPIC_AUDIO)} '
            f'to subscribe (audio_msg_type {self._p["audio_msg_type"]})')
        self._audio_retry = self.create_timer(0.5, self._retry_audio_subscription,
                                              callback_group=self._input_group)
        self._activation_timers.append(self._audio_retry)

    def _try_audio_subscription(self) -> bool:
        """True when subscribed (or when retrying cannot help)."""
        kind = self._p['audio_msg_type']
        if kind == 'auto':
            kind = self._audio_kind_on_topic()
            if kind is None:
                return False
        try:
            msg_type = conv.audio_message_class(kind)
        except ValueError as exc:
            self.get_logger().error(f'cannot subscribe to audio: {exc}')
            self._stats.last_error = str(exc)
            return True
        try:
            self._create_audio_subscription(kind, msg_type)
        except RuntimeError as exc:  # rclpy's RCLError: e.g. the topic still has another type
            self.get_logger().warning(f'audio subscription not possible yet: {exc}',
                                      throttle_duration_sec=THROTTLE_SEC)
            return False
        return True

    def _audio_kind_on_topic(self) -> str | None:
        topic = self.resolve_topic_name(params.TOPIC_AUDIO)
        for name, types in self.get_topic_names_and_types():
            if name == topic:
                return conv.kind_for_topic_types(types)
        return None

    def _retry_audio_subscription(self) -> None:
        if self._audio_kind is not None or self._lifecycle != 'active':
            return
        if self._try_audio_subscription() and self._audio_retry is not None:
            self._audio_retry.cancel()

    def _create_audio_subscription(self, kind: str, msg_type: type) -> None:
        qos = params.qos_profile(self._p['audio_qos'], self._p['audio_qos_depth'])
        subscription = self.create_subscription(
            msg_type, params.TOPIC_AUDIO, self._on_audio, qos, callback_group=self._input_group)
        self._input_subs.append(subscription)
        if kind in conv.RAW_AUDIO_KINDS:
            self._raw_gate = RawAudioGate(configured_format(
                self._p['audio_sample_format'], self._p['audio_sample_rate'], self._p['audio_channels']))
            self._subscribe_audio_info(importlib.import_module('audio_common_msgs.msg').AudioInfo)
        self._audio_kind = kind
        self.get_logger().info(
            f'audio: {self.resolve_topic_name(params.TOPIC_AUDIO)} ({kind}, QoS '
            f'{self._p["audio_qos"]}: {qos.reliability.name.lower()}, depth {qos.depth})')

    def _subscribe_audio_info(self, info_cls: type) -> None:
        """A best-effort volatile subscription, which matches every publisher; and, once a latched
        (transient local) publisher is seen, a transient-local one, which alone receives what
        that publisher sent before we joined. It is never made for volatile publishers: they
        cannot match it and would log an incompatible-QoS warning (audio_capture does)."""
        self._audio_info_cls = info_cls
        self._latched_info_sub = None
        self._input_subs.append(self.create_subscription(
            info_cls, params.TOPIC_AUDIO_INFO, self._on_audio_info,
            params.qos_profile('best_effort', 10), callback_group=self._input_group))
        self._watch_latched_audio_info()
        self._activation_timers.append(self.create_timer(
            1.0, self._watch_latched_audio_info, callback_group=self._input_group))

    def _watch_latched_audio_info(self) -> None:
        if self._latched_info_sub is not None:
            return
        topic = self.resolve_topic_name(params.TOPIC_AUDIO_INFO)
        if not any(info.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                   and info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                   for info in self.get_publishers_info_by_topic(topic)):
            return
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # A volatile publisher next to the latched one cannot match it: expected, no warning.
        quiet = SubscriptionEventCallbacks(incompatible_qos=lambda _event: None)
        self._latched_info_sub = self.create_subscription(
            self._audio_info_cls, params.TOPIC_AUDIO_INFO, self._on_audio_info, latched,
            callback_group=self._input_group, event_callbacks=quiet)
        self._input_subs.append(self._latched_info_sub)

    # ------------------------------------------------------------------ callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _refuse(self, kind: str, exc: ValueError) -> None:
        """Count and report an input message that cannot be used."""
        what = 'image' if kind == 'images' else 'audio chunk'
        key = f'oversized_{kind}' if isinstance(exc, SizeLimitError) else f'bad_{kind}'
        self._stats.problem(key, f'{what}: {exc}')
        self.get_logger().warning(f'dropping {what}: {exc}', throttle_duration_sec=THROTTLE_SEC)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Check the frame (no pixel copy) and store the message for pairing."""
        wall = time.monotonic()
        self._stats.image_rate.tick(wall)
        self._stats.add('images_received')
        try:
            if isinstance(msg, CompressedImage):
                conv.check_compressed(msg, self._p['max_image_pixels'])
            else:
                conv.check_image(msg, self._p['max_image_pixels'])
        except ValueError as exc:
            self._refuse('images', exc)
            return
        stamp = conv.stamp_to_sec(msg.header.stamp)
        if stamp <= 0.0:
            # Unset stamp: pair by receipt time, keep the header as it came for the outputs.
            self._stats.problem('zero_stamp_images', 'image with a zero stamp')
            self.get_logger().warning('image header stamp is zero; pairing it by receipt time',
                                      throttle_duration_sec=THROTTLE_SEC)
            stamp = self._now()
        else:
            self._stats.image_delay.append(self._now() - stamp)
        with self._input_lock:
            self._policy.add_frame(stamp, msg, now=wall)
            notices = self._policy.take_notices()
        self._report_notices(notices)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        stamp = conv.stamp_to_sec(msg.header.stamp)
        if stamp <= 0.0:     # like a frame with an unset stamp: paired by receipt time
            stamp = self._now()
        with self._input_lock:
            self._camera_infos.add(stamp, msg)

    def _on_audio_info(self, msg: Any) -> None:
        fmt = RawAudioFormat.from_msg(msg)
        known = self._raw_gate.announced
        update = self._raw_gate.on_info(fmt)
        if fmt != known and update.refusal is None:
            self.get_logger().info(f'audio format from {params.TOPIC_AUDIO_INFO}: {fmt.describe()}'
                                   + (f'; {len(update.ready)} held chunk(s) released'
                                      if update.ready else ''))
        self._take_raw_audio(update)

    def _on_audio(self, msg: Any) -> None:
        """Decode one chunk and place it in the window policy by its capture stamp."""
        received = self._now()
        self._stats.audio_rate.tick(time.monotonic())
        self._stats.add('audio_messages_received')
        if self._audio_kind in conv.RAW_AUDIO_KINDS:
            size = len(conv.audio_data_bytes(msg))
            self._take_raw_audio(self._raw_gate.on_data(msg, size, received))
            return
        try:
            chunk = conv.decode_audio(self._audio_kind, msg, self._p['audio_sample_rate'],
                                      self._p['audio_channels'])
        except ValueError as exc:
            self._refuse('audio', exc)
            return
        self._place_audio(chunk, received)

    def _take_raw_audio(self, update: GateUpdate) -> None:
        """Count what the raw-audio gate dropped or refused, decode what it released."""
        if update.refusal is not None:
            # One reason, said clearly and not for every chunk; every refused chunk is counted.
            self._stats.problem('refused_audio', update.refusal)
            self._stats.add('refused_audio_chunks', update.dropped)
            self.get_logger().error(f'audio refused: {update.refusal}',
                                    throttle_duration_sec=THROTTLE_SEC)
        elif update.dropped:
            self._stats.add('held_audio_dropped', update.dropped)
            self.get_logger().warning(
                f'dropped {update.dropped} audio chunk(s) held over {HOLD_SEC:g} s without '
                f'an AudioInfo on {self.resolve_topic_name(params.TOPIC_AUDIO_INFO)}',
                throttle_duration_sec=THROTTLE_SEC)
        if update.reset is not None:
            self._stats.add('audio_format_changes')
            self._report_notices([update.reset])
        for held, fmt in update.ready:
            try:
                chunk = conv.decode_audio_data(held.payload, fmt)
            except ValueError as exc:
                self._refuse('audio', exc)
                continue
            self._place_audio(chunk, held.received)

    def raw_audio_state(self) -> str:
        """The ros-drivers stream format in use, or why there is none ('' for other kinds)."""
        if self._audio_kind not in conv.RAW_AUDIO_KINDS:
            return ''
        gate = self._raw_gate
        fmt = gate.format
        if fmt is None:
            return f'waiting for audio_info ({gate.held} chunk(s) held)'
        problem = fmt.problem()
        return f'refused: {problem}' if problem else fmt.describe()

    def _place_audio(self, chunk: conv.AudioChunkData, received: float) -> None:
        """Put a decoded chunk into the window policy; stamp it from ``received`` (receipt time,
        node clock) minus its duration when it carries no capture stamp."""
        wall = time.monotonic()
        try:
            mono = conv.select_channel(chunk.samples, self._p['audio_channel'])
        except ValueError as exc:
            self._refuse('audio', exc)
            return
        if mono.size == 0:
            self._stats.problem('empty_audio', 'audio chunk with no samples')
            return
        tolerance = None
        stamp = chunk.stamp
        if stamp is None:
            self._stats.add('unstamped_audio')
            stamp, tolerance = receipt_stamp(received, chunk.duration, self._p['stamp_tolerance'])
        else:   # from the capture of its last sample
            self._stats.audio_delay.append(received - stamp - chunk.duration)
        self._stats.audio_seconds.tick(wall, chunk.duration)
        with self._input_lock:
            try:
                report = self._policy.add_audio(mono, stamp, chunk.sample_rate, now=wall,
                                                tolerance=tolerance)
            except ValueError as exc:
                report = exc
            notices = self._policy.take_notices()
        if isinstance(report, ValueError):
            self._refuse('audio', report)
        else:
            self._count_audio(report)
        self._report_notices(notices)

    def _count_audio(self, report: PushReport) -> None:
        if report.gap_sec > 0:
            self._stats.add('audio_gaps')
            self._stats.add('audio_gap_ms', report.gap_sec * 1e3)
        if report.late_sec > 0:
            self._stats.add('late_audio_chunks')
        if report.dropped:
            self._stats.add('dropped_audio_samples', report.dropped)
        if report.stray:
            self._stats.add('stray_audio_samples', report.stray)

    def _report_notices(self, notices: list[str]) -> None:
        """Log the window policy's restarts and stray stamps (each reported once)."""
        for text in notices:
            self.get_logger().warning(text)
            with self._stats.lock:
                self._stats.last_notice = text
