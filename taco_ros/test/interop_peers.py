"""Processes of the interoperability tests, run with a test interface workspace sourced.

``python interop_peers.py <role> '<json config>'``: each role is one ROS program (a publisher
written the way the upstream driver publishes, or a consumer using taco_ros's decoders and
builders). A role prints one JSON report as its last stdout line. Publishers and consumers
tell each other how far they are over ``<prefix>/producer`` and ``<prefix>/consumer``
(std_msgs/String, JSON) so that nothing depends on timing: a publisher sends its next step only
after the consumer says it got the previous one.
"""

from __future__ import annotations

import array
import json
import sys
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import String

from taco_ros import conversions as conv
from taco_ros import interop
from taco_ros.audio_formats import RawAudioFormat, RawAudioGate

RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
DEADLINE_S = 240.0   # generous: the machine may be busy


# --------------------------------------------------------------------------------- shared
def stereo_signal(chunk: int, frames: int, rate: int) -> np.ndarray:
    """int16 [frames, 2] of chunk ``chunk``: 440 Hz left, a 1 kHz right, continuous over chunks."""
    t = (np.arange(frames) + chunk * frames) / rate
    left = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    right = 0.25 * np.sin(2 * np.pi * 1000.0 * t)
    return np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)


class Peer(Node):
    """A node that tells its partner its progress, hears the partner's, and spins bounded."""

    def __init__(self, name: str, prefix: str, side: str) -> None:
        super().__init__(name)
        other = 'consumer' if side == 'producer' else 'producer'
        self._status = self.create_publisher(String, f'{prefix}/{side}', RELIABLE)
        self.partner: dict[str, Any] = {}
        self.create_subscription(String, f'{prefix}/{other}',
                                 lambda m: self.partner.update(json.loads(m.data)), RELIABLE)

    def say(self, **status: Any) -> None:
        self._status.publish(String(data=json.dumps(status)))

    def spin_until(self, done: Any, timeout: float = DEADLINE_S) -> bool:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.05)
        return bool(done())


def matched(publisher: Any) -> bool:
    return publisher.get_subscription_count() > 0


# ----------------------------------------------------------------------- ros-drivers audio
def raw_audio_publisher(config: dict[str, Any]) -> dict[str, Any]:
    """audio_capture-style publisher: ``audio_stamped`` bytes and an ``audio_info`` beside them.

    mode 'late': ``info_after`` chunks go out before any AudioInfo (a subscriber that joined
    between two of the capture node's periodic AudioInfo messages); 'early': AudioInfo first.
    use_builders: build the messages with taco_ros.interop (the mic node's output path) instead
    of by hand.
    """
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo

    prefix, rate, frames = config['prefix'], config['rate'], config['frames']
    node = Peer('audio_capture', prefix, 'producer')
    audio = node.create_publisher(AudioDataStamped, f'{prefix}/audio_stamped', RELIABLE)
    info_pub = node.create_publisher(AudioInfo, f'{prefix}/audio_info', QoSProfile(depth=1))
    node.spin_until(lambda: matched(audio) and matched(info_pub) and node.partner.get('ready'))

    def info() -> Any:
        if config['use_builders']:
            return interop.ros_drivers_audio_info(rate, 2, np.int16)
        return AudioInfo(channels=2, sample_rate=rate, sample_format='S16LE',
                         bitrate=rate * 2 * 16, coding_format='wave')

    def chunk(index: int) -> Any:
        samples = stereo_signal(index, frames, rate)
        stamp_ns = config['start_ns'] + index * frames * 1_000_000_000 // rate
        if config['use_builders']:
            return interop.ros_drivers_audio_stamped(samples, stamp_ns, 'mic')
        msg = AudioDataStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.header.frame_id = 'mic'
        msg.audio.data = array.array('B', samples.astype('<i2').tobytes())
        return msg

    first = config['info_after'] if config['mode'] == 'late' else 0
    for index in range(first):
        audio.publish(chunk(index))
    node.spin_until(lambda: node.partner.get('received', 0) >= first)
    info_pub.publish(info())
    node.spin_until(lambda: node.partner.get('info'))
    for index in range(first, config['chunks']):
        audio.publish(chunk(index))
    done = node.spin_until(lambda: node.partner.get('done'))
    return {'done': done}


def raw_audio_consumer(config: dict[str, Any]) -> dict[str, Any]:
    """A consumer that decodes ros-drivers audio through RawAudioGate, as the node will."""
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo

    prefix = config['prefix']
    node = Peer('raw_audio_consumer', prefix, 'consumer')
    gate = RawAudioGate()
    report: dict[str, Any] = {'rates': [], 'channels': [], 'stamps': [], 'held_at_info': None,
                              'resets': [], 'refusals': [], 'dropped': 0, 'received': 0}
    decoded: list[np.ndarray] = []

    def take(update: Any) -> None:
        report['dropped'] += update.dropped
        report['resets'] += [update.reset] if update.reset else []
        report['refusals'] += [update.refusal] if update.refusal else []
        for held, fmt in update.ready:
            chunk = conv.decode_audio_data(held.payload, fmt)
            decoded.append(chunk.samples)
            report['rates'].append(chunk.sample_rate)
            report['channels'].append(chunk.samples.shape[1])
            report['stamps'].append(chunk.stamp)

    def on_audio(msg: Any) -> None:
        report['received'] += 1
        take(gate.on_data(msg, len(conv.audio_data_bytes(msg)), time.monotonic()))
        node.say(received=report['received'], info=gate.format is not None)

    def on_info(msg: Any) -> None:
        if report['held_at_info'] is None:
            report['held_at_info'] = gate.held
        take(gate.on_info(RawAudioFormat.from_msg(msg)))
        node.say(received=report['received'], info=True)

    node.create_subscription(AudioDataStamped, f'{prefix}/audio_stamped', on_audio, RELIABLE)
    node.create_subscription(AudioInfo, f'{prefix}/audio_info', on_info, QoSProfile(depth=10))
    node.spin_until(lambda: (node.say(ready=True, received=report['received'])
                             or sum(len(d) for d in decoded) >= config['total_frames']),
                    DEADLINE_S)
    node.say(done=True)
    node.spin_until(lambda: False, 0.5)   # let the last status reach the publisher
    np.save(config['samples_path'], np.concatenate(decoded) if decoded else np.zeros((0, 2)))
    return report


def raw_audio_bag_decoder(config: dict[str, Any]) -> dict[str, Any]:
    """A bag's ros-drivers audio, replayed through ``bag process``'s decoder: serialized chunks
    (AudioData, no header) with their AudioInfo recorded after the first ``info_after``, then an mp3
    AudioInfo; what each message released. No DDS: a bag is read in recorded order."""
    from audio_common_msgs.msg import AudioData, AudioInfo
    from rclpy.serialization import serialize_message

    from taco_ros import params
    from taco_ros.bags.inputs import InputDecoder

    rate, frames = config['rate'], config['frames']
    values = {**params.defaults(), 'audio_channel': config['audio_channel']}
    decoder = InputDecoder('sensor_msgs/msg/Image', 'audio_common_msgs/msg/AudioData', values)
    report: dict[str, Any] = {'released': [], 'rates': [], 'received': [], 'dropped': 0,
                              'refusals': [], 'problems': []}
    decoded: list[np.ndarray] = []

    def take(release: Any) -> None:
        report['released'].append(len(release.chunks))
        report['dropped'] += release.dropped
        report['refusals'] += [release.refusal] if release.refusal else []
        report['problems'] += [str(p) for p in release.problems]
        for chunk in release.chunks:
            decoded.append(chunk.samples)
            report['rates'].append(chunk.sample_rate)
            report['received'].append(chunk.received)

    def data(index: int) -> bytes:
        pcm = stereo_signal(index, frames, rate).astype('<i2').tobytes()
        return serialize_message(AudioData(data=array.array('B', pcm)))

    def info(coding: str) -> bytes:
        return serialize_message(AudioInfo(channels=2, sample_rate=rate, sample_format='S16LE',
                                           bitrate=rate * 32, coding_format=coding))

    for index in range(config['chunks']):
        if index == config['info_after']:
            take(decoder.audio_info(info('wave')))
        take(decoder.audio(data(index), index * 0.1))
    take(decoder.audio_info(info('mp3')))
    take(decoder.audio(data(config['chunks']), config['chunks'] * 0.1))
    np.save(config['samples_path'], np.concatenate(decoded) if decoded else np.zeros(0))
    return report


# -------------------------------------------------------------------------- mgonzs13 audio
def mgonzs13_capturer(config: dict[str, Any]) -> dict[str, Any]:
    """audio_capturer_node-style publisher: AudioStamped with SensorDataQoS, stamped with
    now() taken before a blocking read of ``chunk`` frames (simulated at the real rate).

    The right channel carries the chunk index so a consumer can check any chunk it receives
    (best-effort delivery may skip some)."""
    from audio_common_msgs.msg import AudioStamped

    prefix, rate, frames = config['prefix'], config['rate'], config['chunk']
    node = Peer('audio_capturer_node', prefix, 'producer')
    pub = node.create_publisher(AudioStamped, f'{prefix}/audio', qos_profile_sensor_data)
    node.spin_until(lambda: matched(pub) and node.partner.get('ready'))
    start = time.monotonic()
    index = 0
    while not node.partner.get('done') and time.monotonic() - start < DEADLINE_S:
        msg = AudioStamped()
        msg.header.frame_id = 'mic'
        msg.header.stamp = node.get_clock().now().to_msg()
        # The blocking read: returns once the chunk's last frame has been captured.
        time.sleep(max(0.0, start + (index + 1) * frames / rate - time.monotonic()))
        samples = np.zeros((frames, 2), np.int16)
        samples[:, 0] = np.arange(frames) * 50 - 12800
        samples[:, 1] = index
        msg.audio.audio_data.int16_data = array.array('h', samples.tobytes())
        msg.audio.info.format, msg.audio.info.channels = conv.PA_INT16, 2
        msg.audio.info.rate, msg.audio.info.chunk = rate, frames
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=0.0)
        index += 1
    return {'published': index}


def mgonzs13_consumer(config: dict[str, Any]) -> dict[str, Any]:
    """Decodes AudioStamped with taco_ros's decoder and checks every chunk it receives."""
    from audio_common_msgs.msg import AudioStamped

    prefix, frames = config['prefix'], config['chunk']
    node = Peer('mgonzs13_consumer', prefix, 'consumer')
    report: dict[str, Any] = {'flavour': conv.audio_common_flavour(), 'indices': [], 'stamps': [],
                              'rates': [], 'shapes': [], 'max_error': 0.0}
    ramp = (np.arange(frames) * 50 - 12800) / 32768.0

    def on_audio(msg: Any) -> None:
        chunk = conv.decode_audio_common_stamped(msg)
        index = round(float(chunk.samples[0, 1]) * 32768.0)
        expected = np.stack([ramp, np.full(frames, index / 32768.0)], axis=1)
        report['max_error'] = max(report['max_error'],
                                  float(np.abs(chunk.samples - expected).max()))
        report['indices'].append(index)
        report['stamps'].append(chunk.stamp)
        report['rates'].append(chunk.sample_rate)
        report['shapes'].append(list(chunk.samples.shape))

    node.create_subscription(AudioStamped, f'{prefix}/audio', on_audio, qos_profile_sensor_data)
    node.spin_until(lambda: node.say(ready=True) or len(report['indices']) >= config['wanted'])
    node.say(done=True)
    node.spin_until(lambda: False, 0.5)
    return report


# ------------------------------------------------------------------------------- builders
def audio_builders(config: dict[str, Any]) -> dict[str, Any]:
    """Build mic outputs with taco_ros.interop, serialize them as DDS would and decode them."""
    from rclpy.serialization import deserialize_message, serialize_message

    rng = np.random.default_rng(3)
    report: dict[str, Any] = {'outputs': {k: [v.available, v.reason]
                                          for k, v in interop.optional_outputs().items()},
                              'errors': {}, 'refused': {}}
    flavour = conv.audio_common_flavour()
    report['flavour'] = flavour
    for name in ('float32', 'int32', 'int16', 'int8', 'uint8'):
        dtype = np.dtype(name)
        if dtype.kind == 'f':
            samples = rng.uniform(-1, 1, (300, 3)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            samples = rng.integers(info.min, info.max, (300, 3), endpoint=True).astype(dtype)
        expected = conv.interleaved_to_frames(samples, 3, *_scale(dtype))
        try:
            if flavour == conv.FLAVOUR_MGONZS13:
                msg = interop.mgonzs13_audio_stamped(samples, 44100, 1_500_000_000_123, 'mic')
                back = deserialize_message(serialize_message(msg), type(msg))
                chunk = conv.decode_audio_common_stamped(back)
                fields = [back.audio.info.format, back.audio.info.channels, back.audio.info.rate,
                          back.audio.info.chunk]
            else:
                msg = interop.ros_drivers_audio_stamped(samples, 1_500_000_000_123, 'mic')
                info = interop.ros_drivers_audio_info(44100, 3, dtype)
                back = deserialize_message(serialize_message(msg), type(msg))
                info = deserialize_message(serialize_message(info), type(info))
                chunk = conv.decode_audio_data(back, RawAudioFormat.from_msg(info))
                fields = [info.sample_format, info.channels, info.sample_rate, info.bitrate,
                          info.coding_format]
        except ValueError as exc:
            report['refused'][name] = str(exc)
            continue
        report['errors'][name] = {
            'max_error': float(np.abs(chunk.samples - expected).max()), 'fields': fields,
            'stamp': chunk.stamp, 'rate': chunk.sample_rate, 'frame_id': back.header.frame_id}
    try:
        if flavour == conv.FLAVOUR_MGONZS13:
            interop.ros_drivers_audio_info(16000, 1, np.int16)
        else:
            interop.mgonzs13_audio_stamped(np.zeros((1, 1), np.int16), 16000, 0)
    except ValueError as exc:
        report['other_flavour_refusal'] = str(exc)
    return report


def _scale(dtype: np.dtype) -> tuple[float, float]:
    if dtype.kind == 'f':
        return 1.0, 0.0
    full_scale = float(2 ** (dtype.itemsize * 8 - 1))
    return full_scale, (full_scale if dtype.kind == 'u' else 0.0)


# ----------------------------------------------------------------------------- vision_msgs
def detection_publisher(config: dict[str, Any]) -> dict[str, Any]:
    """taco's side: LabelInfo (latched, sent before anyone listens) and Detection2DArray built
    by taco_ros.interop from a TacoResult."""
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from taco_ros.core.contract import SoundingObjectResult, TacoResult

    prefix, vocabulary = config['prefix'], config['vocabulary']
    node = Peer('taco_node', prefix, 'producer')
    labels = node.create_publisher(LabelInfo, f'{prefix}/label_info', LATCHED)
    detections = node.create_publisher(Detection2DArray, f'{prefix}/detections', RELIABLE)
    header = Header(frame_id='camera')
    header.stamp.sec, header.stamp.nanosec = 1234, 500
    labels.publish(interop.label_info(vocabulary, header, 0.5))
    objects = [SoundingObjectResult(
        mask_value=i + 1, label=obj['top_labels'][0], score=obj['top_scores'][0],
        top_labels=obj['top_labels'], top_scores=obj['top_scores'], confidence=0.9,
        audio_activation=0.7, bbox=tuple(obj['bbox']), factor_index=i)
        for i, obj in enumerate(config['objects'])]
    result = TacoResult(
        mask=np.zeros((48, 64), np.uint8), objects=objects, sounding=True, confidence=0.9,
        k_star=0, steps=10, cold_start=False, mode='full', activation=np.zeros(4, np.float32),
        token_offsets=np.zeros(4, np.float32), token_duration=0.25, window_duration=1.0,
        timings={}, score_map=None, random_weights=True)
    message = interop.detection_array(result, vocabulary, header)
    with open(config['marker'], 'w') as marker:   # the consumer is started only now
        marker.write('label_info published\n')
    deadline = time.monotonic() + DEADLINE_S
    while not node.partner.get('done') and time.monotonic() < deadline:
        detections.publish(message)
        node.spin_until(lambda: node.partner.get('done'), 0.3)
    return {'done': bool(node.partner.get('done'))}


def detection_consumer(config: dict[str, Any]) -> dict[str, Any]:
    """A generic vision_msgs consumer: names class ids through LabelInfo, boxes from centre and
    size, exactly as vision_msgs documents them. Joins after LabelInfo was published."""
    from vision_msgs.msg import Detection2DArray, LabelInfo

    prefix = config['prefix']
    node = Peer('vision_consumer', prefix, 'consumer')
    names: dict[str, str] = {}
    report: dict[str, Any] = {}

    def on_labels(msg: Any) -> None:
        names.update({str(c.class_id): c.class_name for c in msg.class_map})
        report['threshold'] = msg.threshold

    def on_detections(msg: Any) -> None:
        if not names or 'objects' in report:
            return
        report['frame_id'] = msg.header.frame_id
        report['stamp'] = [msg.header.stamp.sec, msg.header.stamp.nanosec]
        report['objects'] = [{
            'words': [names[r.hypothesis.class_id] for r in d.results],
            'class_ids': [r.hypothesis.class_id for r in d.results],
            'scores': [r.hypothesis.score for r in d.results],
            'box': [d.bbox.center.position.x - d.bbox.size_x / 2,
                    d.bbox.center.position.y - d.bbox.size_y / 2, d.bbox.size_x, d.bbox.size_y],
            'theta': d.bbox.center.theta, 'id': d.id,
            'header': d.header.frame_id} for d in msg.detections]

    node.create_subscription(LabelInfo, f'{prefix}/label_info', on_labels, LATCHED)
    node.create_subscription(Detection2DArray, f'{prefix}/detections', on_detections, RELIABLE)
    node.spin_until(lambda: node.say(ready=True) or 'objects' in report)
    node.say(done=True)
    node.spin_until(lambda: False, 0.5)
    report['names'] = names
    return report


# ------------------------------------------------------------------------------- mic_node
def mic_listener(config: dict[str, Any]) -> dict[str, Any]:
    """A consumer of mic_node's audio_common output: subscribes to the audio (reliable, so that
    no block is missing from the comparison) and to the latched AudioInfo of a ros-drivers
    stream (joining after it was sent), decodes with taco_ros's decoders and keeps the int16
    samples of the first channel and the stamps.

    Writes the message count to ``progress_path`` as it goes and stops once ``stop_path`` exists.
    """
    import os
    from pathlib import Path

    from audio_common_msgs.msg import AudioInfo

    flavour = conv.audio_common_flavour()
    node = rclpy.create_node('mic_listener')
    gate = RawAudioGate()
    report: dict[str, Any] = {'flavour': flavour, 'stamps': [], 'frame_ids': [], 'rates': [],
                              'channels': [], 'info': [], 'refusals': []}
    blocks: list[np.ndarray] = []
    progress, stop = Path(config['progress_path']), Path(config['stop_path'])

    def keep(chunk: Any, frame_id: str) -> None:
        blocks.append(np.round(chunk.samples[:, 0] * 32768.0).astype(np.int16))
        report['stamps'].append(round(chunk.stamp * 1e9))
        report['frame_ids'].append(frame_id)
        report['rates'].append(chunk.sample_rate)
        report['channels'].append(chunk.samples.shape[1])
        scratch = progress.with_suffix('.tmp')
        scratch.write_text(str(len(blocks)))
        os.replace(scratch, progress)

    def take(update: Any) -> None:
        report['refusals'] += [update.refusal] if update.refusal else []
        for held, fmt in update.ready:
            keep(conv.decode_audio_data(held.payload, fmt), held.payload.header.frame_id)

    if flavour == conv.FLAVOUR_MGONZS13:
        def on_audio(msg: Any) -> None:
            keep(conv.decode_audio_common_stamped(msg), msg.header.frame_id)
    else:
        def on_audio(msg: Any) -> None:
            take(gate.on_data(msg, len(conv.audio_data_bytes(msg)), time.monotonic()))

        def on_info(msg: Any) -> None:
            report['info'].append([msg.sample_format, msg.channels, msg.sample_rate,
                                   msg.coding_format])
            take(gate.on_info(RawAudioFormat.from_msg(msg)))

        node.create_subscription(AudioInfo, 'audio_info', on_info, LATCHED)
    audio_type = conv.audio_message_class(config['msg_type'])
    node.create_subscription(audio_type, 'audio', on_audio, RELIABLE)
    deadline = time.monotonic() + DEADLINE_S
    while not stop.exists() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    np.save(config['samples_path'], np.concatenate(blocks) if blocks else np.zeros(0, np.int16))
    node.destroy_node()
    return report


def report_outputs(config: dict[str, Any]) -> dict[str, Any]:
    del config
    return {'flavour': conv.audio_common_flavour(),
            'outputs': {k: [v.available, v.reason] for k, v in interop.optional_outputs().items()}}


ROLES = {f.__name__: f for f in (raw_audio_publisher, raw_audio_consumer, raw_audio_bag_decoder,
                                 mgonzs13_capturer,
                                 mgonzs13_consumer, audio_builders, detection_publisher,
                                 detection_consumer, mic_listener, report_outputs)}


def main() -> None:
    role, config = sys.argv[1], json.loads(sys.argv[2])
    rclpy.init()
    try:
        report = ROLES[role](config)
    finally:
        rclpy.try_shutdown()
    print(json.dumps(report))


if __name__ == '__main__':
    main()
