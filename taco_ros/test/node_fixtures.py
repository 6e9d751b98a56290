"""Helpers for the pipeline and taco_node tests: small random-weight model setups, message builders,
and an in-process DDS harness (the node under test plus a peer node that publishes camera and
microphone streams and records every output).

Everything here produces random-weight models: the outputs mean nothing and only their structure
is tested.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

TINY = 'taco_tiny'
WINDOW_TIMEOUT = 90.0   # seconds to wait for windows on a loaded 2-core machine
EVENT_TIMEOUT = 30.0    # seconds to wait for a counter, a diagnostics report or a service
FRAME_SHAPE = (120, 160)
RATE = 16000
CHUNK = 512          # 32 ms, the usual microphone block
FPS = 30.0
WORDS = ['dog', 'cat', 'car engine', 'speech', 'music', 'bird']


# ------------------------------------------------------------------------------------ models
def small_model_config(directory: str | Path, input_size: int = 128) -> Path:
    """taco_tiny with a smaller frame size (4×4 tokens at 128 px): same files, faster windows."""
    from taco_ros.core.models import load_model_config

    cfg = load_model_config(TINY)
    cfg['clip']['input_size'] = int(input_size)
    cfg['name'] = f'taco_tiny_{input_size}'
    path = Path(directory) / f'taco_tiny_{input_size}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2), encoding='utf-8')
    return path


def write_tiny_fcclip(model_dir: str | Path, seed: int = 0) -> Path:
    """A random FC-CLIP checkpoint for taco_tiny in the detectron2 layout ({'model': state})."""
    import torch

    from taco_ros.core.fcclip import FCCLIPConfig, build_fcclip
    from taco_ros.core.model_files import get_model_file
    from taco_ros.core.models import create_clip, load_model_config

    cfg = load_model_config(TINY)
    torch.manual_seed(seed)
    backbone = create_clip(cfg, allow_random_weights=True, with_text=False)
    model = build_fcclip(backbone, FCCLIPConfig.from_dict(dict(cfg['fcclip'])))
    path = Path(model_dir) / get_model_file(cfg['files']['fcclip']).filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'model': model.state_dict(), 'iteration': 1}, path)
    return path


def write_all_tiny_files(model_dir: str | Path, seed: int = 0) -> Path:
    """Every taco_tiny model file (CLIP, CLAP, GPT-2 dir, FC-CLIP) under ``model_dir``."""
    from encoder_fixtures import write_tiny_model_files

    write_tiny_model_files(model_dir, seed)
    write_tiny_fcclip(model_dir, seed)
    return Path(model_dir)


def isolate_model_search(monkeypatch: Any, tmp_path: Path) -> Path:
    """Point the model search path away from the user's cache; returns an empty model dir."""
    monkeypatch.delenv('TACO_MODEL_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg_cache'))
    empty = tmp_path / 'no_models'
    empty.mkdir(exist_ok=True)
    return empty


def noise_window(seconds: float = 1.0, rate: int = RATE, seed: int = 0, start: float = 100.0,
                 channels: int = 1) -> Any:
    from taco_ros.core.pipeline import AudioWindow

    rng = np.random.default_rng(seed)
    shape = (round(seconds * rate),) if channels == 1 else (round(seconds * rate), channels)
    return AudioWindow(samples=(0.1 * rng.standard_normal(shape)).astype(np.float32),
                       sample_rate=rate, start=start)


def make_frame(shape: tuple[int, int] = FRAME_SHAPE, seed: int = 0) -> np.ndarray:
    """A frame with a bright square on a noisy background (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 80, size=(*shape, 3), dtype=np.uint8)
    h, w = shape
    frame[h // 4:h // 2, w // 4:w // 2] = (230, 40, 40)
    return frame


# ------------------------------------------------------------------------------------ ROS
def unique_domain_id() -> int:
    """A ROS_DOMAIN_ID for this test process (FastDDS allows 0..232), away from the default 0."""
    return 10 + os.getpid() % 200


_modules_seen = itertools.count(1)


def module_domain_id() -> int:
    """A ROS_DOMAIN_ID for one test module's nodes, after the process's own: a node or peer that an
    earlier module left behind (a slow shutdown, a peer process) never reaches this module's topics."""
    return 10 + (os.getpid() + next(_modules_seen)) % 200


def stamp_msg(seconds: float) -> Any:
    from taco_ros.conversions import sec_to_stamp

    return sec_to_stamp(seconds)


def image_msg(frame: np.ndarray, stamp: float, encoding: str = 'rgb8', pad: int = 0,
              frame_id: str = 'camera') -> Any:
    """sensor_msgs/Image in ``encoding`` with ``pad`` bytes of row padding."""
    from sensor_msgs.msg import Image

    rgb = frame
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    pixels = {
        'rgb8': rgb, 'bgr8': rgb[..., ::-1],
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[..., ::-1], alpha], axis=2),
        'mono8': rgb[..., :1],
    }[encoding]
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    if pad:
        rows = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=width * channels + pad)
    msg.header.stamp = stamp_msg(stamp)
    msg.header.frame_id = frame_id
    msg.data = rows.tobytes()
    return msg


def compressed_msg(frame: np.ndarray, stamp: float, codec: str = 'jpeg') -> Any:
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, encoded = cv2.imencode('.png' if codec == 'png' else '.jpg', frame[..., ::-1])
    assert ok
    msg = CompressedImage(format=f'rgb8; {codec} compressed bgr8')
    msg.header.stamp = stamp_msg(stamp)
    msg.header.frame_id = 'camera'
    msg.data = encoded.tobytes()
    return msg


def tone(n: int, first: int, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    """Samples first..first+n of a sine with some noise, float32 in [-1, 1]."""
    t = (np.arange(first, first + n) / rate).astype(np.float64)
    rng = np.random.default_rng(first)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def audio_chunk_msg(samples: np.ndarray, stamp: float, rate: int = RATE, fmt: str = 's16',
                    channels: int = 1) -> Any:
    from taco_msgs.msg import AudioChunk

    msg = AudioChunk(sample_rate=rate, channels=channels)
    msg.header.stamp = stamp_msg(stamp)
    msg.header.frame_id = 'mic'
    if fmt == 's16':
        msg.sample_format = AudioChunk.FORMAT_S16
        msg.int16_data = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(-1)
    else:
        msg.sample_format = AudioChunk.FORMAT_F32
        msg.float32_data = samples.astype(np.float32).reshape(-1)
    return msg


def multiarray_msg(samples: np.ndarray, kind: str) -> Any:
    from std_msgs.msg import Float32MultiArray, Int16MultiArray

    if kind == 'int16_multiarray':
        msg = Int16MultiArray()
        msg.data = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    else:
        msg = Float32MultiArray()
        msg.data = samples.astype(np.float32)
    return msg


class Recorder:
    """Thread-safe message lists per topic, with the monotonic receipt time of each message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[str, list[tuple[float, Any]]] = {}

    def callback(self, name: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self.lock:
                self.messages.setdefault(name, []).append((time.monotonic(), msg))
        return store

    def get(self, name: str) -> list[Any]:
        with self.lock:
            return [msg for _, msg in self.messages.get(name, [])]

    def timed(self, name: str) -> list[tuple[float, Any]]:
        with self.lock:
            return list(self.messages.get(name, []))

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.messages.get(name, []))

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


class NodeHarness:
    """A TacoNode and a peer node, each spun by a SingleThreadedExecutor on a background thread
    (as ``ros2 run taco_ros taco_node`` spins it; the node runs its windows on a thread of its own).

    The peer records the node's outputs (mask, objects, audio_activation, debug_image,
    label_info, /diagnostics) and publishes camera/microphone messages. It has a context (a DDS
    participant) of its own, as a camera or microphone driver would: FastDDS 2 (ROS 2 Jazzy) refuses a
    second message type on one topic name within a participant, and the tests change audio types.
    """

    def __init__(self, context: Any, overrides: dict[str, Any], autostart: bool = True,
                 name: str = 'taco_node', debug_subscriber: bool = False) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from taco_msgs.msg import AudioActivation, LabelInfo, SoundingObjectArray
        from taco_ros.taco_node import TacoNode

        self.context = context
        values = {'autostart': autostart, **overrides}
        self.node = TacoNode(
            name, context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        self.peer_context = rclpy.Context()
        rclpy.init(context=self.peer_context)
        self.peer = Node(f'{name}_test_peer', context=self.peer_context)
        self.recorder = Recorder()
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        prefix = f'/{name}'
        topics = [('mask', Image, f'{prefix}/mask', reliable),
                  ('objects', SoundingObjectArray, f'{prefix}/objects', reliable),
                  ('activation', AudioActivation, f'{prefix}/audio_activation', reliable),
                  ('label_info', LabelInfo, f'{prefix}/label_info', latched),
                  ('diagnostics', DiagnosticArray, '/diagnostics', reliable)]
        if debug_subscriber:
            topics.append(('debug', Image, f'{prefix}/debug_image', reliable))
        self._subs = [self.peer.create_subscription(t, topic, self.recorder.callback(key), qos)
                      for key, t, topic, qos in topics]
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.peer_executor = SingleThreadedExecutor(context=self.peer_context)
        self.peer_executor.add_node(self.peer)
        self._peer_thread = threading.Thread(target=self._spin, args=(self.peer_executor,), daemon=True)
        self._peer_thread.start()
        self.started = self.node.start() if autostart else None
        self._thread = threading.Thread(target=self._spin, args=(self.executor,), daemon=True)
        self._thread.start()

    @staticmethod
    def _spin(executor: Any) -> None:
        from rclpy.executors import ExternalShutdownException

        from taco_ros.taco_node import spin

        try:
            spin(executor)     # survives entities destroyed by the test thread meanwhile
        except ExternalShutdownException:
            pass

    def publisher(self, msg_type: Any, topic: str, qos: str = 'sensor_data', depth: int = 50) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        reliability = (ReliabilityPolicy.BEST_EFFORT if qos == 'best_effort'
                       else ReliabilityPolicy.RELIABLE)
        return self.peer.create_publisher(msg_type, topic,
                                          QoSProfile(depth=depth, reliability=reliability))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(step)
        return predicate()

    def wait_connected(self, publishers: Iterable[Any], timeout: float = 30.0) -> bool:
        return self.wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers),
                             timeout)

    def diagnostics_values(self, status_suffix: str) -> dict[str, str]:
        """Key/values of the newest /diagnostics status whose name ends with ``status_suffix``."""
        for array in reversed(self.recorder.get('diagnostics')):
            for status in array.status:
                if status.name.endswith(status_suffix):
                    return {kv.key: kv.value for kv in status.values} | {
                        '__level__': int.from_bytes(status.level, 'little')
                        if isinstance(status.level, bytes) else int(status.level),
                        '__message__': status.message}
        return {}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)
        self.peer_executor.shutdown(timeout_sec=5.0)
        self._peer_thread.join(timeout=10.0)
        self.node.release()
        self.node.destroy_node()
        self.peer.destroy_node()
        self.peer_context.try_shutdown()


class StreamPublisher:
    """Publishes a camera stream (FPS) and a microphone stream (CHUNK at RATE) with stamps on the
    node's clock, from a background thread, at most as fast as real time.

    The stream is paced by the node under test, so that a busy machine changes only how long it
    takes, never what the node receives: at most MAX_AHEAD messages of a kind are published before
    the node's callbacks have taken them (its sensor_data queues hold 5 frames and 50 chunks, and
    a burst after the test process was descheduled overflowed them: the node then saw gaps that
    the stream did not have). A message the transport lost (best effort) is written off after
    LOSS_WAIT without progress; a kind the node takes none of (not subscribed to it) is no longer
    paced after FLOW_WAIT. Frames are published before the audio chunk around them, as a camera
    and a microphone deliver them. ``t0`` + stream time is each stamp.
    """

    MAX_AHEAD: ClassVar[dict[str, int]] = {'images': 4, 'audio': 40}
    RECEIVED: ClassVar[dict[str, str]] = {'images': 'images_received',
                                          'audio': 'audio_messages_received'}
    LOSS_WAIT = 5.0
    FLOW_WAIT = 15.0

    def __init__(self, harness: NodeHarness, image_pub: Any, audio_pub: Any,
                 make_image: Callable[[int, float], Any] | None = None,
                 make_audio: Callable[[int, float], Any] | None = None,
                 frame: np.ndarray | None = None) -> None:
        self.harness = harness
        self.image_pub = image_pub
        self.audio_pub = audio_pub
        frame = make_frame() if frame is None else frame
        self.make_image = make_image or (lambda i, t: image_msg(frame, t))
        self.make_audio = make_audio or (
            lambda c, t: audio_chunk_msg(tone(CHUNK, c * CHUNK), t))
        self.frame_stamps: list[float] = []
        self.frame_headers: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0               # node-clock time of the first message (stamps are t0 + offset)
        self.position = 0.0         # stream time published so far
        self._progress: list[tuple[float, float]] = []   # (time.monotonic(), stream time)
        self._sent = {kind: 0 for kind in self.MAX_AHEAD}
        self._base = {kind: 0 for kind in self.MAX_AHEAD}
        self.unpaced: set[str] = set()       # kinds the node did not take within FLOW_WAIT
        self.written_off = {kind: 0 for kind in self.MAX_AHEAD}    # presumed lost in transport

    def now(self) -> float:
        return self.harness.node.get_clock().now().nanoseconds * 1e-9

    def _received(self, kind: str) -> float:
        return self.harness.node._stats.counts.get(self.RECEIVED[kind], 0)

    def _taken(self, kind: str) -> float:
        """Messages of this kind the node's callbacks took since the stream started."""
        return self._received(kind) - self._base[kind]

    def _publish(self, kind: str, publisher: Any, msg: Any) -> None:
        """Publish once the node has taken all but MAX_AHEAD of this kind's earlier messages."""
        if kind not in self.unpaced:
            self._wait_for_the_node(kind)
        publisher.publish(msg)
        self._sent[kind] += 1

    def _wait_for_the_node(self, kind: str) -> None:
        started = progress_at = time.monotonic()
        taken = self._taken(kind)
        while self._sent[kind] - taken >= self.MAX_AHEAD[kind] and not self._stop.is_set():
            now = time.monotonic()
            if taken == 0 and now - started > self.FLOW_WAIT:
                self.unpaced.add(kind)
                return
            if taken > 0 and now - progress_at > self.LOSS_WAIT:
                self.written_off[kind] += self._sent[kind] - taken
                self._base[kind] -= self._sent[kind] - taken
                return
            time.sleep(0.002)
            if self._taken(kind) != taken:
                taken, progress_at = self._taken(kind), time.monotonic()

    def run(self, seconds: float) -> None:
        """Publish ``seconds`` of stream (blocking)."""
        self._base = {kind: self._received(kind) for kind in self.MAX_AHEAD}
        self.t0 = self.now()
        start = time.monotonic()
        frame_i = chunk_i = 0
        while not self._stop.is_set():
            position = chunk_i * CHUNK / RATE
            if position > seconds:
                break
            if position > time.monotonic() - start:     # never ahead of real time
                time.sleep(0.004)
                continue
            while self.image_pub is not None and frame_i / FPS <= position + CHUNK / RATE:
                stamp = self.t0 + frame_i / FPS
                msg = self.make_image(frame_i, stamp)
                if msg is not None:
                    self._publish('images', self.image_pub, msg)
                    self.frame_stamps.append(stamp)
                    self.frame_headers.append(msg.header)
                frame_i += 1
            msg = self.make_audio(chunk_i, self.t0 + position)
            if msg is not None:
                self._publish('audio', self.audio_pub, msg)
            chunk_i += 1
            self.position = position + CHUNK / RATE
            self._progress.append((time.monotonic(), self.position))

    def start(self, seconds: float) -> None:
        self._thread = threading.Thread(target=self.run, args=(seconds,), daemon=True)
        self._thread.start()

    def ros_time(self, monotonic: float) -> float:
        """Stamp time the stream had reached at a time.monotonic() reading taken during it."""
        times = [m for m, _ in self._progress]
        i = bisect.bisect_right(times, monotonic)
        return self.t0 + (self._progress[i - 1][1] if i else 0.0)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=120.0)

    def stop(self) -> None:
        self._stop.set()
        self.join()


# ------------------------------------------------------------------------------ node fixtures
# Module-scoped: each test module that imports them gets one node, shared by its tests.
@pytest.fixture(scope='module')
def context() -> Any:
    saved = os.environ.get('ROS_DOMAIN_ID')
    os.environ['ROS_DOMAIN_ID'] = str(module_domain_id())
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)
    if saved is None:
        os.environ.pop('ROS_DOMAIN_ID', None)
    else:
        os.environ['ROS_DOMAIN_ID'] = saved


@pytest.fixture(scope='module')
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp('taco_node')
    (work / 'empty').mkdir()
    return {
        'model_config': str(small_model_config(work)), 'model_dir': str(work / 'empty'),
        'allow_random_weights': True, 'vocabulary': list(WORDS), 'solver_max_steps': 10,
        'device': 'cpu',
    }


@pytest.fixture(scope='module')
def shared(context: Any, base: dict[str, Any]) -> NodeHarness:
    harness = NodeHarness(context, base, debug_subscriber=True)
    assert harness.started, 'taco_node did not configure and activate'
    yield harness
    harness.close()


def restart(harness: NodeHarness, **changes: Any) -> None:
    """deactivate, set (activate-time or live) parameters, activate; forget recorded messages."""
    from rclpy.lifecycle import TransitionCallbackReturn

    node = harness.node
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    if changes:
        from rclpy.parameter import Parameter

        results = node.set_parameters([Parameter(k, value=v) for k, v in changes.items()])
        assert all(r.successful for r in results), [r.reason for r in results]
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    harness.recorder.clear()


def stream_until(harness: NodeHarness, image_pub: Any, audio_pub: Any, windows: int,
                 timeout: float = WINDOW_TIMEOUT, **makers: Any) -> StreamPublisher:
    """Stream in real time until ``windows`` new windows were published (or the timeout)."""
    start = harness.recorder.count('objects')
    stream = StreamPublisher(harness, image_pub, audio_pub, **makers)
    stream.start(timeout)
    harness.wait_for(lambda: harness.recorder.count('objects') >= start + windows, timeout)
    stream.stop()
    time.sleep(0.5)   # outputs of the window in flight
    return stream


def gate_inference(node: Any) -> tuple[threading.Event, threading.Event, Callable[[], None]]:
    """Hold every window at the start of the pipeline until released: (entered, release, undo).

    entered is set when a window reaches the pipeline; release lets it (and the next ones) run;
    undo releases and puts the pipeline's own process back."""
    pipeline = node._pipeline
    entered, release = threading.Event(), threading.Event()
    real = pipeline.process

    def gated(frame: np.ndarray, window: Any) -> Any:
        entered.set()
        release.wait(WINDOW_TIMEOUT)
        return real(frame, window)

    pipeline.process = gated

    def undo() -> None:
        release.set()
        pipeline.__dict__.pop('process', None)
    return entered, release, undo
