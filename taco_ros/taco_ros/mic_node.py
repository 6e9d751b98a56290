"""mic_node: publishes a microphone from a sounddevice (PortAudio) stream as ``taco_msgs/AudioChunk``
blocks, or in either audio_common flavour (``msg_type``).

Design (docs/ros_interface.md, "mic_node"):
- The PortAudio callback only copies the block (PortAudio reuses its buffer) and notes when it ran; a
  publisher thread stamps and publishes, so no ROS call ever blocks the audio thread.
- ``header.stamp`` is the capture time of the block's FIRST sample. Stamps run on the device's sample clock
  (stamp_k = offset + n_k / rate, n_k = frames before block k) so consecutive blocks are spaced by exactly
  their duration; the offset to ROS time follows the earliest plausible capture times (see SampleClock).
- Input overflows, blocks dropped between the threads, clock re-syncs and device errors are reported on
  ``/diagnostics``. A missing or lost device is an ERROR status and a retry with exponential back-off; the
  process stays up so a microphone plugged in later is picked up.
- Parameters are declared from ``taco_ros.params.MIC_PARAMETERS`` (the table config/mic.yaml and the README
  are generated from). A refused value (wrong type, out of range, not a choice) is reported and replaced by
  its default; the node keeps running and says so on ``/diagnostics``. So is a ``msg_type`` whose
  audio_common_msgs flavour is not installed: the node publishes taco_msgs/AudioChunk instead.
- The publisher is reliable by default: REP-2003 asks drivers for system-default (reliable) QoS and
  consumers for sensor-data QoS, which connects to it. ``audio_data_stamped`` also publishes a latched
  (transient local) AudioInfo that describes the bytes, so a subscriber that joins late can read them.
"""

from __future__ import annotations

import array
import importlib
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from taco_msgs.msg import AudioChunk
from taco_ros import interop, params
from taco_ros.param_declaration import declare_all

# sample_format parameter (also the sounddevice dtype) → (AudioChunk constant, filled field, array typecode)
SAMPLE_FORMATS: dict[str, tuple[int, str, str]] = {
    'int16': (AudioChunk.FORMAT_S16, 'int16_data', 'h'),
    'int32': (AudioChunk.FORMAT_S32, 'int32_data', 'i'),
    'float32': (AudioChunk.FORMAT_F32, 'float32_data', 'f'),
}


class SampleClock:
    """Maps the device's sample counter to ROS time: first-sample stamp of a block = offset + n / rate.

    A callback can run late (scheduling), never early, so each measured first-sample time is an upper
    bound of the true one and ``offset`` is the minimum of (measured - n / rate) over the last
    ``window_s`` seconds of blocks: jitter does not move the stamps, and a device clock that drifts
    against ROS time is followed with a lag of ``window_s`` times the drift. The offset steps down at
    most half a block at a time, so stamps stay monotonic. A declared discontinuity (input overflow,
    new stream), a block earlier than predicted by over ``tolerance_s`` or ``tolerance_s`` worth of
    blocks all later than that (lost samples, a clock step) re-anchors on the current block;
    ``resyncs`` counts those.
    """

    def __init__(self, sample_rate: int, tolerance_s: float = 0.2, window_s: float = 2.0):
        if sample_rate <= 0:
            raise ValueError(f'sample_rate must be positive, got {sample_rate}')
        self.sample_rate = sample_rate
        self.tolerance_ns = int(tolerance_s * 1e9)
        self.window_ns = int(window_s * 1e9)
        self.resyncs = 0
        self._offset_ns: int | None = None
        self._frames = 0
        self._window: deque[tuple[int, int]] = deque()   # (elapsed ns, candidate offset), increasing
        self._late_since: int | None = None   # elapsed ns of the first block of a run of very late ones

    def _frames_ns(self, frames: int) -> int:
        return frames * 1_000_000_000 // self.sample_rate

    def _anchor(self, elapsed_ns: int, candidate: int) -> None:
        self._late_since = None
        self._window.clear()
        self._window.append((elapsed_ns, candidate))
        self._offset_ns = candidate

    def stamp(self, frames: int, measured_ns: int, discontinuity: bool = False) -> int:
        """Stamp (ns) of the first sample of a block of ``frames`` frames measured at ``measured_ns``."""
        elapsed_ns = self._frames_ns(self._frames)
        self._frames += frames
        candidate = measured_ns - elapsed_ns
        if self._offset_ns is None or discontinuity:
            self.resyncs += self._offset_ns is not None
            self._anchor(elapsed_ns, candidate)
            return candidate + elapsed_ns
        # Every block of the last tolerance_s arriving over tolerance_s late is no scheduling stall (a
        # stall ends in a burst that catches up) but lost samples or a forward clock step.
        if candidate - self._offset_ns > self.tolerance_ns:
            if self._late_since is None:
                self._late_since = elapsed_ns
            elif elapsed_ns - self._late_since >= self.tolerance_ns:
                self.resyncs += 1
                self._anchor(elapsed_ns, candidate)
                return candidate + elapsed_ns
        else:
            self._late_since = None
        # Sliding-window minimum: a monotonic deque of candidates.
        while self._window and self._window[-1][1] >= candidate:
            self._window.pop()
        self._window.append((elapsed_ns, candidate))
        while self._window[0][0] < elapsed_ns - self.window_ns:
            self._window.popleft()
        change = self._window[0][1] - self._offset_ns
        if abs(change) > self.tolerance_ns:
            self.resyncs += 1
            self._anchor(elapsed_ns, candidate)
        else:
            self._offset_ns += max(change, -self._frames_ns(frames) // 2)
        return self._offset_ns + elapsed_ns


def resolve_input_device(spec: str, channels: int, devices: list[dict[str, Any]],
                         default_index: int) -> int:
    """Index of the input device named by ``spec``: "" = default, digits = index, else a name substring.

    Raises LookupError with the list of input devices when nothing fits.
    """
    inputs = [(i, d) for i, d in enumerate(devices) if d.get('max_input_channels', 0) > 0]
    listing = '; '.join(f'{i}: {d["name"]} ({d["max_input_channels"]} in)' for i, d in inputs)
    listing = listing or 'PortAudio lists no input devices (no sound card or USB microphone?)'
    spec = spec.strip()
    if spec == '':
        candidates = [default_index] if 0 <= default_index < len(devices) else []
        candidates += [i for i, _ in inputs]
    elif spec.lstrip('-').isdigit():
        index = int(spec)
        if index < 0:
            return resolve_input_device('', channels, devices, default_index)
        candidates = [index] if index < len(devices) else []
    else:
        candidates = [i for i, d in inputs if spec.lower() in d['name'].lower()]
    for index in candidates:
        if devices[index].get('max_input_channels', 0) >= channels:
            return index
    wanted = 'the default input device' if spec == '' else f'input device {spec!r}'
    raise LookupError(f'{wanted} with {channels} channel(s) not found; available: {listing}')


@dataclass
class _CapturedBlock:
    samples: np.ndarray    # [frames, channels], a copy of PortAudio's buffer
    measured_ns: int       # ROS time of the first sample as seen from the callback (upper bound)
    overflow: bool         # PortAudio reported an input overflow before this block
    generation: int        # stream instance; a new one starts a new sample clock


class MicNode(Node):
    """Publishes ``audio`` (taco_msgs/AudioChunk) from a sounddevice input stream; health on /diagnostics."""

    def __init__(self, **kwargs: Any):
        super().__init__(params.MIC_NODE_NAME, **kwargs)
        self.parameter_problems = declare_all(self, params.MIC_NODE_NAME)
        p = self._read_parameters()
        self.device_spec: str = p['device']
        self.sample_rate: int = p['sample_rate']
        self.channels: int = p['channels']
        self.block_size: int = p['block_size']
        self.sample_format: str = p['sample_format']
        self.frame_id: str = p['frame_id']
        self._format_code, self._field, self._typecode = SAMPLE_FORMATS[self.sample_format]
        self.msg_type: str = self._available_msg_type(p['msg_type'])
        self._retry_initial_s: float = p['retry_initial_s']
        self._retry_max_s: float = p['retry_max_s']
        self._device_timeout_s: float = p['device_timeout_s']
        self._clock_tolerance_s: float = p['clock_tolerance_s']

        self._publisher = self.create_publisher(
            self._message_class(), p['topic'], params.qos_profile(p['qos'], p['qos_depth']))
        self._info_publisher = self._publish_audio_info(p['info_topic'])
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        # Between the PortAudio thread and the publisher thread: about two seconds of blocks.
        capacity = max(4, int(2.0 * self.sample_rate / self.block_size))
        self._blocks: queue.Queue[_CapturedBlock] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._sd: Any = None
        self._stream: Any = None
        self._generation = 0
        self._device_name = ''
        self._last_callback = 0.0          # time.monotonic() of the last PortAudio callback
        self._pending_overflow = False
        self._error = ''
        self._attempts = 0
        self._next_attempt = 0.0
        self._sample_clock = SampleClock(self.sample_rate, self._clock_tolerance_s)
        self._clock_generation = -1
        self._stats = {'published': 0, 'overflows': 0, 'dropped': 0, 'stream_restarts': 0}
        self._stats_at_last_report = dict(self._stats)
        self._last_report = time.monotonic()

        self._stop = threading.Event()
        self._publisher_thread = threading.Thread(
            target=self._publish_loop, name='mic_node_publisher', daemon=True)
        self._publisher_thread.start()
        self._supervise()
        self.create_timer(0.1, self._supervise)
        self.create_timer(p['diagnostics_period_s'], self._publish_diagnostics)

    # -- parameters ---------------------------------------------------------------------------------
    def _read_parameters(self) -> dict[str, Any]:
        """Parameter values; a refused one is reported and replaced by its default."""
        p = {}
        for spec in params.MIC_PARAMETERS:
            value = self.get_parameter(spec.name).value
            reason = params.validate(spec.name, value, params.MIC_NODE_NAME)
            if reason:
                self.parameter_problems.append(f'{reason}; using {spec.default!r}')
                value = spec.default
            p[spec.name] = value
        p['device'] = str(p['device'])
        if p['retry_max_s'] < p['retry_initial_s']:
            self.parameter_problems.append(
                f'retry_max_s ({p["retry_max_s"]}) must be >= retry_initial_s '
                f'({p["retry_initial_s"]}); using {p["retry_initial_s"]}')
            p['retry_max_s'] = p['retry_initial_s']
        for problem in self.parameter_problems:
            self.get_logger().error(f'parameter refused: {problem}')
        return p

    def _available_msg_type(self, wanted: str) -> str:
        """``wanted``, or 'taco' (reported) when its audio_common flavour is not importable."""
        if wanted == 'taco':
            return wanted
        output = interop.optional_outputs()[wanted]
        if output.available:
            return wanted
        problem = f'msg_type {wanted} cannot be published: {output.reason}; publishing taco_msgs/AudioChunk'
        self.parameter_problems.append(problem)
        self.get_logger().error(f'parameter refused: {problem}')
        return 'taco'

    def _message_class(self) -> type:
        if self.msg_type == 'taco':
            return AudioChunk
        # importable: _available_msg_type checked it
        audio_common = importlib.import_module('audio_common_msgs.msg')
        return (audio_common.AudioStamped if self.msg_type == interop.OUTPUT_MGONZS13_AUDIO
                else audio_common.AudioDataStamped)

    def _publish_audio_info(self, topic: str) -> Any:
        """ros-drivers streams only: the latched AudioInfo describing the published bytes."""
        if self.msg_type != interop.OUTPUT_ROS_DRIVERS_AUDIO:
            return None
        info = interop.ros_drivers_audio_info(self.sample_rate, self.channels, self.sample_format)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        publisher = self.create_publisher(type(info), topic, latched)
        publisher.publish(info)
        return publisher

    # -- PortAudio side -----------------------------------------------------------------------------
    def _on_audio(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio callback: copy, time, enqueue. Nothing here may block."""
        now_ns = self.get_clock().now().nanoseconds
        self._last_callback = time.monotonic()
        # The whole block exists by now, so its first sample is at least one block old; PortAudio's
        # ADC time can only make it older (buffering), never younger.
        age_s = frames / self.sample_rate
        adc, current = time_info.inputBufferAdcTime, time_info.currentTime
        if adc > 0.0 and current > 0.0:
            age_s = max(age_s, min(current - adc, 10.0))
        overflow = bool(status.input_overflow) or self._pending_overflow
        block = _CapturedBlock(indata.copy(), now_ns - int(age_s * 1e9), overflow, self._generation)
        if status.input_overflow:
            self._stats['overflows'] += 1
        try:
            self._blocks.put_nowait(block)
            self._pending_overflow = False
        except queue.Full:
            # The next block is not contiguous with the last published one: re-anchor there.
            self._stats['dropped'] += 1
            self._pending_overflow = True

    def _open_stream(self) -> None:
        if self._sd is None:
            import sounddevice  # PortAudio is loaded here: a missing libportaudio2 is a device error
            self._sd = sounddevice
        elif self._attempts > 0:
            # PortAudio lists devices once per initialisation: re-scan so a newly plugged mic appears.
            self._sd._terminate()
            self._sd._initialize()
        sd = self._sd
        devices = [dict(d) for d in sd.query_devices()]
        try:
            default_in = int(sd.query_devices(kind='input')['index'])
        except Exception:  # PortAudio has no default input device
            default_in = -1
        index = resolve_input_device(self.device_spec, self.channels, devices, default_in)
        self._generation += 1
        stream = sd.InputStream(device=index, samplerate=self.sample_rate, channels=self.channels,
                                dtype=self.sample_format, blocksize=self.block_size,
                                callback=self._on_audio)
        self._last_callback = time.monotonic()
        stream.start()
        with self._lock:
            self._stream = stream
            self._device_name = devices[index]['name']
        self.get_logger().info(
            f'capturing from device {index} "{self._device_name}": {self.sample_rate} Hz, '
            f'{self.channels} ch, {self.sample_format}, {self.block_size} frames per block')

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is None:
            return
        # A wedged driver can block close(); never let that stop the node.
        closer = threading.Thread(target=self._quiet_close, args=(stream,), daemon=True)
        closer.start()
        closer.join(timeout=2.0)

    @staticmethod
    def _quiet_close(stream: Any) -> None:
        try:
            stream.abort()
            stream.close()
        except Exception:  # the device is gone; closing is best effort
            pass

    def _fail(self, message: str) -> None:
        delay = min(self._retry_max_s, self._retry_initial_s * 2 ** self._attempts)
        self._attempts += 1
        self._next_attempt = time.monotonic() + delay
        if message != self._error:
            self.get_logger().error(f'{message}; retrying in {delay:.1f} s')
        self._error = message

    def _supervise(self) -> None:
        """Timer: open the device when due, and detect a stream that died or went silent."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        if self._stream is None:
            if now < self._next_attempt:
                return
            try:
                self._open_stream()
            except Exception as exc:  # any PortAudio/device error means "retry later"
                self._close_stream()
                self._fail(f'cannot open audio input: {exc}')
                return
            if self._attempts:
                self._stats['stream_restarts'] += 1
                self.get_logger().info('audio input recovered')
            self._attempts = 0
            self._error = ''
            return
        try:
            active = bool(self._stream.active)
        except Exception:  # a stream whose device vanished may not even answer
            active = False
        silent_for = now - self._last_callback
        if not active or silent_for > self._device_timeout_s:
            reason = 'the stream stopped' if not active else f'no audio for {silent_for:.1f} s'
            self._close_stream()
            self._fail(f'audio input "{self._device_name}" lost ({reason})')

    # -- ROS side -----------------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                block = self._blocks.get(timeout=0.1)
            except queue.Empty:
                continue
            new_stream = block.generation != self._clock_generation
            self._clock_generation = block.generation
            stamp_ns = self._sample_clock.stamp(len(block.samples), block.measured_ns,
                                         discontinuity=new_stream or block.overflow)
            if not self.context.ok():
                return      # shutting down (SIGINT): the executor is leaving too
            try:
                self._publisher.publish(self.audio_message(block.samples, stamp_ns))
            except Exception as exc:  # an invalid context races with the check above on shutdown
                if not self.context.ok():
                    return
                self.get_logger().error(f'cannot publish audio: {exc}', throttle_duration_sec=5.0)
                continue
            self._stats['published'] += 1

    def audio_message(self, samples: np.ndarray, stamp_ns: int) -> Any:
        """The message of ``msg_type`` holding ``samples`` [frames, channels] stamped at ``stamp_ns``."""
        if self.msg_type == interop.OUTPUT_MGONZS13_AUDIO:
            return interop.mgonzs13_audio_stamped(samples, self.sample_rate, stamp_ns, self.frame_id)
        if self.msg_type == interop.OUTPUT_ROS_DRIVERS_AUDIO:
            return interop.ros_drivers_audio_stamped(samples, stamp_ns, self.frame_id)
        return self.chunk_message(samples, stamp_ns)

    def chunk_message(self, samples: np.ndarray, stamp_ns: int) -> AudioChunk:
        """AudioChunk holding interleaved ``samples`` [frames, channels] stamped at ``stamp_ns``."""
        msg = AudioChunk()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.header.frame_id = self.frame_id
        msg.sample_rate = self.sample_rate
        msg.channels = self.channels
        msg.sample_format = self._format_code
        setattr(msg, self._field, array.array(self._typecode, np.ascontiguousarray(samples).tobytes()))
        return msg

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        period = max(now - self._last_report, 1e-6)
        stats = dict(self._stats)
        delta = {k: stats[k] - self._stats_at_last_report[k] for k in stats}
        self._stats_at_last_report, self._last_report = stats, now

        status = DiagnosticStatus(name=f'{self.get_name()}: audio capture',
                                  hardware_id=self._device_name or self.device_spec)
        if self._stream is None:
            status.level = DiagnosticStatus.ERROR
            wait = max(0.0, self._next_attempt - now)
            status.message = f'{self._error or "audio input not open"} (next attempt in {wait:.1f} s)'
        elif delta['overflows'] or delta['dropped']:
            status.level = DiagnosticStatus.WARN
            status.message = (f'{delta["overflows"]} input overflow(s), {delta["dropped"]} dropped '
                              f'block(s) in the last {period:.1f} s')
        elif self.parameter_problems:
            status.level = DiagnosticStatus.WARN
            status.message = f'parameter refused: {self.parameter_problems[0]}'
        else:
            status.level = DiagnosticStatus.OK
            status.message = f'capturing from "{self._device_name}"'
        values = {
            'device': self._device_name, 'device_parameter': self.device_spec,
            'sample_rate': self.sample_rate, 'channels': self.channels,
            'block_size': self.block_size, 'sample_format': self.sample_format,
            'msg_type': self.msg_type,
            'blocks_published': stats['published'],
            'publish_rate_hz': f'{delta["published"] / period:.2f}',
            'input_overflows': stats['overflows'], 'dropped_blocks': stats['dropped'],
            'clock_resyncs': self._sample_clock.resyncs, 'stream_restarts': stats['stream_restarts'],
            'failed_attempts': self._attempts, 'last_error': self._error,
            'parameter_problems': '; '.join(self.parameter_problems),
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(msg)

    def destroy_node(self) -> None:
        self._stop.set()
        self._close_stream()
        self._publisher_thread.join(timeout=2.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = MicNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
