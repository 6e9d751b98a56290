"""taco_node: camera + microphone topics → sounding-object masks, labels and audio activations.

A ``rclpy.lifecycle.LifecycleNode`` around :class:`taco_ros.core.pipeline.TacoPipeline`:

* configure: check the parameters, load the models and the anchor bank, create publishers and the
  ``set_vocabulary`` service (fails with a clear message when a parameter is refused or model files
  are missing, unless ``allow_random_weights``); then freeze the objects alive (``gc.freeze()``):
  the garbage collector's full passes no longer walk the models' half a million objects, which held
  the GIL, and so the input callbacks, for 0.4-0.6 s each;
* activate: subscribe to the camera (and its camera_info) and the microphone, start the inference
  timer, publish ``label_info`` (transient local);
* deactivate: unsubscribe, wait for the window in flight, move the models off the GPU;
* cleanup: release the models, the buffered audio and frames and every ROS entity, then return the
  memory: ``gc.unfreeze()``, ``gc.collect()``, ``torch.cuda.empty_cache()`` when CUDA was used, and
  glibc's ``malloc_trim`` (freed heap back to the system). What the process keeps: the imported libraries
  (torch, open_clip, msclap, cv2), the CUDA context once CUDA was initialised (a few hundred MB of
  GPU memory, freed only when the process exits), the parameters, and the counters reported on
  /diagnostics (windows, drops, restarts: they describe the node's whole life).

With ``autostart`` (default) :func:`main` runs configure + activate itself.

Optional outputs (:mod:`taco_ros.optional_outputs`): with vision_msgs 4.x importable, ``~/detections``
and ``~/vision_label_info`` are published too; without it the node runs on taco_msgs alone and says
so once at configure. With ``use_depth`` an aligned depth image places each object in 3D
(:mod:`taco_ros.depth_input`): SoundingObject position and size, ``~/detections_3d`` and
``~/markers`` (visualization_msgs). The topics, QoS and mask values: docs/ros_interface.md.

Threads: the executor (single-threaded: every callback is short) runs the image and audio
callbacks (:mod:`taco_ros.node_inputs`), which only check and store, and the services and timers.
While active, a window thread of its own (:mod:`taco_ros.window_worker`) asks the window policy
(:class:`taco_ros.core.windows.WindowPolicy`) for the next window and its frame, runs the pipeline
and publishes (:mod:`taco_ros.outputs`). ``window_queue`` 0 takes the newest window
and counts the ones passed over as dropped; N > 0 processes up to N due windows in order.
Parameters: :mod:`taco_ros.node_parameters`; /diagnostics: :mod:`taco_ros.diagnostics`.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from taco_msgs.msg import AudioActivation, LabelInfo, SoundingObjectArray
from taco_msgs.srv import SetVocabulary
from taco_ros import conversions as conv
from taco_ros import diagnostics, interop, optional_outputs, outputs, params
from taco_ros.audio_formats import RawAudioGate
from taco_ros.core.contract import TacoResult
from taco_ros.core.windows import WindowJob, WindowPolicy
from taco_ros.depth_input import DepthInput
from taco_ros.node_inputs import THROTTLE_SEC, CameraInfoStore, NodeInputs
from taco_ros.node_parameters import NodeParameters
from taco_ros.vocabulary_worker import VocabularyWorker
from taco_ros.window_worker import WindowWorker

if TYPE_CHECKING:
    from taco_ros.core.pipeline import TacoPipeline

FrameMsg = Image | CompressedImage
# How often the window thread looks for a due window. Short, so the latency added by polling is
# small next to the window itself; a tick with nothing to do costs microseconds.
TICK_PERIOD = 0.01
# Frames held for pairing per camera time line (messages: 0.9 MB each for raw 640x480 rgb8).
MAX_FRAMES = 256
BACKOFF_WARNING = ('co-NMF objective went non-finite; the solver went back to its last finite point with '
                   'a smaller step and kept the window (/diagnostics: solver step back-offs)')
RANDOM_WEIGHTS_WARNING = ('RANDOM WEIGHTS: allow_random_weights is set and model files are missing; '
                          'masks and labels are meaningless')


def _logged_transition(method: Callable[[TacoNode, LifecycleState], TransitionCallbackReturn]
                       ) -> Callable[[TacoNode, LifecycleState], TransitionCallbackReturn]:
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


class TacoNode(NodeParameters, NodeInputs, LifecycleNode):
    """Lifecycle node running TACO on a camera and a microphone stream (see module docstring)."""

    def __init__(self, node_name: str = params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._input_lock = threading.Lock()
        self._pipeline_lock = threading.Lock()
        self._stats = diagnostics.NodeStats()
        self._lifecycle = 'unconfigured'
        self._pipeline: TacoPipeline | None = None
        self._policy: WindowPolicy[FrameMsg] = WindowPolicy(max_frames=MAX_FRAMES)
        self._raw_gate = RawAudioGate()
        self._latched_info_sub: Any = None
        self._camera_infos = CameraInfoStore()
        self._depth = DepthInput(self)
        self._audio_kind: str | None = None
        self._outputs: dict[str, Any] = {}
        self._optional_off = ''
        self._input_subs: list[Any] = []
        self._owned_timers: list[Any] = []
        self._activation_timers: list[Any] = []
        self._worker: WindowWorker | None = None
        self._vocabulary_worker = VocabularyWorker(self._set_vocabulary, self._vocabulary_failed)
        self._audio_retry: Any = None
        self._vocabulary_service: Any = None
        self._diagnostics_pub: Any = None
        self._declare_parameters()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> bool:
        """configure + activate (what ``autostart`` does); False if either fails."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._p = self._read_all()
        reason = self._configure_problem()
        if reason:
            self.get_logger().error(f'configure failed: {reason}')
            return TransitionCallbackReturn.FAILURE
        if not self._load_pipeline():
            return TransitionCallbackReturn.FAILURE
        self._reset_inputs()
        self._make_publishers()
        self._vocabulary_service = self.create_service(
            SetVocabulary, params.SERVICE_SET_VOCABULARY, self._on_set_vocabulary)
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, params.TOPIC_DIAGNOSTICS, 10)
        self._owned_timers.append(self.create_timer(
            self._p['diagnostics_period'], self._publish_diagnostics))
        self._lifecycle = 'inactive'
        return super().on_configure(state)

    def _load_pipeline(self) -> bool:
        from taco_ros.core.model_files import ModelFileNotFound
        from taco_ros.core.pipeline import TacoPipeline

        config = self.pipeline_config()
        log = self.get_logger()
        log.info(f'loading model config {config.model_config!r} on device {config.device!r} '
                 f'(mode {config.mode})')
        started = time.perf_counter()
        try:
            pipeline = TacoPipeline(config)
        except ModelFileNotFound as exc:
            log.error(f'configure failed, model files are missing:\n{exc}\nFetch them, set '
                      'model_dir, or set allow_random_weights:=true for a test run (meaningless '
                      'output).')
            return False
        except Exception as exc:
            log.error(f'configure failed: {exc}\n{traceback.format_exc()}')
            return False
        log.info(f'models ready on {pipeline.device} in {time.perf_counter() - started:.1f} s, '
                 f'{len(pipeline.vocabulary)} vocabulary words')
        if pipeline.random_weights:
            log.warning(RANDOM_WEIGHTS_WARNING)
        for note in pipeline.notes:
            log.warning(note)
        self._pipeline = pipeline
        _freeze_long_lived()
        return True

    def _reset_inputs(self) -> None:
        """Empty the window policy (audio, frames, grid) with the current window settings."""
        with self._input_lock:
            self._policy.configure(self.window_settings())
            self._policy.reset()
            self._camera_infos.clear()
        self._depth.clear()

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
            'camera_info': make(CameraInfo, params.TOPIC_PAIRED_CAMERA_INFO, reliable),
        }
        extra, self._optional_off = optional_outputs.make_publishers(make, reliable, latched,
                                                                     self.get_logger())
        self._outputs.update(extra)

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._pipeline.resume()
        except Exception as exc:
            self.get_logger().error(f'activate failed: could not load the models: {exc}')
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)
        self._reset_inputs()
        self._subscribe_image()
        self._subscribe_camera_info()
        self._depth.subscribe()
        self._subscribe_audio()
        self._lifecycle = 'active'
        self._worker = WindowWorker(self._on_tick, TICK_PERIOD, self._window_failed)
        self._worker.start()
        self._publish_label_info()
        return result

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._vocabulary_worker.wait_idle()   # suspending moves the encoders it may be using
        self._lifecycle = 'inactive'
        self._release_activation_entities()
        with self._pipeline_lock:  # wait for the window in flight
            if self._pipeline is not None:
                self._pipeline.reset()
                self._pipeline.suspend()
        self._reset_inputs()
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
        if self._worker is not None:     # after the window in flight
            self._worker.stop()
            self._worker = None
        for timer in self._activation_timers:
            self.destroy_timer(timer)
        self._activation_timers = []
        self._audio_retry = None
        for subscription in self._input_subs:
            self.destroy_subscription(subscription)
        self._input_subs = []
        self._latched_info_sub = None
        self._audio_kind = None

    def _release_everything(self) -> None:
        self._vocabulary_worker.wait_idle()   # before the pipeline it encodes with is closed
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
            pipeline, self._pipeline = self._pipeline, None
            if pipeline is not None:
                pipeline.close()
            del pipeline
        with self._input_lock:
            self._policy.reset()
        self._stats.clear_measurements()
        gc.unfreeze()     # the models' objects can be collected again
        _return_memory()

    # ------------------------------------------------------------------ inference
    def _on_tick(self) -> None:
        if self._lifecycle != 'active' or not self._pipeline_lock.acquire(blocking=False):
            return
        try:
            queue = int(self._p['window_queue'])
            with self._input_lock:
                before = Counter(self._policy.drops)
                job = self._policy.next_job(time.monotonic(), newest_only=queue == 0,
                                            max_backlog=queue or None)
                dropped = self._policy.drops - before
            self._warn_dropped(dropped)
            if job is not None and self._pipeline is not None:
                self._run(job)
        finally:
            self._pipeline_lock.release()

    def _window_failed(self, exc: Exception) -> None:
        """A window raised (the model, the solver, a frame): count and log it; the next one runs."""
        self._stats.add('errors')
        self._stats.last_error = f'{type(exc).__name__}: {exc}'
        self.get_logger().error(f'window failed: {exc}\n{traceback.format_exc()}',
                                throttle_duration_sec=THROTTLE_SEC)

    def _warn_dropped(self, dropped: Counter[str]) -> None:
        causes = {'busy': 'inference is behind', 'no_frame': 'no camera frame within '
                  f'{self._p["pair_tolerance"]} s', 'frame_evicted': 'its frame was pushed out '
                  'of the frame store', 'expired': 'its audio left the buffer while queued',
                  'restart': 'the inputs restarted'}
        for cause, count in dropped.items():
            self.get_logger().warning(f'dropped {count} window(s): {causes.get(cause, cause)}',
                                      throttle_duration_sec=THROTTLE_SEC)

    def _run(self, job: WindowJob[FrameMsg]) -> None:
        pipeline = self._pipeline
        vocabulary = pipeline.vocabulary    # the words of this window's class ids
        try:
            frame = self._decode_frame(job.frame)
        except ValueError as exc:
            self._refuse('images', exc)
            with self._input_lock:
                self._policy.drops['unusable_frame'] += 1
            return
        if job.cold_reason is not None:
            pipeline.reset()
            self._stats.add('forced_cold_starts')
        result = pipeline.process(frame, job.window)   # an exception: _window_failed
        self._publish(result, job, frame, vocabulary)
        self._stats.window_done(self._now() - job.end, result, time.monotonic())
        if result.random_weights:
            self.get_logger().warning(RANDOM_WEIGHTS_WARNING, throttle_duration_sec=THROTTLE_SEC)
        if result.solver_backoffs:
            self.get_logger().warning(BACKOFF_WARNING, throttle_duration_sec=THROTTLE_SEC)

    def _decode_frame(self, msg: FrameMsg) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            return conv.compressed_to_rgb(msg, self._p['max_image_pixels'])
        return conv.image_to_rgb(msg, self._p['max_image_pixels'])

    # ------------------------------------------------------------------ outputs
    def _publish(self, result: TacoResult, job: WindowJob[FrameMsg], frame: np.ndarray,
                 vocabulary: list[str]) -> None:
        header = job.frame.header
        messages = outputs.window_messages(result, header, job.window, vocabulary,
                                           self._p['mask_encoding'])
        positions = self._depth.locate(result, job.frame_stamp)
        outputs.set_positions(messages.objects, positions)
        pubs = self._outputs
        pubs['mask'].publish(messages.mask)
        pubs['objects'].publish(messages.objects)
        pubs['activation'].publish(messages.activation)
        if pubs['debug'].get_subscription_count() > 0:
            pubs['debug'].publish(outputs.debug_image_message(
                frame, result, header, self._p['debug_alpha']))
        self._publish_camera_info(job, header)
        optional_outputs.publish(pubs, result, positions, vocabulary, header, self._p,
                                 self.get_logger(), self._stats)

    def _publish_camera_info(self, job: WindowJob[FrameMsg], header: Any) -> None:
        """The CameraInfo nearest the window's frame, re-stamped with the frame's header."""
        with self._input_lock:
            if not len(self._camera_infos):
                return
            info = self._camera_infos.nearest(job.frame_stamp, self._p['pair_tolerance'])
        if info is None:
            self._stats.add('unpaired_camera_info')
            return
        self._outputs['camera_info'].publish(outputs.paired_camera_info(info, header))

    def _publish_label_info(self) -> None:
        publisher = self._outputs.get('label_info')
        pipeline = self._pipeline
        if publisher is None or pipeline is None or self._lifecycle != 'active':
            return
        vocabulary, stamp = pipeline.vocabulary, self.get_clock().now().to_msg()
        publisher.publish(outputs.label_info_message(vocabulary, self._p['mask_threshold'], stamp))
        vision = self._outputs.get('vision_label_info')
        if vision is not None:
            header = Header(stamp=stamp)
            vision.publish(interop.label_info(vocabulary, header, self._p['mask_threshold']))

    def _on_set_vocabulary(self, request: SetVocabulary.Request,
                           response: SetVocabulary.Response) -> SetVocabulary.Response:
        words = [str(w) for w in request.words]
        result = self.set_parameters([Parameter(
            'vocabulary', Parameter.Type.STRING_ARRAY, words)])[0]
        response.success = bool(result.successful)
        if result.successful:
            what = f'{len(words)} words' if words else 'the default words'
            response.message = (f'vocabulary accepted: {what}; used from the first window after '
                                'they are encoded, announced on ~/label_info')
        else:
            response.message = result.reason
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if self._diagnostics_pub is None:
            return
        with self._input_lock:
            policy = self._policy
            state = diagnostics.PolicyState(
                fill=policy.fill, sample_rate=policy.sample_rate,
                frames_held=policy.frames_held, drops=Counter(policy.drops),
                restarts=Counter(policy.restarts), events=Counter(policy.events))
        pipeline = self._pipeline
        view = diagnostics.NodeView(
            name=self.get_fully_qualified_name(), lifecycle=self._lifecycle,
            parameters=dict(self._p), audio_kind=self._audio_kind,
            device=str(pipeline.device) if pipeline is not None else '',
            random_weights=bool(pipeline is not None and pipeline.random_weights),
            gpu_memory=diagnostics.gpu_memory(pipeline.device if pipeline is not None else None),
            raw_audio=self.raw_audio_state(), optional_off=self._optional_off)
        delta = self._stats.since_last_report(state.drops)
        now = time.monotonic()
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostics.inputs_status(view, self._stats, state, delta, now),
                      diagnostics.inference_status(view, self._stats, state, delta, now)]
        self._diagnostics_pub.publish(msg)


def _freeze_long_lived() -> None:
    """Move every object alive now (the models, the libraries) out of the garbage collector's
    reach. A full collection otherwise walks them all, with the GIL held: 0.4-0.6 s with taco_tiny
    loaded (half a million objects), during which no input callback runs. After the freeze a full
    collection takes under a millisecond. Cleanup unfreezes. Only the young generations are
    collected first: a full pass here would cost the same seconds once per configure."""
    gc.collect(1)
    gc.freeze()


def _return_memory() -> None:
    """Give memory freed by a cleanup back: Python cycles, the CUDA cache, the C heap."""
    gc.collect()
    torch = sys.modules.get('torch')
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):   # not glibc
        pass


def spin(executor: Executor) -> None:
    """``executor.spin()``, resumed when rclpy's executor trips over an entity that another thread
    destroyed while it was building its wait set (a lifecycle transition run by a service callback
    destroys subscriptions that way). The entity is gone on the next turn; the node runs on."""
    while True:
        try:
            executor.spin()
            return
        except InvalidHandle:
            continue


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run taco_ros taco_node``."""
    rclpy.init(args=args)
    node = TacoNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter('autostart').value and not node.start():
            node.get_logger().fatal('taco_node did not start (see the error above)')
            code = 1
        else:
            spin(executor)
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
