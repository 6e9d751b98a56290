"""mic_node: sample-clock stamping, device selection, and capture through ALSA → PortAudio → ROS."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bringup_fixtures import (
    LIB_DIR,
    FileBackedMic,
    isolate_dds,
    ros_session,
    speech_samples,
    spin_until,
    stop_process,
    tool_missing,
)
from interface_fixtures import PEERS, finish_peer, interface_workspace

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

from taco_ros.mic_node import SampleClock, resolve_input_device  # noqa: E402

RATE = 16000
BLOCK = 800            # 50 ms
BLOCK_NS = BLOCK * 1_000_000_000 // RATE


# -- SampleClock ---------------------------------------------------------------------------------------
def _jittered_measurements(n: int, jitter_ms: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """Measured first-sample times of n blocks: true time + a non-negative scheduling delay."""
    rng = np.random.default_rng(seed)
    true0 = 1_700_000_000_000_000_000
    delays = (rng.exponential(jitter_ms, n) * 1e6).astype(np.int64)
    return true0 + np.arange(n, dtype=np.int64) * BLOCK_NS + delays, true0


def test_sample_clock_spaces_stamps_by_block_duration_despite_jitter() -> None:
    measured, true0 = _jittered_measurements(400, jitter_ms=3.0)
    clock = SampleClock(RATE)
    stamps = np.array([clock.stamp(BLOCK, int(m)) for m in measured])
    steps = np.diff(stamps)
    assert np.all(steps > 0)
    # Spacing is the block duration; the offset moves only when the window's minimum changes, by a
    # fraction of the jitter (3 ms mean here).
    assert np.mean(steps == BLOCK_NS) > 0.9
    assert np.abs(steps[20:] - BLOCK_NS).max() < 500_000
    # And the stamps sit at the true capture times, not at the late callbacks.
    assert np.abs(stamps[20:] - (true0 + np.arange(20, 400) * BLOCK_NS)).max() < 2_000_000
    assert clock.resyncs == 0


def test_sample_clock_late_first_block_is_corrected_without_going_backwards() -> None:
    clock = SampleClock(RATE)
    true0 = 10_000_000_000
    first = clock.stamp(BLOCK, true0 + 40_000_000)           # first callback 40 ms late
    stamps = [first] + [clock.stamp(BLOCK, true0 + k * BLOCK_NS) for k in range(1, 30)]
    assert np.all(np.diff(stamps) >= BLOCK_NS // 2)
    assert stamps[-1] == true0 + 29 * BLOCK_NS


def test_sample_clock_resyncs_on_overflow_and_clock_jump() -> None:
    clock = SampleClock(RATE, tolerance_s=0.2)
    for k in range(5):
        clock.stamp(BLOCK, k * BLOCK_NS)
    # Samples were lost in an overflow: the next block is 1 s later than the sample count says.
    late = 5 * BLOCK_NS + 1_000_000_000
    assert clock.stamp(BLOCK, late, discontinuity=True) == late
    # A wall-clock step forward: late blocks look like a scheduling stall at first, but after
    # tolerance_s of them the clock re-anchors.
    jump = 50_000_000_000
    stamps = [clock.stamp(BLOCK, jump + k * BLOCK_NS) for k in range(8)]
    assert stamps[-1] == jump + 7 * BLOCK_NS
    assert clock.resyncs == 2
    # A step backwards re-anchors at once (a block can never be captured before its predecessor ended).
    assert clock.stamp(BLOCK, 20_000_000_000) == 20_000_000_000
    assert clock.resyncs == 3


def test_sample_clock_rides_out_a_stall() -> None:
    clock = SampleClock(RATE)
    stamps = [clock.stamp(BLOCK, k * BLOCK_NS + 1_000) for k in range(40)]
    # The process stalls for 300 ms; the 6 blocks captured meanwhile then arrive in one burst.
    burst_at = 40 * BLOCK_NS + 300_000_000
    stamps += [clock.stamp(BLOCK, max(burst_at - (5 - i) * 1_000, (40 + i) * BLOCK_NS))
               for i in range(6)]
    stamps += [clock.stamp(BLOCK, k * BLOCK_NS + 1_000) for k in range(46, 60)]
    assert np.array_equal(np.diff(stamps), np.full(59, BLOCK_NS))
    assert clock.resyncs == 0


def test_sample_clock_follows_a_slow_device_clock() -> None:
    clock = SampleClock(RATE)
    # Device clock 200 ppm slow: each block really lasts 1.0002 nominal durations.
    real_ns = int(BLOCK_NS * 1.0002)
    stamps = [clock.stamp(BLOCK, k * real_ns) for k in range(3000)]
    assert abs(stamps[-1] - 2999 * real_ns) < 2_000_000
    assert clock.resyncs == 0


def test_sample_clock_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match='sample_rate'):
        SampleClock(0)


# -- device selection ----------------------------------------------------------------------------------
DEVICES = [
    {'name': 'HDA Intel PCH: ALC3246 Analog (hw:0,0)', 'max_input_channels': 2},
    {'name': 'HDMI 0', 'max_input_channels': 0},
    {'name': 'ReSpeaker 4 Mic Array (UAC1.0)', 'max_input_channels': 6},
]


def test_resolve_input_device_by_default_index_and_substring() -> None:
    assert resolve_input_device('', 1, DEVICES, default_index=0) == 0
    assert resolve_input_device('-1', 1, DEVICES, default_index=2) == 2
    assert resolve_input_device('', 4, DEVICES, default_index=0) == 2   # default lacks channels
    assert resolve_input_device('2', 1, DEVICES, default_index=0) == 2
    assert resolve_input_device('respeaker', 6, DEVICES, default_index=0) == 2
    assert resolve_input_device('', 1, DEVICES, default_index=-1) == 0   # no PortAudio default


@pytest.mark.parametrize('spec,channels', [('webcam', 1), ('1', 1), ('7', 1), ('respeaker', 8)])
def test_resolve_input_device_errors_name_the_alternatives(spec: str, channels: int) -> None:
    with pytest.raises(LookupError, match='ReSpeaker 4 Mic Array'):
        resolve_input_device(spec, channels, DEVICES, default_index=0)


def test_resolve_input_device_with_no_devices() -> None:
    with pytest.raises(LookupError, match='no input devices'):
        resolve_input_device('', 1, [], default_index=-1)


# -- the real stack ------------------------------------------------------------------------------------
def _start_mic_node(mic: FileBackedMic, *params: str,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(env or os.environ, **isolate_dds(), **mic.env())
    args = [str(LIB_DIR / 'mic_node'), '--ros-args', '-p', f'device:={mic.DEVICE_NAME}',
            '-p', f'sample_rate:={RATE}', '-p', f'block_size:={BLOCK}', '-p', 'frame_id:=test_mic',
            *[a for p in params for a in ('-p', p)]]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class _Listener:
    def __init__(self, node: object) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from taco_msgs.msg import AudioChunk
        self.chunks: list = []
        self.diagnostics: list = []
        node.create_subscription(AudioChunk, 'audio', self.chunks.append,
                                 QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    def _on_diag(self, msg: object) -> None:
        self.diagnostics.extend(s for s in msg.status if s.name.startswith('mic_node'))

    def samples(self) -> np.ndarray:
        return np.concatenate([np.asarray(c.int16_data, dtype=np.int16) for c in self.chunks])

    def stamps_ns(self) -> np.ndarray:
        return np.array([c.header.stamp.sec * 1_000_000_000 + c.header.stamp.nanosec for c in self.chunks])


def _level(status: object) -> int:
    """DiagnosticStatus.level as an int (rclpy gives a ``byte`` field as bytes)."""
    return status.level[0] if isinstance(status.level, bytes) else int(status.level)


def _find(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Index where ``needle`` occurs exactly in ``haystack``, -1 if nowhere."""
    first = np.nonzero(haystack == needle[0])[0]
    for start in first:
        window = haystack[start:start + needle.size]
        if window.size == needle.size and np.array_equal(window, needle):
            return int(start)
    return -1


@pytest.mark.ros
@pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')), reason='needs espeak-ng and sox')
def test_mic_node_publishes_the_devices_samples_with_sample_clock_stamps(tmp_path: Path) -> None:
    speech = speech_samples('hello robot, where is that sound coming from', RATE, tmp_path)
    mic = FileBackedMic(tmp_path, RATE, BLOCK)
    mic.install()
    mic.start()
    process = _start_mic_node(mic, 'qos:=reliable')
    try:
        with ros_session('mic_test_listener') as (_, node, executor):
            listener = _Listener(node)
            assert spin_until(executor, lambda: len(listener.chunks) >= 5, 30), 'no audio published'
            mic.play(speech)
            assert spin_until(executor, mic.idle, 30)
            # A little more silence so the last speech block is surely published.
            n = len(listener.chunks)
            assert spin_until(executor, lambda: len(listener.chunks) >= n + 6, 10)
            spin_until(executor, lambda: any(_level(s) == 0 for s in listener.diagnostics), 5)
    finally:
        stop_process(process)
        mic.close()
    log = process.stdout.read()

    chunk = listener.chunks[0]
    assert (chunk.sample_rate, chunk.channels, chunk.sample_format) == (RATE, 1, chunk.FORMAT_S16)
    assert chunk.header.frame_id == 'test_mic'
    assert {len(c.int16_data) for c in listener.chunks} == {BLOCK}, log

    # The speech arrives sample for sample, after the silence that was playing when it was queued.
    published = listener.samples()
    start = _find(published, speech)
    assert start >= 0, 'speech samples not found intact in the published stream'
    assert not published[:start].any()

    stamps = listener.stamps_ns()
    steps = np.diff(stamps)
    assert np.all(steps > 0)
    # Sample-clock stamps: every block is one block duration after the previous one (after the first
    # few blocks, where the offset settles on the earliest callback).
    assert np.abs(steps[5:] - BLOCK_NS).max() < 2_000_000, steps
    assert np.median(np.abs(steps - BLOCK_NS)) < 100_000
    # The stamp of the first speech sample is its capture time (the writer's clock), not publish time.
    speech_stamp = stamps[start // BLOCK] + (start % BLOCK) * 1_000_000_000 // RATE
    error_ms = (speech_stamp - mic.play_started_ns[0]) / 1e6
    assert abs(error_ms) < 150, f'first-sample stamp off by {error_ms:.1f} ms'

    ok = [s for s in listener.diagnostics if _level(s) == 0]
    assert ok, [(_level(s), s.message) for s in listener.diagnostics]
    values = {kv.key: kv.value for kv in ok[-1].values}
    assert values['device'] == mic.DEVICE_NAME and values['input_overflows'] == '0'
    assert process.returncode == 0, log


@pytest.mark.ros
@pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')), reason='needs espeak-ng and sox')
def test_mic_node_survives_a_missing_device_and_picks_it_up_later(tmp_path: Path) -> None:
    mic = FileBackedMic(tmp_path, RATE, BLOCK)     # not installed yet: ALSA does not know the device
    mic.start()
    process = _start_mic_node(mic, 'qos:=reliable', 'retry_initial_s:=0.2', 'retry_max_s:=1.0',
                              'diagnostics_period_s:=0.5')
    try:
        with ros_session('mic_test_recovery') as (_, node, executor):
            listener = _Listener(node)
            assert spin_until(executor, lambda: any(_level(s) == 2 for s in listener.diagnostics), 30)
            error = next(s for s in listener.diagnostics if _level(s) == 2)
            assert mic.DEVICE_NAME in error.message and 'not found' in error.message, error.message
            spin_until(executor, lambda: False, 1.5)
            assert process.poll() is None, 'mic_node exited instead of retrying'
            assert not listener.chunks

            mic.install()          # the "microphone is plugged in"
            tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.int16)
            assert spin_until(executor, lambda: len(listener.chunks) >= 3, 30), 'no audio after recovery'
            mic.play(tone)
            assert spin_until(executor, mic.idle, 10)
            n = len(listener.chunks)
            assert spin_until(executor, lambda: len(listener.chunks) >= n + 6, 10)
            assert spin_until(executor, lambda: _level(listener.diagnostics[-1]) == 0, 5)
    finally:
        stop_process(process)
        mic.close()
    assert _find(listener.samples(), tone) >= 0
    values = {kv.key: kv.value for kv in listener.diagnostics[-1].values}
    assert int(values['stream_restarts']) == 1 and values['last_error'] == ''


@pytest.mark.ros
def test_mic_node_reopens_a_device_that_stops_delivering(tmp_path: Path) -> None:
    mic = FileBackedMic(tmp_path, RATE, BLOCK)
    mic.install()
    mic.start()
    process = _start_mic_node(mic, 'qos:=reliable', 'device_timeout_s:=1.0', 'retry_initial_s:=0.2',
                              'diagnostics_period_s:=0.5')
    try:
        with ros_session('mic_test_stall') as (_, node, executor):
            listener = _Listener(node)
            assert spin_until(executor, lambda: len(listener.chunks) >= 5, 30)
            mic.stalled.set()                       # the driver stops delivering blocks
            spin_until(executor, lambda: False, 2.0)
            mic.stalled.clear()
            count = len(listener.chunks)
            assert spin_until(executor, lambda: len(listener.chunks) >= count + 10, 20), \
                'no audio after the device came back'
            assert spin_until(executor, lambda: _level(listener.diagnostics[-1]) == 0, 5)
            assert process.poll() is None
    finally:
        stop_process(process)
        mic.close()
    log = process.stdout.read()
    assert 'lost (no audio for' in log and 'audio input recovered' in log, log
    values = {kv.key: kv.value for kv in listener.diagnostics[-1].values}
    assert int(values['stream_restarts']) >= 1
    stamps = listener.stamps_ns()
    assert np.all(np.diff(stamps) > 0)           # a new stream never stamps into the past


# -- parameters ----------------------------------------------------------------------------------------
@pytest.mark.ros
def test_mic_node_refuses_wrong_parameter_values_and_keeps_running() -> None:
    """A wrong type (which made rclpy raise while the node was built), a value out of range or not
    among the choices: each is reported, replaced by its default, and the node runs and publishes
    its diagnostics."""
    from rclpy.parameter import Parameter

    from taco_ros import params
    from taco_ros.mic_node import SAMPLE_FORMATS, MicNode

    assert tuple(SAMPLE_FORMATS) == params.MIC_SAMPLE_FORMATS
    overrides = {'device': 'no-such-mic', 'sample_rate': 'fast', 'channels': 99,
                 'sample_format': 'int8', 'qos': 'lossy', 'retry_initial_s': 5.0,
                 'retry_max_s': 1.0, 'diagnostics_period_s': 0.2}
    with ros_session('mic_params_probe') as (context, probe, executor):
        from diagnostic_msgs.msg import DiagnosticArray

        statuses: list = []
        probe.create_subscription(DiagnosticArray, '/diagnostics',
                                  lambda m: statuses.extend(m.status), 10)
        mic = MicNode(context=context, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()])
        try:
            executor.add_node(mic)
            problems = ' | '.join(mic.parameter_problems)
            for name in ('sample_rate', 'channels', 'sample_format', 'qos', 'retry_max_s'):
                assert name in problems, problems
            assert (mic.sample_rate, mic.channels, mic.sample_format) == (16000, 1, 'int16')
            assert spin_until(executor, lambda: any(
                'no-such-mic' in s.message for s in statuses), 30)
            values = {kv.key: kv.value for kv in statuses[-1].values}
            assert 'sample_rate' in values['parameter_problems']
        finally:
            executor.remove_node(mic)
            mic.destroy_node()


# -- audio_common output ---------------------------------------------------------------------------
def _count(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def _wait(done: Callable[[], bool], timeout: float, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    return done()


@pytest.mark.ros
@pytest.mark.parametrize('msg_type,workspace', [('audio_common_stamped', 'mgonzs13_audio'),
                                                ('audio_data_stamped', 'ros_drivers_audio')])
def test_mic_node_publishes_each_audio_common_flavour(tmp_path: Path, msg_type: str,
                                                      workspace: str) -> None:
    """mic_node with that flavour of audio_common_msgs sourced, capturing through ALSA and
    PortAudio, and a consumer that joins two seconds later (so a ros-drivers AudioInfo reaches
    it only because it is latched): the sound arrives sample for sample, in blocks stamped one
    block apart, with the format it was captured in."""
    ws = interface_workspace(workspace)
    sound = np.random.default_rng(7).integers(-8000, 8000, RATE // 2).astype(np.int16)
    mic = FileBackedMic(tmp_path, RATE, BLOCK)
    mic.install()
    mic.start()
    # The node, its consumer and nothing else share a domain; the workspace is sourced for both.
    process = _start_mic_node(mic, f'msg_type:={msg_type}', env=ws.env())
    progress, stop = tmp_path / 'progress', tmp_path / 'stop'
    listener = None
    try:
        time.sleep(2.0)
        listener = ws.popen([str(PEERS), 'mic_listener', json.dumps({
            'msg_type': msg_type, 'progress_path': str(progress), 'stop_path': str(stop),
            'samples_path': str(tmp_path / 'samples.npy')})], **isolate_dds())
        assert _wait(lambda: _count(progress) >= 5, 120, listener), 'no audio received'
        mic.play(sound)
        assert _wait(mic.idle, 30, listener)
        count = _count(progress)
        assert _wait(lambda: _count(progress) >= count + 6, 30, listener)
        stop.touch()
        report = finish_peer(listener, 60)
    finally:
        stop.touch()
        stop_process(process)
        mic.close()
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.communicate()
    log = process.stdout.read()
    assert 'parameter refused' not in log, log
    samples = np.load(tmp_path / 'samples.npy')
    assert _find(samples, sound) >= 0, 'the sound is not intact in the received stream'
    assert set(report['frame_ids']) == {'test_mic'}
    assert set(report['rates']) == {RATE} and set(report['channels']) == {1}
    steps = np.diff(np.array(report['stamps']))
    assert np.abs(steps[5:] - BLOCK_NS).max() < 2_000_000, steps
    if msg_type == 'audio_data_stamped':
        assert report['info'] and report['info'][0] == ['S16LE', 1, RATE, 'wave']
        assert report['refusals'] == []


@pytest.mark.ros
def test_mic_node_publishes_reliable_and_refuses_an_absent_audio_common() -> None:
    """REP-2003: a driver publishes reliable (sensor-data consumers connect to it). A msg_type
    whose package is not installed is refused with the reason, and taco_msgs is published."""
    from importlib.util import find_spec

    from rclpy.parameter import Parameter
    from rclpy.qos import ReliabilityPolicy

    from taco_ros.mic_node import MicNode

    if find_spec('audio_common_msgs') is not None:
        pytest.skip('audio_common_msgs is installed here')
    with ros_session('mic_msg_type_probe') as (context, _, executor):
        mic = MicNode(context=context, parameter_overrides=[
            Parameter('device', value='no-such-mic'),
            Parameter('msg_type', value='audio_data_stamped')])
        try:
            executor.add_node(mic)
            assert mic._publisher.qos_profile.reliability == ReliabilityPolicy.RELIABLE
            assert mic.msg_type == 'taco'
            assert any('msg_type audio_data_stamped cannot be published: audio_common_msgs is '
                       'not installed; publishing taco_msgs/AudioChunk' in problem
                       for problem in mic.parameter_problems), mic.parameter_problems
            topics = dict(mic.get_publisher_names_and_types_by_node('mic_node', '/'))
            assert topics['/audio'] == ['taco_msgs/msg/AudioChunk']
            assert '/audio_info' not in topics
        finally:
            executor.remove_node(mic)
            mic.destroy_node()
