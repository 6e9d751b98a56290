"""taco_node: camera + microphone topics → sounding-object masks, labels and audio activations.

A ``rclpy.lifecycle.LifecycleNode`` around :class:`taco_ros.core.pipeline.TacoPipeline`:

* configure: read the parameters, load the models and the anchor bank, create publishers and the
  ``set_vocabulary`` service (fails with a clear message when model files are missing, unless
  ``allow_random_weights``);
* activate: subscribe to the camera and the microphone, start the inference timer, publish
  ``label_info`` (transient local);
* deactivate: unsubscribe, wait for the window in flight, move the models off the GPU;
* cleanup: release the models and every ROS entity.

With ``autostart`` (default) :func:`main` runs configure + activate itself.

Threads (MultiThreadedExecutor): the image and audio callbacks (one callback group) only check,
decode and store; the inference timer (its own mutually exclusive group) takes the newest complete
audio window, pairs it with the camera frame nearest its end (or centre), runs the pipeline and
publishes. Windows it could not get to in time are skipped and counted, never queued.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from taco_msgs.msg import (
    AudioActivation,
    LabelInfo,
    SoundingObject,
    SoundingObjectArray,
    VocabularyClass,
)
from taco_msgs.srv import SetVocabulary
from taco_ros import conversions as conv
from taco_ros import params
from taco_ros.core.windows import AudioRingBuffer, FrameBuffer, WindowScheduler

# How often the inference timer looks for a due window. Short, so the latency added by polling is
# small next to the window itself; a tick with nothing to do costs microseconds.
TICK_PERIOD = 0.01
# Frames kept for pairing: a count cap bounds memory for large images.
MAX_FRAMES = 128
# Parameters whose change goes to the pipeline (live).
PIPELINE_PARAMETERS = ('mode', 'mask_threshold', 'min_component_area', 'top_k', 'audio_context',
                       'silence_rms', 'solver_profile', 'solver_max_steps')
# Receipt-stamped audio (no header) is never out of order: a generous contiguity tolerance keeps
# executor and network jitter from being mistaken for gaps.
RECEIPT_STAMP_TOLERANCE = 0.25
# Wall-clock seconds without a new audio chunk after which the stream counts as stopped (end of a
# bag): the last window is then paired with the frames already received instead of waiting forever.
AUDIO_STALL_SEC = 2.0
RANDOM_WEIGHTS_WARNING = ('RANDOM WEIGHTS: allow_random_weights is set and model files are missing; '
                          'masks and labels are meaningless')


def _logged_transition(method: Any) -> Any:
    """rclpy turns an exception in a transition callback into a silent ERROR: log it first."""
    @functools.wraps(method)
    def wrapper(self: TacoNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return method(self, state)
        except Exception as exc:
            self.get_logger().error(
                f'{method.__name__} failed: {exc}\n{traceback.format_exc()}')
            return TransitionCallbackReturn.ERROR
    return wrapper


class RateMeter:
    """Events (or amounts) per second over a sliding horizon."""

    def __init__(self, horizon: float = 5.0) -> None:
        self.horizon = horizon
        self._events: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float, amount: float = 1.0) -> None:
        with self._lock:
            self._events.append((now, amount))
            self._trim(now)

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            return sum(amount for _, amount in self._events) / self.horizon

    def last(self) -> float | None:
        with self._lock:
            return self._events[-1][0] if self._events else None

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.horizon:
            self._events.popleft()


@dataclass
class _Job:
    """One window ready for inference."""

    end: float
    window: Any
    frame_msg: Any
    frame_stamp: float
    reset_reason: str | None


class _Stats:
    """Counters and recent measurements for /diagnostics (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()
        self.image_rate = RateMeter()
        self.audio_rate = RateMeter()
        self.audio_seconds = RateMeter()
        self.window_rate = RateMeter()
        self.latency: deque[float] = deque(maxlen=50)
        self.stages: deque[dict[str, float]] = deque(maxlen=50)
        self.steps: deque[int] = deque(maxlen=50)
        self.last_error = ''
        self.last_input_problem = ''
        self.previous: Counter[str] = Counter()

    def add(self, key: str, amount: float = 1) -> None:
        with self.lock:
            self.counts[key] += amount

    def problem(self, key: str, message: str) -> None:
        with self.lock:
            self.counts[key] += 1
            self.last_input_problem = message

    def since_last_report(self) -> Counter[str]:
        """Counter increments since the previous call (for per-period WARN decisions)."""
        with self.lock:
            delta = Counter({k: v - self.previous.get(k, 0) for k, v in self.counts.items()})
            self.previous = Counter(self.counts)
        return delta


def _mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


class TacoNode(LifecycleNode):
    """Lifecycle node running TACO on a camera and a microphone stream (see module docstring)."""

    def __init__(self, node_name: str = params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        params.declare_all(self)
        self._p: dict[str, Any] = {spec.name: self._read(spec.name) for spec in params.PARAMETERS}
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._inference_group = MutuallyExclusiveCallbackGroup()
        self._input_lock = threading.Lock()
        self._pipeline_lock = threading.Lock()
        self._stats = _Stats()
        self._lifecycle = 'unconfigured'
        self._pipeline: Any = None
        self._audio = AudioRingBuffer()
        self._frames: FrameBuffer[Any] = FrameBuffer(max_frames=MAX_FRAMES)
        self._scheduler = WindowScheduler()
        self._reset_reason: str | None = None
        self._last_audio_wall = time.monotonic()
        self._raw_audio_info = conv.RawAudioInfo()
        self._audio_kind: str | None = None
        self._outputs: dict[str, Any] = {}
        self._input_subs: list[Any] = []
        self._owned_timers: list[Any] = []
        self._activation_timers: list[Any] = []
        self._audio_retry: Any = None
        self._vocabulary_service = None
        self._diagnostics_pub = None
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    # ------------------------------------------------------------------ parameters
    def _read(self, name: str) -> Any:
        value = self.get_parameter(name).value
        if name == 'vocabulary':
            # An empty list may come back as an empty byte array or unset from YAML.
            return [str(w) for w in value] if value else []
        return value

    def _validate_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """on_set: refuse bad values with a reason; no side effects here."""
        proposed = dict(self._p)
        for change in changes:
            name = change.name
            spec = params.PARAMETERS_BY_NAME.get(name)
            if spec is None:
                continue
            value = change.value
            if name == 'vocabulary':
                value = [str(w) for w in value] if value else []
            if spec.type_name == 'double' and isinstance(value, int) and not isinstance(value, bool):
                return SetParametersResult(
                    successful=False, reason=f'{name} has type int, it must be a double '
                    f'(write {value}.0)')
            reason = params.validate(name, value)
            if reason is None and value != self._p.get(name):
                reason = self._timing_problem(spec)
            if reason is None and name == 'vocabulary' and self._pipeline is not None and value:
                reason = self._pipeline.vocabulary_problem(value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            proposed[name] = value
        reason = params.validate_together(proposed)
        pipeline = self._pipeline
        if reason is None and pipeline is not None:
            changed = {c.name: proposed[c.name] for c in changes if c.name in PIPELINE_PARAMETERS}
            if changed:
                reason = pipeline.update_problem(**self._pipeline_options(changed))
        return SetParametersResult(successful=reason is None, reason=reason or '')

    def _timing_problem(self, spec: params.ParamSpec) -> str | None:
        """Why ``spec`` cannot change in the current lifecycle state (None when it can)."""
        if spec.applies == 'configure' and self._lifecycle in ('inactive', 'active'):
            return (f'{spec.name} is applied at configure: deactivate and clean up the node, '
                    'set it, then configure again')
        if spec.applies == 'activate' and self._lifecycle == 'active':
            return f'{spec.name} is applied at activate: deactivate the node, set it, activate'
        return None

    def _apply_parameters(self, changes: list[Parameter]) -> None:
        """post_set: apply accepted values (live ones take effect from the next window)."""
        pipeline_changes: dict[str, Any] = {}
        vocabulary = None
        threshold_changed = any(c.name == 'mask_threshold' for c in changes)
        for change in changes:
            if change.name not in params.PARAMETERS_BY_NAME:
                continue
            value = self._read(change.name)
            self._p[change.name] = value
            if change.name in PIPELINE_PARAMETERS:
                pipeline_changes[change.name] = value
            elif change.name == 'vocabulary':
                vocabulary = value
        with self._input_lock:
            self._scheduler.configure(self._p['window_sec'], self._p['hop_sec'])
            self._audio.stamp_tolerance = self._p['stamp_tolerance']
            self._frames.max_age_sec = self._frame_age()
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            if pipeline_changes:
                pipeline.update(**self._pipeline_options(pipeline_changes))
            if vocabulary is not None:
                pipeline.set_vocabulary(vocabulary or None)
                self.get_logger().info(f'vocabulary set: {len(pipeline.vocabulary)} words')
            if vocabulary is not None or threshold_changed:
                self._publish_label_info()
        except Exception as exc:  # the value passed validation; report what went wrong
            self.get_logger().error(f'could not apply parameters: {exc}')
            self._stats.last_error = f'parameters: {exc}'

    def _frame_age(self) -> float:
        centre = self._p['window_sec'] / 2 if self._p['pair_with'] == 'centre' else 0.0
        return centre + self._p['pair_tolerance'] + self._p['frame_wait'] + 1.0

    def _pipeline_options(self, values: dict[str, Any]) -> dict[str, Any]:
        """Node parameter values → PipelineConfig fields."""
        options = {k: v for k, v in values.items() if k != 'solver_max_steps'}
        if 'solver_max_steps' in values:
            steps = int(values['solver_max_steps'])
            options['solver_overrides'] = {'max_steps': steps} if steps > 0 else {}
        return options

    def pipeline_config(self) -> Any:
        """The PipelineConfig the current parameters describe."""
        from taco_ros.core.pipeline import PipelineConfig

        p = self._p
        return PipelineConfig(
            model_config=p['model_config'], model_dir=p['model_dir'] or None,
            device=p['device'], precision=p['precision'], mode=p['mode'],
            anchors=p['anchors'] or None, vocabulary=p['vocabulary'] or None,
            solver_profile=p['solver_profile'],
            solver_overrides=self._pipeline_options({'solver_max_steps': p['solver_max_steps']})[
                'solver_overrides'],
            mask_threshold=p['mask_threshold'], min_component_area=p['min_component_area'],
            top_k=p['top_k'], audio_context=p['audio_context'], resize=p['resize'],
            allow_random_weights=p['allow_random_weights'], seed=p['seed'],
            silence_rms=p['silence_rms'])

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> bool:
        """configure + activate (what ``autostart`` does); False if either fails."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from taco_ros.core.model_files import ModelFileNotFound
        from taco_ros.core.pipeline import TacoPipeline

        self._p = {spec.name: self._read(spec.name) for spec in params.PARAMETERS}
        reason = params.validate_together(self._p)
        if reason:
            self.get_logger().error(f'configure failed: {reason}')
            return TransitionCallbackReturn.FAILURE
        config = self.pipeline_config()
        self.get_logger().info(
            f'loading model config {config.model_config!r} on device {config.device!r} '
            f'(mode {config.mode})')
        started = time.perf_counter()
        try:
            self._pipeline = TacoPipeline(config)
        except ModelFileNotFound as exc:
            self.get_logger().error(
                f'configure failed, model files are missing:\n{exc}\nFetch them, set model_dir, '
                'or set allow_random_weights:=true for a test run (meaningless output).')
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:
            self.get_logger().error(f'configure failed: {exc}\n{traceback.format_exc()}')
            return TransitionCallbackReturn.FAILURE
        pipeline = self._pipeline
        self.get_logger().info(
            f'models ready on {pipeline.device} in {time.perf_counter() - started:.1f} s, '
            f'{len(pipeline.vocabulary)} vocabulary words')
        if pipeline.random_weights:
            self.get_logger().warning(RANDOM_WEIGHTS_WARNING)
        for note in pipeline.notes:
            self.get_logger().warning(note)
        self._make_buffers()
        self._make_publishers()
        self._vocabulary_service = self.create_service(
            SetVocabulary, params.SERVICE_SET_VOCABULARY, self._on_set_vocabulary)
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, params.TOPIC_DIAGNOSTICS, 10)
        self._owned_timers.append(self.create_timer(
            self._p['diagnostics_period'], self._publish_diagnostics))
        self._lifecycle = 'inactive'
        return super().on_configure(state)

    def _make_buffers(self) -> None:
        with self._input_lock:
            self._audio = AudioRingBuffer(
                capacity_sec=self._p['buffer_sec'], stamp_tolerance=self._p['stamp_tolerance'])
            self._frames = FrameBuffer(max_age_sec=self._frame_age(), max_frames=MAX_FRAMES)
            self._scheduler = WindowScheduler(self._p['window_sec'], self._p['hop_sec'])
            self._reset_reason = None

    def _make_publishers(self) -> None:
        reliable = QoSProfile(depth=params.OUTPUT_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        make = self.create_lifecycle_publisher
        self._outputs = {
            'mask': make(Image, params.TOPIC_MASK, reliable),
            'objects': make(SoundingObjectArray, params.TOPIC_OBJECTS, reliable),
            'activation': make(AudioActivation, params.TOPIC_AUDIO_ACTIVATION, reliable),
            'debug': make(Image, params.TOPIC_DEBUG_IMAGE, reliable),
            'label_info': make(LabelInfo, params.TOPIC_LABEL_INFO, latched),
        }

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._pipeline.resume()
        except Exception as exc:
            self.get_logger().error(f'activate failed: could not load the models: {exc}')
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)
        self._make_buffers()
        self._subscribe_image()
        self._subscribe_audio()
        self._activation_timers.append(self.create_timer(
            TICK_PERIOD, self._on_tick, callback_group=self._inference_group))
        self._lifecycle = 'active'
        self._publish_label_info()
        return result

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle = 'inactive'
        self._release_activation_entities()
        with self._pipeline_lock:  # wait for the window in flight
            if self._pipeline is not None:
                self._pipeline.reset()
                self._pipeline.suspend()
        self._make_buffers()
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_everything()
        self._lifecycle = 'unconfigured'
        return super().on_cleanup(state)

    @_logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_everything()
        self._lifecycle = 'finalized'
        return super().on_shutdown(state)

    @_logged_transition
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f'error in state {state.label}; releasing everything')
        self._release_everything()
        self._lifecycle = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Free the models and every ROS entity the node created (before destroy_node)."""
        self._lifecycle = 'finalized'
        self._release_everything()

    def _release_activation_entities(self) -> None:
        for timer in self._activation_timers:
            self.destroy_timer(timer)
        self._activation_timers = []
        self._audio_retry = None
        for subscription in self._input_subs:
            self.destroy_subscription(subscription)
        self._input_subs = []
        self._audio_kind = None

    def _release_everything(self) -> None:
        self._release_activation_entities()
        for timer in self._owned_timers:
            self.destroy_timer(timer)
        self._owned_timers = []
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if self._vocabulary_service is not None:
            self.destroy_service(self._vocabulary_service)
            self._vocabulary_service = None
        if self._diagnostics_pub is not None:
            self.destroy_publisher(self._diagnostics_pub)
            self._diagnostics_pub = None
        with self._pipeline_lock:
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None
        self._make_buffers()

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
                                      throttle_duration_sec=5.0)
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

    def _create_audio_subscription(self, kind: str, msg_type: Any) -> None:
        qos = params.qos_profile(self._p['audio_qos'], self._p['audio_qos_depth'])
        subscription = self.create_subscription(
            msg_type, params.TOPIC_AUDIO, self._on_audio, qos, callback_group=self._input_group)
        self._input_subs.append(subscription)
        if kind in (conv.AUDIO_DATA, conv.AUDIO_DATA_STAMPED):
            module = conv.audio_message_class(conv.AUDIO_DATA).__module__
            info_cls = importlib.import_module(module).AudioInfo
            self._input_subs.append(self.create_subscription(
                info_cls, params.TOPIC_AUDIO_INFO, self._on_audio_info,
                params.qos_profile('best_effort', 1), callback_group=self._input_group))
        self._audio_kind = kind
        self.get_logger().info(
            f'audio: {self.resolve_topic_name(params.TOPIC_AUDIO)} ({kind}, QoS '
            f'{self._p["audio_qos"]}: {qos.reliability.name.lower()}, depth {qos.depth})')

    # ------------------------------------------------------------------ input callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, msg: Any) -> None:
        """Check the frame (no pixel copy) and store it for pairing; decoding happens only for
        the frame a window is paired with."""
        now = self._now()
        self._stats.image_rate.tick(time.monotonic())
        try:
            if isinstance(msg, CompressedImage):
                conv.check_compressed(msg)
            else:
                conv.check_image(msg, self._p['max_image_pixels'])
        except ValueError as exc:
            self._stats.problem('bad_images', f'image: {exc}')
            self.get_logger().warning(f'dropping image: {exc}', throttle_duration_sec=5.0)
            return
        stamp = conv.stamp_to_sec(msg.header.stamp)
        if stamp <= 0.0:
            # Unset stamp: pair by receipt time, keep the header as it came for the outputs.
            self._stats.problem('zero_stamp_images', 'image with a zero stamp')
            self.get_logger().warning(
                'image header stamp is zero; pairing it by receipt time', throttle_duration_sec=5.0)
            stamp = now
        with self._input_lock:
            jumped = self._frames.push(stamp, msg)
        if jumped:
            self._request_reset('camera time jumped back')

    def _decode_audio(self, msg: Any) -> conv.AudioChunkData:
        kind = self._audio_kind
        if kind == conv.AUDIO_TACO:
            return conv.decode_audio_chunk(msg)
        if kind in (conv.AUDIO_INT16_MULTIARRAY, conv.AUDIO_FLOAT32_MULTIARRAY):
            return conv.decode_multiarray(msg, self._p['audio_sample_rate'],
                                          self._p['audio_channels'])
        if kind == conv.AUDIO_COMMON_STAMPED:
            return conv.decode_audio_common_stamped(msg)
        return conv.decode_audio_data(msg, self._raw_audio_info)

    def _on_audio_info(self, msg: Any) -> None:
        self._raw_audio_info = conv.RawAudioInfo.from_msg(msg)

    def _on_audio(self, msg: Any) -> None:
        """Decode one chunk and place it in the ring buffer by its capture stamp."""
        now = self._now()
        try:
            chunk = self._decode_audio(msg)
            mono = conv.select_channel(chunk.samples, self._p['audio_channel'])
        except ValueError as exc:
            self._stats.problem('bad_audio', f'audio: {exc}')
            self.get_logger().warning(f'dropping audio chunk: {exc}', throttle_duration_sec=5.0)
            return
        if mono.size == 0:
            self._stats.problem('empty_audio', 'audio chunk with no samples')
            return
        tolerance = None
        stamp = chunk.stamp
        if stamp is None:
            # No capture stamp (multiarray, zero header): best guess is receipt minus duration.
            self._stats.add('unstamped_audio')
            stamp = now - chunk.duration
            tolerance = max(RECEIPT_STAMP_TOLERANCE, self._p['stamp_tolerance'])
        self._last_audio_wall = time.monotonic()
        self._stats.audio_rate.tick(self._last_audio_wall)
        self._stats.audio_seconds.tick(self._last_audio_wall, chunk.duration)
        with self._input_lock:
            try:
                report = self._audio.push(mono, stamp, chunk.sample_rate, tolerance=tolerance)
            except ValueError as exc:
                self._stats.problem('bad_audio', f'audio: {exc}')
                return
            if report.reset is not None:
                self._scheduler.reset()
                self._reset_reason = f'audio buffer reset ({report.reset})'
        if report.reset is not None:
            self._stats.resets[report.reset] += 1
            self.get_logger().info(f'audio buffer restarted: {report.reset}')
        if report.gap_sec > 0:
            self._stats.add('audio_gaps')
            self._stats.add('audio_gap_ms', report.gap_sec * 1e3)
        if report.late_sec > 0:
            self._stats.add('late_audio_chunks')
        if report.dropped:
            self._stats.add('dropped_audio_samples', report.dropped)

    def _request_reset(self, reason: str) -> None:
        with self._input_lock:
            self._audio.clear()
            self._frames.clear()
            self._scheduler.reset()
            self._reset_reason = reason
        self._stats.resets[reason] += 1
        self.get_logger().info(f'inputs restarted: {reason}')

    # ------------------------------------------------------------------ inference
    def _on_tick(self) -> None:
        if self._lifecycle != 'active' or not self._pipeline_lock.acquire(blocking=False):
            return
        try:
            job = self._next_job()
            if job is not None and self._pipeline is not None:
                self._run(job)
        finally:
            self._pipeline_lock.release()

    def _next_job(self) -> _Job | None:
        """The newest complete window and its frame, or None (nothing due, or still waiting for
        a frame). Windows passed over are counted as dropped."""
        p = self._p
        with self._input_lock:
            if self._audio.empty:
                return None
            due = self._scheduler.due(self._audio.start_time, self._audio.end_time)
            if due is None:
                return None
            end, skipped = due
            window_sec = self._scheduler.window_sec
            target = end if p['pair_with'] == 'end' else end - window_sec / 2
            # Pair with what is there once the audio has run past the wait, or once the audio has
            # stopped (end of a bag or stream): no later frame will come.
            stalled = time.monotonic() - self._last_audio_wall > AUDIO_STALL_SEC
            final = stalled or self._audio.end_time - target >= p['frame_wait']
            pairing = self._frames.pair(target, p['pair_tolerance'], final)
            if pairing.status == 'wait':
                return None
            self._scheduler.mark_done(end)
            if pairing.status == 'missing':
                window = None
            else:
                history = 7.0 if p['audio_context'] == 'history' else 0.0
                window = self._audio.window(end - window_sec, window_sec, history_sec=history)
            reset_reason, self._reset_reason = self._reset_reason, None
        if skipped:
            self._stats.add('dropped_busy', skipped)
            self.get_logger().warning(
                f'inference is behind: skipped {skipped} window(s)', throttle_duration_sec=5.0)
        if window is None:
            self._stats.add('dropped_no_frame')
            self.get_logger().warning(
                f'no camera frame within {p["pair_tolerance"]} s of a window; window dropped',
                throttle_duration_sec=5.0)
            return None
        return _Job(end, window, pairing.item, pairing.stamp, reset_reason)

    def _run(self, job: _Job) -> None:
        pipeline = self._pipeline
        try:
            if isinstance(job.frame_msg, CompressedImage):
                frame = conv.compressed_to_rgb(job.frame_msg, self._p['max_image_pixels'])
            else:
                frame = conv.image_to_rgb(job.frame_msg, self._p['max_image_pixels'])
        except ValueError as exc:
            self._stats.problem('bad_images', f'image: {exc}')
            self.get_logger().warning(f'dropping window, its frame is unusable: {exc}',
                                      throttle_duration_sec=5.0)
            return
        gap_sec = job.window.gap_fraction * job.window.duration
        if job.reset_reason is not None or (gap_sec > 0 and gap_sec >= self._p['cold_start_gap']):
            pipeline.reset()
            self._stats.add('forced_cold_starts')
        try:
            result = pipeline.process(frame, job.window)
        except Exception as exc:
            self._stats.add('errors')
            self._stats.last_error = f'{type(exc).__name__}: {exc}'
            self.get_logger().error(f'window failed: {exc}\n{traceback.format_exc()}',
                                    throttle_duration_sec=5.0)
            return
        self._publish(result, job, frame)
        latency = self._now() - job.end
        with self._stats.lock:
            self._stats.counts['windows'] += 1
            self._stats.counts['silent_windows'] += int(not result.sounding)
            self._stats.latency.append(latency)
            self._stats.stages.append(dict(result.timings))
            self._stats.steps.append(int(result.steps))
        self._stats.window_rate.tick(time.monotonic())
        if result.random_weights:
            self.get_logger().warning(RANDOM_WEIGHTS_WARNING)

    # ------------------------------------------------------------------ outputs
    def _publish(self, result: Any, job: _Job, frame: np.ndarray) -> None:
        header = job.frame_msg.header
        window = job.window
        audio_start = conv.sec_to_stamp(window.start)
        audio_end = conv.sec_to_stamp(window.start + window.duration)
        pubs = self._outputs
        pubs['mask'].publish(conv.numpy_to_image(result.mask, header, 'mono8'))
        objects = SoundingObjectArray(
            header=header, audio_start=audio_start, audio_end=audio_end,
            sounding=bool(result.sounding), confidence=float(result.confidence),
            solver_steps=int(result.steps), cold_start=bool(result.cold_start),
            mode=str(result.mode))
        objects.objects = [self._object_msg(obj) for obj in result.objects]
        pubs['objects'].publish(objects)
        label = result.objects[0].label if result.objects else ''
        pubs['activation'].publish(AudioActivation(
            header=header, audio_start=audio_start,
            window_duration=float(result.window_duration),
            token_duration=float(result.token_duration),
            activation=np.asarray(result.activation, np.float32).tolist(),
            time_offset=np.asarray(result.token_offsets, np.float32).tolist(),
            label=label, factor_index=max(0, int(result.k_star))))
        debug = pubs['debug']
        if debug.get_subscription_count() > 0:
            from taco_ros.overlay import draw_debug

            image = draw_debug(frame, result, self._p['debug_alpha'])
            debug.publish(conv.numpy_to_image(image, header, 'rgb8'))

    @staticmethod
    def _object_msg(obj: Any) -> SoundingObject:
        msg = SoundingObject(
            mask_value=int(obj.mask_value), label=str(obj.label), score=float(obj.score),
            top_labels=[str(w) for w in obj.top_labels],
            top_scores=[float(s) for s in obj.top_scores],
            confidence=float(obj.confidence), audio_activation=float(obj.audio_activation),
            factor_index=int(obj.factor_index))
        x, y, w, h = (int(v) for v in obj.bbox)
        msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height = x, y, w, h
        return msg

    def _publish_label_info(self) -> None:
        publisher = self._outputs.get('label_info')
        pipeline = self._pipeline
        if publisher is None or pipeline is None or self._lifecycle != 'active':
            return
        msg = LabelInfo(threshold=float(self._p['mask_threshold']))
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VocabularyClass(class_id=i, class_name=word)
                         for i, word in enumerate(pipeline.vocabulary)]
        publisher.publish(msg)

    def _on_set_vocabulary(self, request: Any, response: Any) -> Any:
        words = [str(w) for w in request.words]
        result = self.set_parameters([Parameter(
            'vocabulary', Parameter.Type.STRING_ARRAY, words)])[0]
        response.success = bool(result.successful)
        if result.successful:
            count = len(self._pipeline.vocabulary) if self._pipeline is not None else len(words)
            response.message = f'vocabulary set: {count} words, used from the next window'
        else:
            response.message = result.reason
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if self._diagnostics_pub is None:
            return
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        delta = self._stats.since_last_report()
        msg.status = [self._inputs_status(delta), self._inference_status(delta)]
        self._diagnostics_pub.publish(msg)

    def _inputs_status(self, delta: Counter[str]) -> DiagnosticStatus:
        stats, now = self._stats, time.monotonic()
        with self._input_lock:
            fill = self._audio.fill
            rate = self._audio.sample_rate or 0
            frames = len(self._frames)
        values = {
            'image rate (Hz)': f'{stats.image_rate.rate(now):.1f}',
            'audio chunk rate (Hz)': f'{stats.audio_rate.rate(now):.1f}',
            'audio seconds per second': f'{stats.audio_seconds.rate(now):.2f}',
            'audio sample rate': str(rate),
            'audio message type': str(self._audio_kind or self._p['audio_msg_type']),
            'audio buffer fill': f'{fill:.2f}',
            'frames held': str(frames),
        }
        for key in ('bad_images', 'zero_stamp_images', 'bad_audio', 'empty_audio',
                    'unstamped_audio', 'audio_gaps', 'audio_gap_ms', 'late_audio_chunks',
                    'dropped_audio_samples'):
            values[key.replace('_', ' ')] = f'{stats.counts.get(key, 0):g}'
        values['buffer resets'] = ', '.join(f'{k}: {v}' for k, v in stats.resets.items()) or '0'
        level, message = DiagnosticStatus.OK, 'inputs ok'
        problems = sum(delta.get(k, 0) for k in ('bad_images', 'bad_audio', 'zero_stamp_images',
                                                 'empty_audio'))
        if self._lifecycle == 'active':
            timeout = self._p['input_timeout']
            silent = [name for name, meter in (('image', stats.image_rate),
                                               ('audio', stats.audio_rate))
                      if meter.last() is None or now - meter.last() > timeout]
            if silent:
                level = DiagnosticStatus.WARN
                message = f'no {" and no ".join(silent)} input for {timeout:g} s'
        if problems:
            level = DiagnosticStatus.WARN
            message = f'{problems:g} bad input message(s): {stats.last_input_problem}'
        return DiagnosticStatus(
            level=level, name=f'{self.get_name()}: inputs', message=message,
            hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def _inference_status(self, delta: Counter[str]) -> DiagnosticStatus:
        stats = self._stats
        pipeline = self._pipeline
        with stats.lock:
            latency = list(stats.latency)
            stages = list(stats.stages)
            steps = list(stats.steps)
            counts = Counter(stats.counts)
        values = {
            'state': self._lifecycle,
            'device': str(pipeline.device) if pipeline is not None else '',
            'model config': self._p['model_config'],
            'mode': self._p['mode'],
            'random weights': str(bool(pipeline is not None and pipeline.random_weights)),
            'windows processed': str(counts.get('windows', 0)),
            'window rate (Hz)': f'{stats.window_rate.rate(time.monotonic()):.2f}',
            'silent windows': str(counts.get('silent_windows', 0)),
            'dropped windows (busy)': f'{counts.get("dropped_busy", 0):g}',
            'dropped windows (no frame)': f'{counts.get("dropped_no_frame", 0):g}',
            'forced cold starts': f'{counts.get("forced_cold_starts", 0):g}',
            'errors': f'{counts.get("errors", 0):g}',
            'last error': stats.last_error,
            'window latency last (ms)': f'{latency[-1] * 1e3:.0f}' if latency else '',
            'window latency mean (ms)': f'{_mean(latency) * 1e3:.0f}' if latency else '',
            'window latency max (ms)': f'{max(latency) * 1e3:.0f}' if latency else '',
            'solver steps mean': f'{_mean(steps):.1f}' if steps else '',
        }
        for stage in sorted({k for timing in stages for k in timing}):
            values[f'{stage} mean (ms)'] = f'{_mean(t.get(stage, 0.0) for t in stages):.1f}'
        values.update(self._gpu_memory(pipeline))
        level, message = DiagnosticStatus.OK, 'ok'
        last = latency[-1] if latency else 0.0
        if self._lifecycle != 'active':
            message = self._lifecycle
        elif delta.get('errors', 0):
            level, message = DiagnosticStatus.ERROR, f'window failed: {stats.last_error}'
        elif last > self._p['latency_error']:
            level, message = DiagnosticStatus.ERROR, f'window latency {last:.2f} s'
        elif last > self._p['latency_warn']:
            level, message = DiagnosticStatus.WARN, f'window latency {last:.2f} s'
        elif delta.get('dropped_busy', 0) or delta.get('dropped_no_frame', 0):
            level = DiagnosticStatus.WARN
            message = (f'dropped {delta.get("dropped_busy", 0):g} window(s) while busy, '
                       f'{delta.get("dropped_no_frame", 0):g} without a frame')
        elif pipeline is not None and pipeline.random_weights:
            level, message = DiagnosticStatus.WARN, 'RANDOM WEIGHTS: outputs are meaningless'
        return DiagnosticStatus(
            level=level, name=f'{self.get_name()}: inference', message=message,
            hardware_id=values['device'],
            values=[KeyValue(key=k, value=v) for k, v in values.items()])

    @staticmethod
    def _gpu_memory(pipeline: Any) -> dict[str, str]:
        if pipeline is None or pipeline.device.type != 'cuda':
            return {}
        import torch

        allocated = torch.cuda.memory_allocated(pipeline.device) / 2 ** 20
        reserved = torch.cuda.memory_reserved(pipeline.device) / 2 ** 20
        return {'GPU memory allocated (MiB)': f'{allocated:.0f}',
                'GPU memory reserved (MiB)': f'{reserved:.0f}'}


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run taco_ros taco_node``."""
    rclpy.init(args=args)
    node = TacoNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter('autostart').value and not node.start():
            node.get_logger().fatal('taco_node did not start (see the error above)')
            code = 1
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == '__main__':
    raise SystemExit(main())

