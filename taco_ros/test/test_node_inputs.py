"""taco_node's inputs under stress, over real DDS with random-weight taco_tiny models built here:
windows that wait for a busy inference keep their frames, window_queue hands out every window in
order, stray stamps restart nothing, oversized compressed frames are refused at receipt.

Inference is held with node_fixtures.gate_inference where a test needs a window to wait; every
assertion is about which windows came out and with which frame, never how many a real-time stream
produced.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

import node_fixtures  # noqa: E402
from node_fixtures import (  # noqa: E402
    CHUNK,
    EVENT_TIMEOUT,
    WINDOW_TIMEOUT,
    NodeHarness,
    StreamPublisher,
    audio_chunk_msg,
    gate_inference,
    image_msg,
    make_frame,
    restart,
    tone,
)
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from taco_msgs.msg import AudioChunk  # noqa: E402
from taco_ros.conversions import stamp_to_sec  # noqa: E402

pytestmark = pytest.mark.ros

# The module's node and its context (pytest fixtures from node_fixtures).
context, base, shared = node_fixtures.context, node_fixtures.base, node_fixtures.shared


def _ends(harness: NodeHarness) -> list[float]:
    return sorted(stamp_to_sec(m.audio_end) for m in harness.recorder.get('objects'))


def _publishers(harness: NodeHarness) -> tuple[Any, Any]:
    image_pub = harness.publisher(Image, '/image', 'reliable', depth=100)
    audio_pub = harness.publisher(AudioChunk, '/audio', 'reliable', depth=200)
    assert harness.wait_connected([image_pub, audio_pub])
    return image_pub, audio_pub


def test_a_window_processed_late_keeps_its_frame(shared: NodeHarness) -> None:
    """Inference is held 2.5 s past the end of the second window (the old frame store kept 1.3 s):
    the window is processed late, with its own frame; the inputs kept flowing meanwhile. The
    stream stops before a third window is due, so newest-only has nothing to pass over however
    slow the machine."""
    restart(shared, hop_sec=6.0)
    node = shared.node
    drops = Counter(node._policy.drops)
    image_pub, audio_pub = _publishers(shared)
    entered, release, undo = gate_inference(node)
    stream = StreamPublisher(shared, image_pub, audio_pub)
    try:
        stream.start(10.0)      # windows end at t0 + 1 s and t0 + 7 s; none after
        assert entered.wait(WINDOW_TIMEOUT), 'the first window never reached the pipeline'
        # The image and audio callbacks do not wait for the window held in the pipeline.
        assert shared.wait_for(
            lambda: (node._policy.audio_end or 0.0) >= stream.t0 + 9.5, WINDOW_TIMEOUT)
        assert node._policy.frames_held > 0
        release.set()
        assert shared.wait_for(lambda: len(_ends(shared)) >= 2, WINDOW_TIMEOUT), _ends(shared)
        objects = sorted(shared.recorder.get('objects'), key=lambda m: stamp_to_sec(m.audio_end))
    finally:
        undo()
        stream.stop()
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
        node.set_parameters([Parameter('hop_sec', value=1.0)])
    first, second = objects[:2]
    gap = stamp_to_sec(second.audio_end) - stamp_to_sec(first.audio_end)
    assert gap == pytest.approx(6.0, abs=1e-3)
    for obj in (first, second):
        assert abs(stamp_to_sec(obj.header.stamp) - stamp_to_sec(obj.audio_end)) <= 0.1 + 1e-6
    assert node._policy.drops - drops == Counter()


def test_window_queue_hands_out_every_window_in_order(shared: NodeHarness) -> None:
    """window_queue > 0: windows due while inference is held are all processed, in order."""
    restart(shared, hop_sec=0.25, window_queue=100)
    node = shared.node
    drops = Counter(node._policy.drops)
    image_pub, audio_pub = _publishers(shared)
    entered, release, undo = gate_inference(node)
    stream = StreamPublisher(shared, image_pub, audio_pub)
    try:
        stream.start(3.5)                      # 3.5 s of input, then the stream stops
        assert entered.wait(WINDOW_TIMEOUT)
        stream.join()
        release.set()
        # Every complete window comes out; the last ones once the audio has stalled.
        assert shared.wait_for(lambda: _ends(shared) and _ends(shared)[-1] >= (
            node._policy.audio_end or math.inf) - 0.25 - 1e-3, 4 * WINDOW_TIMEOUT), _ends(shared)
        ends = np.array(_ends(shared))
        dropped = node._policy.drops - drops
    finally:
        undo()
        stream.stop()
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
        restart(shared, hop_sec=1.0, window_queue=0)
    assert len(ends) >= 8 and ends[0] == pytest.approx(stream.t0 + 1.0, abs=1e-3)
    np.testing.assert_allclose(np.diff(ends), 0.25, atol=1e-3)
    assert dropped == Counter()


def test_stray_stamps_restart_nothing_and_keep_the_grid(shared: NodeHarness) -> None:
    """A camera frame stamped 100 s ahead and an audio chunk stamped 10 s back (which restarted the
    inputs twice and moved the window grid) are ignored and reported once each."""
    restart(shared)
    node = shared.node
    restarts = sum(node._policy.restarts.values())
    image_pub, audio_pub = _publishers(shared)
    frame = make_frame()

    def image(i: int, t: float) -> Any:
        return image_msg(frame, t + (100.0 if i == 45 else 0.0))

    def audio(c: int, t: float) -> Any:
        if c == 80:
            audio_pub.publish(audio_chunk_msg(tone(CHUNK, 0), t - 10.0))
        return audio_chunk_msg(tone(CHUNK, c * CHUNK), t)

    stream = StreamPublisher(shared, image_pub, audio_pub, make_image=image, make_audio=audio)
    try:
        stream.start(WINDOW_TIMEOUT)
        assert shared.wait_for(lambda: len(_ends(shared)) >= 2 and _ends(shared)[-1]
                               > stream.t0 + 4.0, WINDOW_TIMEOUT), _ends(shared)
    finally:
        stream.stop()
        shared.peer.destroy_publisher(image_pub)
        shared.peer.destroy_publisher(audio_pub)
    events = node._policy.events
    assert shared.wait_for(lambda: events['stray_frames'] + events['stray_audio_chunks'] >= 2,
                           EVENT_TIMEOUT), events
    assert events['stray_frames'] == 1 and events['stray_audio_chunks'] == 1
    assert sum(node._policy.restarts.values()) == restarts
    ends = np.array(_ends(shared)) - stream.t0
    np.testing.assert_allclose(ends, np.round(ends), atol=1e-3)     # one grid: t0 + 1 s + k s
    for obj in shared.recorder.get('objects'):
        assert abs(stamp_to_sec(obj.header.stamp) - stamp_to_sec(obj.audio_end)) <= 0.1 + 1e-6
    assert shared.wait_for(lambda: 'ignored' in shared.diagnostics_values('inputs').get(
        'last input notice', ''), EVENT_TIMEOUT)


def _png_bomb(width: int, height: int) -> bytes:
    """A png whose header declares width x height pixels, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
            + chunk(b'IDAT', zlib.compress(b'\x00' * 100)) + chunk(b'IEND', b''))


def test_an_oversized_compressed_frame_is_refused_on_arrival(shared: NodeHarness) -> None:
    restart(shared, image_transport='compressed')
    node = shared.node
    before = node._stats.counts.get('oversized_images', 0)
    image_pub = shared.publisher(CompressedImage, '/image/compressed', 'reliable')
    try:
        assert shared.wait_connected([image_pub])
        msg = CompressedImage(format='png')
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.data = _png_bomb(40000, 30000)       # 1.2 Gpixel: 3.6 GB once decoded
        image_pub.publish(msg)
        assert shared.wait_for(
            lambda: node._stats.counts.get('oversized_images', 0) > before, EVENT_TIMEOUT)
        assert node._policy.frames_held == 0
        assert shared.wait_for(lambda: int(shared.diagnostics_values('inputs').get(
            'oversized images', '0')) > before, EVENT_TIMEOUT)
    finally:
        shared.peer.destroy_publisher(image_pub)
        restart(shared, image_transport='raw')
