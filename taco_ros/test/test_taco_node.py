"""taco_node over real DDS (in-process FastDDS), with random-weight taco_tiny models built here.

A peer node publishes a 30 Hz camera and a 16 kHz microphone (32 ms chunks) on the node's clock and
records every output. Windows are processed at whatever speed this machine allows, so the tests
check the structure of what arrives (one set of outputs per processed window, headers, sizes,
time axes, counters), never a fixed number of windows.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

import node_fixtures  # noqa: E402
from node_fixtures import (  # noqa: E402
    CHUNK,
    EVENT_TIMEOUT,
    RATE,
    WINDOW_TIMEOUT,
    WORDS,
    NodeHarness,
    StreamPublisher,
    audio_chunk_msg,
    compressed_msg,
    image_msg,
    isolate_model_search,
    make_frame,
    multiarray_msg,
    restart,
    stream_until,
    tone,
    unique_domain_id,
)
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float32MultiArray, Int16MultiArray  # noqa: E402

from taco_msgs.msg import AudioChunk, LabelInfo  # noqa: E402
from taco_msgs.srv import SetVocabulary  # noqa: E402
from taco_ros.conversions import stamp_to_sec  # noqa: E402
from taco_ros.taco_node import TacoNode  # noqa: E402

pytestmark = pytest.mark.ros

# The module's node and its context (pytest fixtures from node_fixtures).
context, base, shared = node_fixtures.context, node_fixtures.base, node_fixtures.shared

def key(msg: Any) -> tuple[int, int]:
    """The header stamp of an output, as a dict key."""
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def check_window_outputs(harness: NodeHarness, stream: StreamPublisher,
                         frame_sizes: set[tuple[int, int]], window_sec: float = 1.0) -> None:
    """One set of outputs per window; headers equal the paired frame's; sizes; time axes."""
    rec = harness.recorder
    objects, masks, acts = rec.get('objects'), rec.get('mask'), rec.get('activation')
    by_stamp = {key(m): m for m in objects}
    assert len(by_stamp) == len(objects), 'two outputs for one window'
    complete = set(by_stamp) & {key(m) for m in masks} & {key(m) for m in acts}
    # The very last window may still be in flight; every other one is complete.
    assert len(complete) >= len(objects) - 1 and complete
    headers = {(round(stamp_to_sec(h.stamp), 6), h.frame_id) for h in stream.frame_headers}
    for mask in masks:
        assert (mask.height, mask.width) in frame_sizes and mask.encoding == 'mono8'
        assert len(mask.data) == mask.height * mask.width
        values = set(np.unique(np.frombuffer(bytes(mask.data), np.uint8)).tolist()) - {0}
        obj = by_stamp.get(key(mask))
        if obj is not None:
            assert values == {o.mask_value for o in obj.objects}
    for obj in objects:
        stamp = round(stamp_to_sec(obj.header.stamp), 6)
        assert (stamp, obj.header.frame_id) in headers, 'header is not a published frame header'
        start, end = stamp_to_sec(obj.audio_start), stamp_to_sec(obj.audio_end)
        assert end - start == pytest.approx(window_sec, abs=1e-3)
        assert abs(stamp - end) <= 0.1 + 1e-6     # nearest frame to the window end
        assert obj.mode == 'full' and obj.solver_steps >= 1
        if not obj.sounding:
            assert not obj.objects
        for o in obj.objects:
            assert o.label in WORDS and o.top_labels[0] == o.label
    for act in acts:
        offsets = np.asarray(act.time_offset)
        assert offsets[0] == 0.0 and np.all(np.diff(offsets) > 0)
        assert offsets[-1] + act.token_duration == pytest.approx(act.window_duration, abs=1e-5)
        assert act.window_duration == pytest.approx(window_sec, abs=1e-3)
        assert len(act.activation) == len(offsets)
        match = by_stamp.get(key(act))
        if match is not None:
            assert act.audio_start == match.audio_start


# ------------------------------------------------------------------------------- outputs
def _result(mask: np.ndarray) -> Any:
    from taco_ros.core.contract import SoundingObjectResult, TacoResult

    objects = [SoundingObjectResult(
        mask_value=v, label=word, score=0.5 / v, top_labels=[word, 'cat'], top_scores=[0.5, 0.2],
        confidence=0.8, audio_activation=0.6, bbox=(v, 2, 3, 4), factor_index=v + 2)
        for v, word in ((1, 'dog'), (2, 'bird'))]
    return TacoResult(
        mask=mask, objects=objects, sounding=True, confidence=0.8, k_star=3, steps=17,
        cold_start=True, mode='full', activation=np.array([0.1, 0.9, 0.4]),
        token_offsets=np.array([0.0, 1 / 3, 2 / 3]), token_duration=1 / 3, window_duration=1.0,
        timings={'total': 5.0}, score_map=None, random_weights=True)


def test_output_messages_of_a_window() -> None:
    from std_msgs.msg import Header

    from taco_ros.conversions import sec_to_stamp
    from taco_ros.core.contract import AudioWindow
    from taco_ros.outputs import label_info_message, window_messages

    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 1:4], mask[4:, 5:] = 1, 2
    header = Header(frame_id='camera', stamp=sec_to_stamp(1_700_000_000.5))
    window = AudioWindow(samples=np.zeros(16000, np.float32), sample_rate=16000,
                         start=1_700_000_000.25)
    msgs = window_messages(_result(mask), header, window)
    assert (msgs.mask.height, msgs.mask.width, msgs.mask.encoding) == (6, 8, 'mono8')
    np.testing.assert_array_equal(np.frombuffer(bytes(msgs.mask.data), np.uint8).reshape(6, 8),
                                  mask)
    objects = msgs.objects
    for msg in (msgs.mask, objects, msgs.activation):
        assert msg.header.frame_id == 'camera' and msg.header.stamp == header.stamp
    assert stamp_to_sec(objects.audio_start) == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert stamp_to_sec(objects.audio_end) == pytest.approx(1_700_000_001.25, abs=1e-6)
    assert (objects.sounding, objects.solver_steps, objects.cold_start, objects.mode) == (
        True, 17, True, 'full')
    assert [(o.mask_value, o.label, o.factor_index) for o in objects.objects] == [
        (1, 'dog', 3), (2, 'bird', 4)]
    bbox = objects.objects[1].bbox
    assert (bbox.x_offset, bbox.y_offset, bbox.width, bbox.height) == (2, 2, 3, 4)
    act = msgs.activation
    assert act.label == 'dog' and act.factor_index == 3 and act.audio_start == objects.audio_start
    assert list(act.activation) == pytest.approx([0.1, 0.9, 0.4])
    assert act.token_duration == pytest.approx(1 / 3) and act.window_duration == 1.0
    info = label_info_message(['dog', 'bird'], 0.4, header.stamp)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, 'dog'), (1, 'bird')]
    assert info.threshold == pytest.approx(0.4)


# ------------------------------------------------------------------------------- streams
@pytest.mark.parametrize('reliability', ['best_effort', 'reliable'])
def test_stream_outputs(shared: NodeHarness, reliability: str) -> None:
    restart(shared)
    image_pub = shared.publisher(Image, '/image', reliability)
    audio_pub = shared.publisher(AudioChunk, '/audio', reliability)
    fmt = 's16' if reliability == 'best_effort' else 'f32'
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        stream = stream_until(
            shared, image_pub, audio_pub, windows=2,
            make_audio=lambda c, t: audio_chunk_msg(tone(CHUNK, c * CHUNK), t, fmt=fmt))
        assert shared.recorder.count('objects') >= 2
        check_window_outputs(shared, stream, {(120, 160)})
        debug = shared.recorder.get('debug')
        assert debug and all((m.height, m.width, m.encoding) == (120, 160, 'rgb8') for m in debug)
        labels = shared.recorder.get('label_info')
        assert labels and [c.class_name for c in labels[-1].class_map] == WORDS
        assert shared.wait_for(lambda: shared.diagnostics_values('inputs').get(
            'image rate (Hz)', '0') != '0.0', EVENT_TIMEOUT)
        inputs = shared.diagnostics_values('inputs')
        for kind in ('image', 'audio'):     # receipt minus capture of the stamped inputs
            mean, most = (float(inputs[f'{kind} delay {s} (ms)']) for s in ('mean', 'max'))
            assert mean <= most, inputs
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)


def test_every_raw_encoding_with_row_padding(shared: NodeHarness) -> None:
    """Each encoding gets its own frame size; a mask of that size proves it was decoded."""
    restart(shared)
    image_pub = shared.publisher(Image, '/image')
    audio_pub = shared.publisher(AudioChunk, '/audio')
    sizes = {'rgb8': (120, 160), 'bgr8': (100, 150), 'rgba8': (90, 130), 'bgra8': (80, 110),
             'mono8': (70, 96)}
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        for encoding, size in sizes.items():
            frame = make_frame(size)
            stream = StreamPublisher(
                shared, image_pub, audio_pub,
                make_image=lambda i, t, f=frame, e=encoding: image_msg(f, t, e, pad=i % 7))
            stream.start(WINDOW_TIMEOUT)
            seen = shared.wait_for(lambda s=size: any(
                (m.height, m.width) == s for m in shared.recorder.get('mask')), WINDOW_TIMEOUT)
            stream.stop()
            assert seen, f'no window processed from {encoding} frames'
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
    assert shared.node._stats.counts.get('bad_images', 0) == 0


@pytest.mark.parametrize('kind,msg_type', [('int16_multiarray', Int16MultiArray),
                                           ('float32_multiarray', Float32MultiArray)])
def test_headerless_audio_types(shared: NodeHarness, kind: str, msg_type: Any) -> None:
    restart(shared, audio_msg_type=kind, audio_sample_rate=RATE, audio_channels=1)
    image_pub = shared.publisher(Image, '/image')
    audio_pub = shared.publisher(msg_type, '/audio')
    unstamped = shared.node._stats.counts.get('unstamped_audio', 0)
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        # Headerless audio is stamped on receipt; the camera stamps its frames when it sends
        # them too, so the two time lines agree even when the stream falls behind real time.
        frame = make_frame()
        stream = stream_until(
            shared, image_pub, audio_pub, windows=1,
            make_image=lambda i, t: image_msg(frame, shared.node.get_clock().now().nanoseconds * 1e-9),
            make_audio=lambda c, t: multiarray_msg(tone(CHUNK, c * CHUNK), kind))
        assert shared.recorder.count('objects') >= 1
        # Receipt-time stamps: the window pairs with frames near its end, not exactly on it.
        for obj in shared.recorder.get('objects'):
            assert abs(stamp_to_sec(obj.header.stamp) - stamp_to_sec(obj.audio_end)) <= 0.1 + 1e-6
        assert shared.node._stats.counts['unstamped_audio'] > unstamped
        del stream
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
        restart(shared, audio_msg_type='taco')


@pytest.mark.parametrize('codec', ['jpeg', 'png'])
def test_compressed_images(shared: NodeHarness, codec: str) -> None:
    restart(shared, image_transport='compressed')
    image_pub = shared.publisher(CompressedImage, '/image/compressed')
    audio_pub = shared.publisher(AudioChunk, '/audio')
    frame = make_frame((96, 128))
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        stream = stream_until(shared, image_pub, audio_pub, windows=1,
                              make_image=lambda i, t: compressed_msg(frame, t, codec))
        assert shared.recorder.count('objects') >= 1
        check_window_outputs(shared, stream, {(96, 128)})
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
        restart(shared, image_transport='raw')


def test_gaps_out_of_order_rate_change_and_loop(shared: NodeHarness) -> None:
    """A stream that drops chunks, swaps chunks, switches to 48 kHz and loops back in time; each
    is counted and windows keep coming after all of them."""
    restart(shared)
    image_pub = shared.publisher(Image, '/image')
    audio_pub = shared.publisher(AudioChunk, '/audio', 'reliable', depth=200)
    node = shared.node
    phase = {'name': 'normal'}
    held: list[Any] = []

    def audio(c: int, t: float) -> Any:
        name = phase['name']
        if name == 'gap' and c % 40 < 10:
            return None                                         # 320 ms missing
        if name == 'swap' and c % 2 == 0:
            held.append(audio_chunk_msg(tone(CHUNK, c * CHUNK), t))
            return None                                         # sent after its successor
        if name == 'rate':
            n = CHUNK * 3
            return audio_chunk_msg(tone(n, c * n, rate=48000), t, rate=48000)
        msg = audio_chunk_msg(tone(CHUNK, c * CHUNK), t)
        if held and name == 'swap':
            audio_pub.publish(msg)
            return held.pop()
        return msg

    stream = StreamPublisher(shared, image_pub, audio_pub, make_audio=audio)
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        stream.start(4 * WINDOW_TIMEOUT)
        counts = node._stats.counts
        expectations = [
            ('gap', lambda: counts.get('audio_gaps', 0) > 0),
            ('swap', lambda: counts.get('late_audio_chunks', 0) > 0),
            ('rate', lambda: node._policy.restarts.get('format_change', 0) > 0),
        ]
        for name, happened in expectations:
            phase['name'] = name
            assert shared.wait_for(happened, EVENT_TIMEOUT), f'{name} was not detected'
            done = shared.recorder.count('objects')
            assert shared.wait_for(lambda d=done: shared.recorder.count('objects') > d,
                                   WINDOW_TIMEOUT), f'no window after {name}'
        phase['name'] = 'normal'
        assert shared.wait_for(lambda: node._policy.sample_rate == RATE, EVENT_TIMEOUT)
        resets = sum(node._policy.restarts.values())
        stream.t0 -= 30.0      # the bag loops: every stamp jumps 30 s back
        # Camera or microphone may notice first; either way the inputs restart once.
        assert shared.wait_for(lambda: sum(node._policy.restarts.values()) > resets, EVENT_TIMEOUT)
        done = shared.recorder.count('objects')
        assert shared.wait_for(lambda: shared.recorder.count('objects') > done, WINDOW_TIMEOUT)
        assert sum(node._policy.restarts.values()) == resets + 1, node._policy.restarts
    finally:
        stream.stop()
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
    assert shared.wait_for(lambda: 'jump' in shared.diagnostics_values('inputs').get(
        'input restarts', ''), EVENT_TIMEOUT), shared.diagnostics_values('inputs')


def test_last_window_of_a_stream_is_not_left_waiting(shared: NodeHarness) -> None:
    """A stream that stops right after a window's end (end of a bag): no later frame will come, so
    once the audio has stalled the window is paired with the frames already there."""
    restart(shared)
    image_pub = shared.publisher(Image, '/image', qos='reliable')
    audio_pub = shared.publisher(AudioChunk, '/audio', qos='reliable')
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        start = time.time()
        frame = make_frame()
        for i in range(10):                    # frames up to 0.05 s before the window's end
            image_pub.publish(image_msg(frame, start + 0.05 + 0.1 * i))
        for c in range(32):                    # 1.024 s of audio (one window), then nothing
            audio_pub.publish(audio_chunk_msg(tone(CHUNK, c * CHUNK), start + c * CHUNK / RATE))
        assert shared.wait_for(lambda: shared.recorder.count('objects') >= 1, WINDOW_TIMEOUT)
        (objects,) = shared.recorder.get('objects')
        assert stamp_to_sec(objects.header.stamp) == pytest.approx(start + 0.95, abs=1e-6)
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)


def test_bad_input_corpus_is_reported_and_survived(shared: NodeHarness) -> None:
    restart(shared)
    image_pub = shared.publisher(Image, '/image', 'reliable', depth=10)
    audio_pub = shared.publisher(AudioChunk, '/audio', 'reliable', depth=100)
    node = shared.node
    frame = make_frame()
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        now = node.get_clock().now().nanoseconds * 1e-9
        bad_images = []
        wrong_step = image_msg(frame, now)
        wrong_step.step = 10
        bad_images.append(wrong_step)
        unknown = image_msg(frame, now)
        unknown.encoding = 'nv21'   # 4:2:0, not read (camera_encodings)
        bad_images.append(unknown)
        short = image_msg(frame, now)
        short.data = bytes(short.data)[:1000]
        bad_images.append(short)
        huge = Image(height=4320, width=7680, encoding='mono8', step=7680)
        huge.data = np.zeros(7680 * 4320, np.uint8).tobytes()
        huge.header.stamp = image_msg(frame, now).header.stamp
        bad_images.append(huge)
        for msg in bad_images:
            image_pub.publish(msg)
        nan = audio_chunk_msg(tone(CHUNK, 0), now, fmt='f32')
        nan.float32_data[5] = float('nan')
        inf = audio_chunk_msg(tone(CHUNK, 0), now, fmt='f32')
        inf.float32_data[9] = float('inf')
        empty = audio_chunk_msg(np.zeros(0, np.float32), now)
        # A chunk claiming 1e9 Hz would make a 10 s ring buffer of 40 GB: refused before that.
        bomb = audio_chunk_msg(tone(CHUNK, 0), now)
        bomb.sample_rate = 1_000_000_000
        for msg in (nan, inf, empty, bomb):
            audio_pub.publish(msg)
        counts = node._stats.counts
        assert shared.wait_for(lambda: counts.get('bad_images', 0) >= 3
                               and counts.get('oversized_images', 0) >= 1
                               and counts.get('bad_audio', 0) >= 2
                               and counts.get('oversized_audio', 0) >= 1
                               and counts.get('empty_audio', 0) >= 1, EVENT_TIMEOUT), \
            str(dict(counts))
        assert node._policy.sample_rate in (None, RATE)

        def zero_stamped(i: int, t: float) -> Any:
            msg = image_msg(frame, t)
            if i % 10 == 0:     # every tenth frame has an unset stamp
                msg.header.stamp.sec = msg.header.stamp.nanosec = 0
            return msg

        stream_until(shared, image_pub, audio_pub, windows=2, make_image=zero_stamped)
        assert shared.recorder.count('objects') >= 2, 'no good window after the bad input'
        assert counts.get('zero_stamp_images', 0) >= 1
        inputs = shared.diagnostics_values('inputs')
        assert int(inputs['bad images']) >= 3 and int(inputs['bad audio']) >= 2
        assert int(inputs['oversized images']) >= 1 and int(inputs['oversized audio']) >= 1
        warned = [status for array in shared.recorder.get('diagnostics') for status in array.status
                  if status.name.endswith('inputs') and status.level == status.WARN]
        assert any('bad input' in status.message for status in warned)
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)


def test_vocabulary_service_changes_labels_on_the_next_window(shared: NodeHarness) -> None:
    restart(shared)
    client = shared.peer.create_client(SetVocabulary, '/taco_node/set_vocabulary')
    late_labels = shared.peer.create_subscription(
        LabelInfo, '/taco_node/label_info', shared.recorder.callback('late_label_info'),
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL))
    image_pub = shared.publisher(Image, '/image')
    audio_pub = shared.publisher(AudioChunk, '/audio')
    new_words = ['violin', 'trumpet', 'barking']
    try:
        assert client.wait_for_service(timeout_sec=EVENT_TIMEOUT)
        future = client.call_async(SetVocabulary.Request(words=['a', 'a']))
        assert shared.wait_for(future.done, EVENT_TIMEOUT)
        assert not future.result().success and 'duplicate' in future.result().message
        future = client.call_async(SetVocabulary.Request(words=new_words))
        assert shared.wait_for(future.done, EVENT_TIMEOUT)
        assert future.result().success, future.result().message
        assert shared.node.get_parameter('vocabulary').value == new_words
        assert shared.wait_for(lambda: any(
            [c.class_name for c in m.class_map] == new_words
            for m in shared.recorder.get('label_info')), EVENT_TIMEOUT)
        # A subscriber that joins later still gets the current vocabulary (transient local).
        assert shared.wait_for(lambda: shared.recorder.count('late_label_info') > 0,
                               EVENT_TIMEOUT)
        assert [c.class_name for c in shared.recorder.get('late_label_info')[-1].class_map] == \
            new_words
        assert shared.wait_connected([image_pub, audio_pub])
        shared.recorder.messages.pop('objects', None)
        node = shared.node
        node.set_parameters([Parameter('solver_max_steps', value=10)])
        stream_until(shared, image_pub, audio_pub, windows=1)
        objects = shared.recorder.get('objects')
        assert objects
        for obj in objects:
            for o in obj.objects:
                assert o.label in new_words and set(o.top_labels) <= set(new_words)
    finally:
        shared.node.set_parameters([Parameter('vocabulary', value=list(WORDS))])
        assert shared.node.wait_for_vocabulary(EVENT_TIMEOUT)
        shared.peer.destroy_client(client)
        shared.peer.destroy_subscription(late_labels)
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)


def test_busy_node_drops_windows_and_latency_stays_bounded(shared: NodeHarness) -> None:
    """Windows every 0.05 s are due much faster than they are processed: the node takes the newest,
    counts the rest as dropped, and the latency of what it publishes does not grow."""
    restart(shared, hop_sec=0.05)
    image_pub = shared.publisher(Image, '/image')
    audio_pub = shared.publisher(AudioChunk, '/audio')
    node = shared.node
    dropped = node._policy.drops.get('busy', 0)
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        stream = StreamPublisher(shared, image_pub, audio_pub)
        stream.start(WINDOW_TIMEOUT)
        assert shared.wait_for(
            lambda: shared.recorder.count('objects') >= 3
            and node._policy.drops.get('busy', 0) > dropped, WINDOW_TIMEOUT)
        stream.stop()
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
        node.set_parameters([Parameter('hop_sec', value=1.0)])
    assert node._policy.drops['busy'] > dropped
    latencies = [stream.ros_time(received) - stamp_to_sec(obj.audio_end)
                 for received, obj in shared.recorder.timed('objects')]
    totals = [s.get('total', 0.0) / 1e3 for s in node._stats.stages]
    bound = 2 * max(totals) + 1.0       # one window in flight + the one just taken + slack
    assert max(latencies) <= bound, (latencies, totals)
    inference = shared.diagnostics_values('inference')
    assert shared.wait_for(lambda: float(shared.diagnostics_values('inference').get(
        'dropped windows (busy)', '0')) > 0, EVENT_TIMEOUT), inference


def test_cleanup_releases_the_models_and_the_buffered_inputs(shared: NodeHarness) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    restart(shared)
    node = shared.node
    image_pub = shared.publisher(Image, '/image')
    audio_pub = shared.publisher(AudioChunk, '/audio')
    try:
        assert shared.wait_connected([image_pub, audio_pub])
        stream_until(shared, image_pub, audio_pub, windows=1)
        assert node._stats.stages
        pipeline = weakref.ref(node._pipeline)
        # Configure froze what the models made: the collector's full passes skip it.
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, frozen
        ok = TransitionCallbackReturn.SUCCESS
        assert node.trigger_deactivate() == ok and node.trigger_cleanup() == ok
        assert pipeline() is None, 'the pipeline outlived cleanup'   # no gc.collect() needed
        # Python 3.12 keeps a few hundred objects of its own there (375 on 3.12.1), frozen or not.
        assert gc.get_freeze_count() < frozen // 100, 'cleanup left the models frozen'
        assert node._policy.frames_held == 0 and node._policy.audio_end is None
        assert not node._stats.stages and not node._stats.latency
    finally:
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
        assert shared.node.start(), 'the node did not come back after cleanup'


# ---------------------------------------------------------------------------- lifecycle
def _rss_mb() -> float:
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return 0.0


def test_lifecycle_cycles_release_everything(context: Any, base: dict[str, Any]) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    node = TacoNode('taco_node_cycles', context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {**base, 'autostart': False}.items()])
    ok = TransitionCallbackReturn.SUCCESS
    try:
        publishers = len(list(node.publishers))
        subscriptions = len(list(node.subscriptions))
        rss = []
        for cycle in range(20):
            assert node.trigger_configure() == ok
            pipeline = weakref.ref(node._pipeline)
            assert node.trigger_activate() == ok
            assert len(list(node.subscriptions)) > subscriptions
            assert node.trigger_deactivate() == ok
            assert node.trigger_cleanup() == ok
            gc.collect()
            assert pipeline() is None, f'cycle {cycle}: the pipeline outlived cleanup'
            assert len(list(node.publishers)) == publishers
            assert len(list(node.subscriptions)) == subscriptions
            rss.append(_rss_mb())
        growth = rss[-1] - rss[4]
        assert growth < 150.0, f'RSS grew {growth:.0f} MB over 15 cycles: {rss}'
    finally:
        node.release()
        node.destroy_node()


def test_lifecycle_services_as_a_manager_sees_them(context: Any, base: dict[str, Any]) -> None:
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    harness = NodeHarness(context, base, autostart=False, name='taco_node_managed')
    peer = harness.peer
    try:
        change = peer.create_client(ChangeState, '/taco_node_managed/change_state')
        get = peer.create_client(GetState, '/taco_node_managed/get_state')
        assert change.wait_for_service(EVENT_TIMEOUT) and get.wait_for_service(EVENT_TIMEOUT)

        def call(client: Any, request: Any) -> Any:
            future = client.call_async(request)
            assert harness.wait_for(future.done, WINDOW_TIMEOUT)
            return future.result()

        def state() -> int:
            return call(get, GetState.Request()).current_state.id

        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        for transition, expected in [(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE),
                                     (Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE),
                                     (Transition.TRANSITION_DEACTIVATE, State.PRIMARY_STATE_INACTIVE),
                                     (Transition.TRANSITION_CLEANUP, State.PRIMARY_STATE_UNCONFIGURED)]:
            assert call(change, ChangeState.Request(transition=Transition(id=transition))).success
            assert state() == expected
    finally:
        harness.close()


def test_missing_model_files_refuse_to_start(context: Any, base: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    isolate_model_search(monkeypatch, tmp_path)
    node = TacoNode('taco_node_no_models', context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {**base, 'allow_random_weights': False,
                                            'model_config': 'taco_tiny',
                                            'autostart': False}.items()])
    try:
        assert not node.start()
        assert node._pipeline is None and node._lifecycle == 'unconfigured'
    finally:
        node.release()
        node.destroy_node()


def test_main_exits_with_a_clear_error_without_model_files(tmp_path: Path) -> None:
    env = {**os.environ, 'ROS_DOMAIN_ID': str(unique_domain_id()),
           'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    env.pop('TACO_MODEL_DIR', None)
    result = subprocess.run(
        [sys.executable, '-m', 'taco_ros.taco_node', '--ros-args',
         '-p', f'model_dir:={tmp_path}', '-p', 'device:=cpu'],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert 'model files are missing' in output and 'taco-ros models fetch' in output
