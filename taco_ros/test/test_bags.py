"""Bags: synthetic scene and media import written with rosbags (both storages), read back exactly;
play and record through rclpy in-process; the bag CLI."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from bringup_fixtures import ros_session, spin_until, tool_missing

from taco_ros import bags

needs_audio_tools = pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')),
                                       reason='needs espeak-ng and sox')
SMALL = bags.SceneConfig(width=96, height=72, fps=5.0, duration=2.0, sample_rate=16000)
BLOCK = 400
START = 1_700_000_000_000_000_000


@pytest.fixture(scope='module')
def small_audio() -> np.ndarray:
    if tool_missing('espeak-ng', 'sox'):
        pytest.skip('needs espeak-ng and sox')
    return bags.scene_audio(SMALL, bags.scene_events(SMALL))


def _read_all(path: Path) -> dict[str, list[bags.BagMessage]]:
    out: dict[str, list[bags.BagMessage]] = {}
    for message in bags.read_messages(path):
        out.setdefault(message.topic, []).append(message)
    return out


# -- writing and reading ---------------------------------------------------------------------------
@needs_audio_tools
@pytest.mark.parametrize('storage', bags.STORAGES)
@pytest.mark.parametrize('compressed', [False, True])
def test_synthetic_bag_round_trip(tmp_path: Path, storage: str, compressed: bool,
                                  small_audio: np.ndarray) -> None:
    path = tmp_path / 'scene'
    summary = bags.make_synthetic_bag(path, SMALL, storage=storage, compressed=compressed,
                                      block_size=BLOCK, start_ns=START)
    image_topic = bags.IMAGE_TOPIC + ('/compressed' if compressed else '')
    assert summary.image_topic == image_topic
    assert (path / 'metadata.yaml').is_file()
    expected_file = f'scene.{"db3" if storage == "sqlite3" else "mcap"}'   # named in metadata.yaml
    assert (path / expected_file).is_file()
    topics = bags.bag_topics(path)
    n_frames = int(SMALL.duration * SMALL.fps) + 1      # frames at 0 .. duration inclusive
    n_blocks = -(-small_audio.size // BLOCK)
    assert topics == {image_topic: (bags.COMPRESSED_TYPE if compressed else bags.IMAGE_TYPE, n_frames),
                      bags.AUDIO_TOPIC: (bags.AUDIO_TYPE, n_blocks)}

    messages = list(bags.read_messages(path))
    assert [m.log_ns for m in messages] == sorted(m.log_ns for m in messages)
    by_topic = _read_all(path)

    frames = by_topic[image_topic]
    for i, message in enumerate(frames):
        stamp = START + round(i / SMALL.fps * 1e9)
        assert bags.stamp_ns(message.msg.header.stamp) == stamp == message.log_ns
        assert message.msg.header.frame_id == 'camera'
        rgb = bags.frame_from_message(message.msg)
        expected = bags.render_scene_frame(SMALL, i / SMALL.fps)
        if compressed:
            assert np.abs(rgb.astype(int) - expected).mean() < 4
        else:
            assert np.array_equal(rgb, expected)

    chunks = by_topic[bags.AUDIO_TOPIC]
    block_ns = BLOCK * 1_000_000_000 // SMALL.sample_rate
    for k, message in enumerate(chunks):
        stamp = START + k * BLOCK * 1_000_000_000 // SMALL.sample_rate
        assert bags.stamp_ns(message.msg.header.stamp) == stamp
        assert message.log_ns == stamp + block_ns       # published once the block is complete
        assert (message.msg.sample_rate, message.msg.channels) == (SMALL.sample_rate, 1)
    audio = np.concatenate([bags.samples_from_message(m.msg)[:, 0] for m in chunks])
    assert np.array_equal(audio, small_audio)

    scene = bags.read_scene(path)
    assert scene['start_ns'] == START and [e['kind'] for e in scene['events']] == [
        'speech', 'tone', 'beeps']


def test_bag_messages_deserialize_as_rclpy_messages(tmp_path: Path) -> None:
    """What ros2 bag play does with the bytes: rclpy (rosidl) deserialization of the CDR."""
    pytest.importorskip('rclpy')
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from taco_msgs.msg import AudioChunk

    frames = [(0.0, np.full((8, 10, 3), 7, np.uint8)), (0.5, np.full((8, 10, 3), 9, np.uint8))]
    audio = (np.arange(3000) % 200 - 100).astype(np.int16)
    bags.write_bag(tmp_path / 'b', frames, audio, 8000, block_size=1000, start_ns=START)
    got = _read_all(tmp_path / 'b')
    image = deserialize_message(got[bags.IMAGE_TOPIC][1].raw, Image)
    assert (image.width, image.height, image.encoding, image.step) == (10, 8, 'rgb8', 30)
    assert set(image.data) == {9}
    chunk = deserialize_message(got[bags.AUDIO_TOPIC][2].raw, AudioChunk)
    assert chunk.sample_format == AudioChunk.FORMAT_S16
    assert list(chunk.int16_data) == audio[2000:3000].tolist()
    assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) == divmod(START + 250_000_000, 10**9)


def _rosidl_type_hash(msgtype: str) -> str | None:
    """RIHS01 hash that rosidl generated for ``msgtype`` (its .json next to the .msg), if installed."""
    import json
    import os
    import sys

    package, _, name = msgtype.split('/')
    prefixes = [*os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep), sys.prefix]
    for prefix in filter(None, prefixes):
        path = Path(prefix) / 'share' / package / 'msg' / f'{name}.json'
        if path.is_file():
            hashes = json.loads(path.read_text())['type_hashes']
            return next(h['hash_string'] for h in hashes if h['type_name'] == msgtype)
    return None


@pytest.mark.parametrize('msgtype', [
    bags.IMAGE_TYPE, bags.COMPRESSED_TYPE, bags.AUDIO_TYPE, 'taco_msgs/msg/SoundingObjectArray',
    'taco_msgs/msg/AudioActivation', 'taco_msgs/msg/LabelInfo',
    'diagnostic_msgs/msg/DiagnosticArray', 'rosgraph_msgs/msg/Clock'])
def test_bag_type_hashes_are_the_ones_ros_generates(msgtype: str) -> None:
    """ros2 bag (Jazzy and later) matches topics by type hash: ours must equal rosidl's."""
    expected = _rosidl_type_hash(msgtype)
    if expected is None:
        pytest.skip(f'{msgtype} is not installed here')
    assert bags.typestore().hash_rihs01(msgtype) == expected


def test_written_bag_records_type_hashes(tmp_path: Path) -> None:
    from rosbags.rosbag2 import Reader

    bags.write_bag(tmp_path / 'b', [(0.0, np.zeros((4, 4, 3), np.uint8))], np.zeros(8, np.int16), 8000)
    with Reader(tmp_path / 'b') as reader:
        digests = {c.msgtype: c.digest for c in reader.connections}
    assert digests == {t: bags.typestore().hash_rihs01(t) for t in (bags.IMAGE_TYPE, bags.AUDIO_TYPE)}


@needs_audio_tools
def test_synthetic_audio_has_its_sounds_where_the_events_say(small_audio: np.ndarray) -> None:
    config = bags.SceneConfig(width=64, height=48, fps=2, duration=10.0)
    audio = bags.scene_audio(config, bags.scene_events(config)).astype(np.float32) / 32767
    rate = config.sample_rate
    events = bags.scene_events(config)
    t = np.arange(audio.size) / rate
    inside = np.zeros(audio.size, bool)
    spans = {e.kind: (t >= e.start) & (t < e.end) for e in events}
    for event in events:
        span = spans[event.kind]
        inside |= span
        assert np.sqrt(np.mean(audio[span] ** 2)) > 0.02, event.kind
        alone = span & ~np.any([m for k, m in spans.items() if k != event.kind], axis=0)
        if event.kind in ('tone', 'beeps'):
            part = audio[alone]
            peak_hz = np.argmax(np.abs(np.fft.rfft(part))) * rate / part.size
            assert peak_hz == pytest.approx(440 if event.kind == 'tone' else 880, abs=5)
        if event.kind == 'beeps':          # 200 ms on, 200 ms off from its start
            off = alone & (((t - event.start) % 0.4) > 0.22) & (((t - event.start) % 0.4) < 0.38)
            assert off.any() and np.abs(audio[off]).max() == 0
    both = spans['tone'] & spans['beeps']
    assert both.sum() > rate                 # over a second where two sources sound at once
    spectrum = np.abs(np.fft.rfft(audio[both]))
    freqs = np.fft.rfftfreq(int(both.sum()), 1 / rate)
    for hz in (440, 880):
        assert spectrum[np.abs(freqs - hz) < 5].max() > 0.2 * spectrum.max(), hz
    assert np.abs(audio[~inside]).max() == 0                   # silent stretches are silent


def test_media_bag_from_video_and_folder(tmp_path: Path) -> None:
    import cv2
    import soundfile

    rate, fps, seconds = 8000, 10.0, 1.5
    wav = tmp_path / 'sound.wav'
    samples = (3000 * np.sin(2 * np.pi * 300 * np.arange(int(rate * seconds)) / rate)).astype(np.int16)
    soundfile.write(str(wav), np.stack([samples, -samples], 1), rate, subtype='PCM_16')
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), fps, (64, 48))
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i in range(int(fps * seconds)):
        frame = np.full((48, 64, 3), i * 10, np.uint8)
        writer.write(frame)
        cv2.imwrite(str(folder / f'{i:04d}.png'), frame)
    writer.release()

    summary = bags.make_media_bag(tmp_path / 'v', video, wav, block_size=800, storage='mcap',
                                  start_ns=START)
    assert summary.frames == int(fps * seconds)
    got = _read_all(tmp_path / 'v')
    audio = np.concatenate([bags.samples_from_message(m.msg) for m in got[bags.AUDIO_TOPIC]])
    assert audio.shape == (samples.size, 2) and np.array_equal(audio[:, 1], -samples)
    levels = [int(bags.frame_from_message(m.msg).mean()) for m in got[bags.IMAGE_TOPIC]]
    assert levels == pytest.approx([i * 10 for i in range(len(levels))], abs=3)

    # A folder at a lower rate than given, cut short, resized.
    summary = bags.make_media_bag(tmp_path / 'f', folder, wav, fps=5.0, max_duration=1.0,
                                  resize=(32, 24), start_ns=START)
    assert summary.frames == 5
    frame = bags.frame_from_message(next(bags.read_messages(tmp_path / 'f', [bags.IMAGE_TOPIC])).msg)
    assert frame.shape == (24, 32, 3)
    assert bags.bag_topics(tmp_path / 'f')[bags.AUDIO_TOPIC][1] == rate // 512 + 1   # 1.0 s of audio

    with pytest.raises(ValueError, match='--fps'):
        bags.media_frames(folder)


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    frames = [(0.0, np.zeros((8, 8, 3), np.uint8))]
    with pytest.raises(ValueError, match='int16'):
        bags.write_bag(tmp_path / 'x', frames, np.zeros(10, np.float32), 8000)
    with pytest.raises(ValueError, match='storage'):
        bags.write_bag(tmp_path / 'y', frames, np.zeros(10, np.int16), 8000, storage='zip')
    with pytest.raises(ValueError, match='RGB'):
        bags.write_bag(tmp_path / 'z', [(0.0, np.zeros((8, 8), np.uint8))], np.zeros(10, np.int16), 8000)
    bags.write_bag(tmp_path / 'ok', frames, np.zeros(10, np.int16), 8000)
    with pytest.raises(FileExistsError):
        bags.write_bag(tmp_path / 'ok', frames, np.zeros(10, np.int16), 8000)
    assert not (tmp_path / 'z').exists()                  # a failed write leaves nothing behind
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'todo.txt').write_text('keep me')
    with pytest.raises(ValueError, match='not a rosbag2'):
        bags.remove_bag(tmp_path / 'notes')
    bags.remove_bag(tmp_path / 'ok')
    assert not (tmp_path / 'ok').exists()
    with pytest.raises(ValueError, match='duration'):
        bags.SceneConfig(duration=0.1)
    with pytest.raises(FileNotFoundError):
        bags.read_wav(tmp_path / 'missing.wav')


def test_restamp_cdr_moves_only_the_stamp() -> None:
    from taco_ros.bags import restamp_cdr

    store = bags.typestore()
    msg = bags.audio_message(np.arange(6, dtype=np.int16), 16000, START + 999_999_999, 'mic')
    raw = bytes(store.serialize_cdr(msg, bags.AUDIO_TYPE))
    moved = store.deserialize_cdr(restamp_cdr(raw, 2_500_000_001), bags.AUDIO_TYPE)
    assert bags.stamp_ns(moved.header.stamp) == START + 999_999_999 + 2_500_000_001
    assert moved.header.frame_id == 'mic' and moved.int16_data.tolist() == list(range(6))


# -- play and record through rclpy -----------------------------------------------------------------
@pytest.mark.ros
@needs_audio_tools
def test_play_publishes_with_timing_restamp_and_clock_and_record_reads_back(tmp_path: Path) -> None:
    pytest.importorskip('rclpy')
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from taco_msgs.msg import AudioChunk
    from taco_ros.bags import BagPlayer, BagRecorder

    source = tmp_path / 'scene'
    summary = bags.make_synthetic_bag(source, SMALL, block_size=BLOCK, start_ns=START)
    original = _read_all(source)
    with ros_session('bag_test') as (_, node, executor):
        received: dict[str, list] = {'image': [], 'audio': [], 'clock': []}
        qos = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Image, '/cam', received['image'].append, qos)
        node.create_subscription(AudioChunk, bags.AUDIO_TOPIC, received['audio'].append, qos)
        node.create_subscription(Clock, '/clock', received['clock'].append, 10)
        recorder = BagRecorder(node, tmp_path / 'copy', {'/cam': None, bags.AUDIO_TOPIC: None})
        player = BagPlayer(node, source, rate=2.0, loops=2, restamp=True, clock=True,
                           remap={bags.IMAGE_TOPIC: '/cam'}, loop_gap=0.2)
        assert player.wait_for_subscribers(10)
        assert spin_until(executor, lambda: len(recorder.subscribed()) == 2, 10)
        result: dict = {}
        thread = threading.Thread(target=lambda: result.setdefault('report', player.play()))
        thread.start()
        spin_until(executor, lambda: not thread.is_alive(), 30)
        thread.join(timeout=5)
        n_audio = summary.audio_chunks * 2
        spin_until(executor, lambda: len(received['audio']) >= n_audio and
                   recorder.counts[bags.AUDIO_TOPIC] >= n_audio, 10)
        recorder.close()
    report = result['report']
    assert report.loops == 2
    # Two passes of 2 s at rate 2 with a 0.2 s gap: about 2.2 s of wall time.
    assert 1.9 < report.wall_seconds < 4.0
    n = summary.frames
    assert report.published == {'/camera/image_raw': 2 * n, '/audio': summary.audio_chunks * 2}
    assert len(received['image']) == 2 * n and len(received['audio']) == n_audio

    # Restamped: each pass keeps the recorded spacing, starts near the wall clock, and the second
    # pass comes after the first (nothing goes back in time across the loop).
    stamps = np.array([bags.stamp_ns(m.header.stamp) for m in received['image']])
    assert stamps.tolist() == report.image_stamps_ns
    spacing = np.diff(stamps)
    assert np.all(spacing[:n - 1] == 200_000_000) and np.all(spacing[n:] == 200_000_000)
    # Pass 2 is pass 1 moved by one period: the bag's span plus the gap (in bag time: 0.2 s x rate).
    period = (summary.end_ns + 1 - summary.start_ns) + 400_000_000
    assert np.all(stamps[n:] - stamps[:n] == period)
    assert abs(stamps[0] - START) > 10**15                      # not the bag's original time
    first_pass = [np.asarray(m.data) for m in received['image'][:n]]
    assert all(np.array_equal(a, b.msg.data)
               for a, b in zip(first_pass, original[bags.IMAGE_TOPIC], strict=True))

    # /clock carries bag time (not restamped), within the bag's span.
    clock = np.array([bags.stamp_ns(m.clock) for m in received['clock']])
    assert clock.size > 10 and clock.min() >= START and clock.max() <= summary.end_ns

    # The recorded copy holds the same payloads under the remapped name.
    copy = _read_all(tmp_path / 'copy')
    assert bags.bag_topics(tmp_path / 'copy')['/cam'] == (bags.IMAGE_TYPE, 2 * n)
    recorded_audio = np.concatenate([bags.samples_from_message(m.msg)[:, 0]
                                     for m in copy[bags.AUDIO_TOPIC][:summary.audio_chunks]])
    played_audio = np.concatenate([bags.samples_from_message(m.msg)[:, 0]
                                   for m in original[bags.AUDIO_TOPIC]])
    assert np.array_equal(recorded_audio, played_audio)


@pytest.mark.ros
def test_player_start_offset_and_record_latched_topic(tmp_path: Path) -> None:
    pytest.importorskip('rclpy')
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from taco_msgs.msg import LabelInfo, VocabularyClass
    from taco_ros.bags import BagPlayer, BagRecorder

    frames = [(i * 0.1, np.full((4, 4, 3), i, np.uint8)) for i in range(10)]
    bags.write_bag(tmp_path / 'b', frames, np.zeros(8000, np.int16), 8000, block_size=800,
                   start_ns=START)
    with ros_session('bag_test_latched') as (_, node, executor):
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        publisher = node.create_publisher(LabelInfo, '/taco_node/label_info', latched)
        info = LabelInfo(class_map=[VocabularyClass(class_id=0, class_name='dog'),
                                    VocabularyClass(class_id=1, class_name='cat')], threshold=0.5)
        publisher.publish(info)     # before the recorder exists: only transient-local delivers it
        recorder = BagRecorder(node, tmp_path / 'rec', {'/taco_node/label_info': None},
                               storage='mcap')
        assert spin_until(executor, lambda: recorder.counts['/taco_node/label_info'] == 1, 10)
        recorder.close()
        player = BagPlayer(node, tmp_path / 'b', rate=10.0, start_offset=0.45,
                           topics=[bags.IMAGE_TOPIC])
        report = player.play()
    assert report.published == {bags.IMAGE_TOPIC: 5}            # frames at 0.5 .. 0.9 s
    assert report.image_stamps_ns[0] == START + 500_000_000
    (message,) = list(bags.read_messages(tmp_path / 'rec'))
    assert [c.class_name for c in message.msg.class_map] == ['dog', 'cat']


# -- CLI -------------------------------------------------------------------------------------------
@needs_audio_tools
def test_bag_cli_make_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from taco_ros.cli import main

    out = tmp_path / 'cli_bag'
    argv = ['bag', 'make', str(out), '--duration', '1.5', '--fps', '4', '--size', '80x60',
            '--storage', 'mcap', '--compressed']
    assert main(argv) == 0
    assert main([*argv, '--overwrite']) == 0
    assert bags.bag_topics(out)['/camera/image_raw/compressed'] == (bags.COMPRESSED_TYPE, 7)
    assert main(['bag', 'info', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'sound: speech' in text and '/audio  taco_msgs/msg/AudioChunk' in text
    with pytest.raises(ValueError, match='80x'):
        main(['bag', 'make', str(tmp_path / 'x'), '--size', '80x'])
