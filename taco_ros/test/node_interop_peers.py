"""taco_node with third-party message packages: processes run with a test interface workspace sourced.

``python node_interop_peers.py <role> '<json config>'`` runs a TacoNode (random-weight taco_tiny,
built by the calling test) in a NodeHarness (node_fixtures.py) inside this process, feeds it over
real DDS with messages of the sourced package and prints one JSON report as the last stdout line.
A role runs several scenarios, each on a fresh node; a scenario that fails reports its error
instead of its facts, so the others still run (interface_fixtures.py starts these processes).
"""

from __future__ import annotations

import array
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from node_fixtures import (
    CHUNK,
    EVENT_TIMEOUT,
    RATE,
    WINDOW_TIMEOUT,
    NodeHarness,
    StreamPublisher,
    audio_chunk_msg,
    make_frame,
    tone,
)
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from taco_ros.conversions import stamp_to_sec

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
VOLATILE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)   # audio_capture's audio_info
CHUNK_SEC = CHUNK / RATE       # StreamPublisher sends one audio message per 32 ms
# Every chunk matters to these checks: a reliable audio subscription (best effort may drop under
# load) with room for the bursts of a stream that caught up after a stall.
RAW = {'audio_qos': 'reliable', 'audio_qos_depth': 500}


# ----------------------------------------------------------------------------------- shared
def signal(rate: int, channels: int, frames: int) -> np.ndarray:
    """int16 [frames, channels] from the stream start: 440 Hz left, 1 kHz right (mono: left)."""
    t = np.arange(frames) / rate
    left = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    right = 0.25 * np.sin(2 * np.pi * 1000.0 * t)
    both = np.stack([left, right], axis=1)[:, :channels]
    return np.round(both * 32767).astype(np.int16)


class WindowSpy:
    """Records the audio window of every window the node's pipeline processes (then runs it)."""

    def __init__(self, node: Any) -> None:
        self.windows: list[tuple[float, int, np.ndarray]] = []
        pipeline = node._pipeline
        real = pipeline.process

        def process(frame: np.ndarray, window: Any) -> Any:
            self.windows.append((float(window.start), int(window.sample_rate),
                                 np.array(window.samples, np.float32)))
            return real(frame, window)

        pipeline.process = process


def window_errors(spy: WindowSpy, t0: float, rate: int, channels: int,
                  since: float = -np.inf) -> list[dict[str, Any]]:
    """For each window at ``rate`` starting after ``since``: its rate and the smallest max error
    against the published signal (mixed to mono as the node does) over ±2 samples of alignment."""
    found = []
    for start, window_rate, samples in spy.windows:
        if window_rate != rate or start < since:
            found.append({'start': start - t0, 'rate': window_rate, 'error': None})
            continue
        first = round((start - t0) * rate)
        reference = signal(rate, channels, first + samples.size + 4).astype(np.float32) / 32768.0
        mono = reference.mean(axis=1)
        errors = [float(np.abs(samples - mono[first + shift:first + shift + samples.size]).max())
                  for shift in range(-2, 3) if first + shift >= 0]
        found.append({'start': start - t0, 'rate': window_rate, 'error': min(errors)})
    return found


def node_facts(harness: NodeHarness) -> dict[str, Any]:
    node = harness.node
    counts = node._stats.counts
    return {'raw_audio': node.raw_audio_state(), 'optional_off': node._optional_off,
            'counts': {k: float(v) for k, v in counts.items()},
            'restarts': dict(node._policy.restarts), 'windows': harness.recorder.count('objects'),
            'last_problem': node._stats.last_input_problem}


def run_scenarios(config: dict[str, Any], scenarios: dict[str, Callable[..., dict[str, Any]]]
                  ) -> dict[str, Any]:
    context = rclpy.Context()
    rclpy.init(context=context)
    report: dict[str, Any] = {}
    try:
        for name, scenario in scenarios.items():
            if config.get('only') and name not in config['only']:
                continue
            started = time.monotonic()
            try:
                report[name] = scenario(context, config)
            except Exception:       # the report says what failed; the next scenario runs
                report[name] = {'error': traceback.format_exc()}
            report[name]['seconds'] = round(time.monotonic() - started, 1)
    finally:
        context.try_shutdown()
    return report


def new_harness(context: Any, config: dict[str, Any], name: str, overrides: dict[str, Any],
                autostart: bool = True) -> NodeHarness:
    harness = NodeHarness(context, {**config['base'], **overrides}, autostart=autostart, name=name)
    if autostart and not harness.started:
        harness.close()
        raise RuntimeError(f'{name} did not configure and activate')
    return harness


def camera(harness: NodeHarness) -> Any:
    return harness.publisher(Image, '/image', 'reliable', depth=100)


def stream_for(harness: NodeHarness, image_pub: Any, audio_pub: Any, done: Callable[[], bool],
               make_audio: Callable[[int, float], Any], timeout: float = WINDOW_TIMEOUT
               ) -> StreamPublisher:
    """Stream in real time until ``done()`` (or the timeout)."""
    frame = make_frame()
    stream = StreamPublisher(harness, image_pub, audio_pub, make_audio=make_audio, frame=frame)
    stream.start(timeout)
    harness.wait_for(done, timeout)
    stream.stop()
    time.sleep(0.5)
    return stream


# ------------------------------------------------------------------------ ros-drivers audio
def _raw_message(stamped: bool, samples: np.ndarray, stamp: float) -> Any:
    from audio_common_msgs.msg import AudioData, AudioDataStamped

    data = array.array('B', samples.astype('<i2').tobytes())
    if not stamped:
        return AudioData(data=data)
    msg = AudioDataStamped()
    total = round(stamp * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(total, 1_000_000_000)
    msg.header.frame_id = 'mic'
    msg.audio.data = data
    return msg


def _info(rate: int, channels: int, sample_format: str = 'S16LE', coding: str = 'wave') -> Any:
    from audio_common_msgs.msg import AudioInfo

    return AudioInfo(channels=channels, sample_rate=rate, sample_format=sample_format,
                     bitrate=rate * channels * 16, coding_format=coding)


class RawStream:
    """Chunk c of the ros-drivers stream: CHUNK_SEC of ``signal`` at a rate and channel count."""

    def __init__(self, rate: int = 48000, channels: int = 2, stamped: bool = True) -> None:
        self.rate, self.channels, self.stamped = rate, channels, stamped
        self.frames = round(CHUNK_SEC * rate)
        self._signal = signal(rate, channels, self.frames * 4000)
        self.sent: list[float] = []      # node-clock time each chunk was handed to DDS

    def message(self, c: int, stamp: float, harness: NodeHarness) -> Any:
        samples = self._signal[c * self.frames:(c + 1) * self.frames]
        self.sent.append(harness.node.get_clock().now().nanoseconds * 1e-9)
        return _raw_message(self.stamped, samples, stamp)


def _raw_publishers(harness: NodeHarness, stamped: bool = True) -> tuple[Any, Any]:
    from audio_common_msgs.msg import AudioData, AudioDataStamped

    image_pub = camera(harness)
    audio_pub = harness.publisher(AudioDataStamped if stamped else AudioData, '/audio',
                                  'reliable', depth=200)
    if not harness.wait_connected([image_pub, audio_pub]):
        raise RuntimeError('the node did not subscribe to /image and /audio')
    return image_pub, audio_pub


def raw_latched_info(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """An AudioInfo latched before the node subscribes reaches it: decoded at 48 kHz stereo."""
    harness = new_harness(context, config, 'raw_latched',
                          {**RAW, 'audio_msg_type': 'audio_data_stamped'}, autostart=False)
    try:
        info_pub = harness.peer.create_publisher(type(_info(1, 1)), '/audio_info', LATCHED)
        info_pub.publish(_info(48000, 2))
        time.sleep(1.0)
        if not harness.node.start():
            raise RuntimeError('raw_latched did not configure and activate')
        spy = WindowSpy(harness.node)
        image_pub, audio_pub = _raw_publishers(harness)
        raw = RawStream()
        stream = stream_for(harness, image_pub, audio_pub, lambda: len(spy.windows) >= 2,
                            lambda c, t: raw.message(c, t, harness))
        return {**node_facts(harness), 'errors': window_errors(spy, stream.t0, 48000, 2)}
    finally:
        harness.close()


def raw_late_volatile_info(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """audio_capture style: AudioInfo volatile, first sent 1.3 s into the stream, then every
    second. The chunks before it are held (reported on /diagnostics) and then decoded."""
    harness = new_harness(context, config, 'raw_late', {
        **RAW, 'audio_msg_type': 'audio_data_stamped', 'diagnostics_period': 0.2})
    waiting: list[str] = []
    try:
        info_pub = harness.peer.create_publisher(type(_info(1, 1)), '/audio_info', VOLATILE)
        spy = WindowSpy(harness.node)
        image_pub, audio_pub = _raw_publishers(harness)
        raw = RawStream()

        def audio(c: int, t: float) -> Any:
            if c == 40:     # 1.28 s of audio went out before the first AudioInfo
                harness.wait_for(lambda: harness.diagnostics_values('inputs').get(
                    '__message__', '').startswith('waiting for audio_info'), 30.0)
                waiting.append(harness.diagnostics_values('inputs').get('__message__', ''))
                waiting.append(harness.node.raw_audio_state())
            if c >= 40 and c % 30 == 10:
                info_pub.publish(_info(48000, 2))
            return raw.message(c, t, harness)

        stream = stream_for(harness, image_pub, audio_pub, lambda: len(spy.windows) >= 2, audio)
        return {**node_facts(harness), 'waiting': waiting,
                'errors': window_errors(spy, stream.t0, 48000, 2)}
    finally:
        harness.close()


def raw_headerless_held(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """AudioData (no header) held until AudioInfo: each chunk is placed at its receipt time minus
    its duration, not at the time it was released."""
    harness = new_harness(context, config, 'raw_headerless', {**RAW, 'audio_msg_type': 'audio_data'})
    try:
        info_pub = harness.peer.create_publisher(type(_info(1, 1)), '/audio_info', VOLATILE)
        spy = WindowSpy(harness.node)
        image_pub, audio_pub = _raw_publishers(harness, stamped=False)
        raw = RawStream(stamped=False)
        released: list[float] = []
        received: list[float] = []    # the node's receipt times of the held chunks
        placed: list[tuple[float, float]] = []     # the buffered audio's span, after release

        def audio(c: int, t: float) -> Any:
            node = harness.node
            if c == 30:
                harness.wait_for(lambda: node._raw_gate.held >= 30, 30.0)
                with node._input_lock:
                    received.extend(chunk.received for chunk in node._raw_gate._held)
                released.append(node.get_clock().now().nanoseconds * 1e-9)
                info_pub.publish(_info(48000, 2))
                # released and placed: all 30 held chunks are in the buffer
                harness.wait_for(lambda: node._stats.counts.get('unstamped_audio', 0) >= 30, 30.0)
            if c == 31 and node._policy.audio_end is not None:
                with node._input_lock:
                    placed.append((node._policy.audio.start_time, node._policy.audio.end_time))
            return raw.message(c, t, harness)

        stream_for(harness, image_pub, audio_pub, lambda: len(spy.windows) >= 1, audio)
        return {**node_facts(harness), 'sent': raw.sent[:31], 'released': released[0],
                'received': received, 'placed': placed, 'window_rates': [rate for _, rate, _ in spy.windows]}
    finally:
        harness.close()


def raw_explicit_format(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """audio_sample_format set and no audio_info at all: decoded at once with the parameters."""
    harness = new_harness(context, config, 'raw_explicit', {
        **RAW, 'audio_msg_type': 'audio_data_stamped', 'audio_sample_format': 'S16LE',
        'audio_sample_rate': 48000, 'audio_channels': 2})
    try:
        spy = WindowSpy(harness.node)
        image_pub, audio_pub = _raw_publishers(harness)
        raw = RawStream()
        stream = stream_for(harness, image_pub, audio_pub, lambda: len(spy.windows) >= 2,
                            lambda c, t: raw.message(c, t, harness))
        return {**node_facts(harness), 'errors': window_errors(spy, stream.t0, 48000, 2)}
    finally:
        harness.close()


def raw_format_change(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """48 kHz stereo, then (a new AudioInfo first) 16 kHz mono: counted once, windows go on at
    16 kHz with the right samples."""
    harness = new_harness(context, config, 'raw_change', {**RAW, 'audio_msg_type': 'audio_data_stamped'})
    try:
        info_pub = harness.peer.create_publisher(type(_info(1, 1)), '/audio_info', LATCHED)
        info_pub.publish(_info(48000, 2))
        spy = WindowSpy(harness.node)
        image_pub, audio_pub = _raw_publishers(harness)
        before, after = RawStream(), RawStream(16000, 1)
        switch = 70
        changed: list[float] = []

        def audio(c: int, t: float) -> Any:
            if c == switch:
                info_pub.publish(_info(16000, 1))
                # The new format must be known before its first chunk (a different topic).
                harness.wait_for(lambda: harness.node._raw_gate.format is not None
                                 and harness.node._raw_gate.format.sample_rate == 16000, 30.0)
                changed.append(t)
            if c < switch:
                return before.message(c, t, harness)
            return after.message(c, t, harness)

        stream = stream_for(harness, image_pub, audio_pub, lambda: any(
            rate == 16000 and changed and start >= changed[0] for start, rate, _ in spy.windows),
            audio)
        # Both signals are indexed from the stream start; windows before the switch are 48 kHz.
        errors = window_errors(spy, stream.t0, 16000, 1, since=changed[0]) if changed else []
        return {**node_facts(harness), 'errors': errors, 't0': stream.t0}
    finally:
        harness.close()


def raw_refused_formats(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """mp3, then an unsupported sample format: refused with a reason, counted, nothing decoded."""
    harness = new_harness(context, config, 'raw_refused', {
        **RAW, 'audio_msg_type': 'audio_data_stamped', 'diagnostics_period': 0.2})
    seen: dict[str, Any] = {}
    try:
        info_pub = harness.peer.create_publisher(type(_info(1, 1)), '/audio_info', LATCHED)
        info_pub.publish(_info(16000, 1, coding='mp3'))
        spy = WindowSpy(harness.node)
        image_pub, audio_pub = _raw_publishers(harness)
        raw = RawStream(16000, 1)

        def audio(c: int, t: float) -> Any:
            if c == 40:
                harness.wait_for(lambda: 'compressed' in harness.diagnostics_values('inputs').get(
                    '__message__', ''), EVENT_TIMEOUT)
                seen['mp3'] = (harness.node.raw_audio_state(), harness.node._stats.last_input_problem,
                               dict(harness.diagnostics_values('inputs')))
                info_pub.publish(_info(16000, 1, sample_format='S20LE'))
            return raw.message(c, t, harness)

        stream = StreamPublisher(harness, image_pub, audio_pub, make_audio=audio)
        stream.run(2.5)         # 2.5 s of stream, however long the machine takes for it
        harness.wait_for(lambda: 'S20LE' in harness.node.raw_audio_state(), EVENT_TIMEOUT)
        seen['after'] = harness.node.raw_audio_state()
        return {**node_facts(harness), 'seen': seen, 'spied': len(spy.windows),
                'chunks_sent': len(raw.sent)}
    finally:
        harness.close()


RAW_SCENARIOS = {f.__name__: f for f in (raw_latched_info, raw_late_volatile_info,
                                         raw_headerless_held, raw_explicit_format,
                                         raw_format_change, raw_refused_formats)}


def ros_drivers_node(config: dict[str, Any]) -> dict[str, Any]:
    return run_scenarios(config, RAW_SCENARIOS)


# -------------------------------------------------------------------------- mgonzs13 audio
def mgonzs13_auto(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """AudioStamped (paInt16, 48 kHz stereo) found by audio_msg_type auto and decoded exactly."""
    from audio_common_msgs.msg import AudioStamped

    harness = new_harness(context, config, 'mgonzs13_auto', {
        **RAW, 'audio_msg_type': 'auto'})
    try:
        spy = WindowSpy(harness.node)
        image_pub = camera(harness)
        audio_pub = harness.peer.create_publisher(
            AudioStamped, '/audio', QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        samples = signal(48000, 2, 1536 * 4000)

        def audio(c: int, t: float) -> Any:
            msg = AudioStamped()
            total = round(t * 1e9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(total, 1_000_000_000)
            chunk = samples[c * 1536:(c + 1) * 1536]
            msg.audio.audio_data.int16_data = array.array('h', chunk.tobytes())
            msg.audio.info.format, msg.audio.info.channels = 8, 2
            msg.audio.info.rate, msg.audio.info.chunk = 48000, 1536
            return msg

        if not harness.wait_for(lambda: image_pub.get_subscription_count() > 0, 30.0):
            raise RuntimeError('no image subscription')
        stream = stream_for(harness, image_pub, audio_pub, lambda: len(spy.windows) >= 2, audio)
        return {**node_facts(harness), 'kind': harness.node._audio_kind,
                'errors': window_errors(spy, stream.t0, 48000, 2)}
    finally:
        harness.close()


def mgonzs13_node(config: dict[str, Any]) -> dict[str, Any]:
    return run_scenarios(config, {'mgonzs13_auto': mgonzs13_auto})


# ----------------------------------------------------------------------------- vision_msgs
def vision_outputs(context: Any, config: dict[str, Any]) -> dict[str, Any]:
    """~/detections, ~/vision_label_info (joined late) and the class mask of the same windows."""
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from taco_msgs.msg import AudioChunk

    harness = new_harness(context, config, 'vision', {
        'mode': 'baseline', 'mask_encoding': 'class'})
    try:
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        rec = harness.recorder
        harness.peer.create_subscription(Detection2DArray, '/vision/detections',
                                         rec.callback('detections'), reliable)
        image_pub = camera(harness)
        audio_pub = harness.publisher(AudioChunk, '/audio', 'reliable', depth=200)
        if not harness.wait_connected([image_pub, audio_pub]):
            raise RuntimeError('no input subscriptions')
        stream_for(harness, image_pub, audio_pub, lambda: rec.count('detections') >= 2,
                   lambda c, t: audio_chunk_msg(tone(CHUNK, c * CHUNK), t))
        # A consumer that joins now still gets the latched LabelInfo.
        late: list[Any] = []
        harness.peer.create_subscription(LabelInfo, '/vision/vision_label_info', late.append,
                                         LATCHED)
        harness.wait_for(lambda: bool(late), 30.0)
        return {**node_facts(harness), 'windows': _vision_windows(rec),
                'vision_labels': [{str(c.class_id): c.class_name for c in m.class_map}
                                  for m in late],
                'taco_labels': [{str(c.class_id): c.class_name for c in m.class_map}
                                for m in rec.get('label_info')]}
    finally:
        harness.close()


def _vision_windows(rec: Any) -> list[dict[str, Any]]:
    def key(msg: Any) -> str:
        return f'{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}|{msg.header.frame_id}'

    masks = {key(m): m for m in rec.get('mask')}
    objects = {key(m): m for m in rec.get('objects')}
    windows = []
    for detections in rec.get('detections'):
        k = key(detections)
        mask, objs = masks.get(k), objects.get(k)
        if mask is None or objs is None:
            continue
        pixels = np.frombuffer(bytes(mask.data), '<u2' if mask.encoding == 'mono16' else np.uint8)
        windows.append({
            'stamp': stamp_to_sec(detections.header.stamp), 'frame_id': detections.header.frame_id,
            'encoding': mask.encoding, 'size': [mask.height, mask.width, mask.step],
            'mask_values': sorted(int(v) for v in np.unique(pixels)),
            'objects': [{'label': o.label, 'top_labels': list(o.top_labels),
                         'class_id': int(getattr(o, 'class_id', -1)),
                         'bbox': [o.bbox.x_offset, o.bbox.y_offset, o.bbox.width, o.bbox.height]}
                        for o in objs.objects],
            'detections': [{'class_ids': [r.hypothesis.class_id for r in d.results],
                            'header': key(d),
                            'box': [d.bbox.center.position.x - d.bbox.size_x / 2,
                                    d.bbox.center.position.y - d.bbox.size_y / 2,
                                    d.bbox.size_x, d.bbox.size_y]}
                           for d in detections.detections]})
    return windows


def vision_node(config: dict[str, Any]) -> dict[str, Any]:
    return run_scenarios(config, {'vision_outputs': vision_outputs})


ROLES = {f.__name__: f for f in (ros_drivers_node, mgonzs13_node, vision_node)}


def main() -> None:
    role, config = sys.argv[1], json.loads(sys.argv[2])
    report = ROLES[role](config)
    print(json.dumps(report))


if __name__ == '__main__':
    main()
