"""taco_node's outputs for standard consumers, without the optional packages: the class mask,
class ids, the paired camera_info, the solver thread count, and the one-time note about the
optional outputs that are off. Real DDS, random-weight taco_tiny models built here (node_fixtures).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

import node_fixtures  # noqa: E402
from node_fixtures import (  # noqa: E402
    EVENT_TIMEOUT,
    WORDS,
    NodeHarness,
    image_msg,
    make_frame,
    restart,
    stream_until,
)
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from taco_msgs.msg import AudioChunk, SoundingObject  # noqa: E402
from taco_ros import outputs  # noqa: E402
from taco_ros.conversions import sec_to_stamp, stamp_to_sec  # noqa: E402
from taco_ros.core.contract import AudioWindow, SoundingObjectResult, TacoResult  # noqa: E402

pytestmark = pytest.mark.ros

# The module's node and its context (pytest fixtures from node_fixtures).
context, base, shared = node_fixtures.context, node_fixtures.base, node_fixtures.shared
VOCABULARY = ['dog', 'cat', 'bird', 'violin']


def _result() -> TacoResult:
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 1:4], mask[4:, 5:] = 1, 2
    objects = [SoundingObjectResult(
        mask_value=v, label=word, score=0.5, top_labels=[word], top_scores=[0.5], confidence=0.8,
        audio_activation=0.6, bbox=(v, 2, 3, 4), factor_index=v)
        for v, word in ((1, 'bird'), (2, 'violin'))]
    return TacoResult(
        mask=mask, objects=objects, sounding=True, confidence=0.8, k_star=1, steps=3,
        cold_start=False, mode='full', activation=np.zeros(3), token_offsets=np.arange(3) / 3,
        token_duration=1 / 3, window_duration=1.0, timings={}, score_map=None,
        random_weights=True)


def _pixels(msg: Image) -> np.ndarray:
    dtype = '<u2' if msg.encoding == 'mono16' else np.uint8
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width)


def test_class_mask_holds_vocabulary_indices_and_unlabeled_background() -> None:
    result = _result()
    header = Header(frame_id='camera', stamp=sec_to_stamp(12.5))
    window = AudioWindow(samples=np.zeros(16000, np.float32), sample_rate=16000, start=11.5)
    instance = outputs.window_messages(result, header, window, VOCABULARY)
    np.testing.assert_array_equal(_pixels(instance.mask), result.mask)
    assert instance.mask.encoding == 'mono8'
    msgs = outputs.window_messages(result, header, window, VOCABULARY, mask_encoding='class')
    mask = msgs.mask
    assert (mask.encoding, mask.is_bigendian, mask.step) == ('mono16', 0, 16)
    assert mask.header.stamp == header.stamp and mask.header.frame_id == 'camera'
    expected = np.full((6, 8), outputs.UNLABELED, np.uint16)
    expected[result.mask == 1], expected[result.mask == 2] = 2, 3
    np.testing.assert_array_equal(_pixels(mask), expected)
    # A label the vocabulary lost (changed while the window ran) is UNLABELED, never another id.
    shrunk = outputs.window_messages(result, header, window, ['dog', 'bird'], 'class')
    assert set(np.unique(_pixels(shrunk.mask)).tolist()) == {1, outputs.UNLABELED}
    with pytest.raises(ValueError, match='unknown mask encoding'):
        outputs.mask_message(result, header, 'semantic')


@pytest.mark.skipif(not hasattr(SoundingObject(), 'class_id'),
                    reason='taco_msgs/SoundingObject has no class_id field yet (another branch)')
def test_sounding_objects_carry_their_class_id() -> None:
    header = Header(frame_id='camera')
    window = AudioWindow(samples=np.zeros(160, np.float32), sample_rate=16000, start=0.0)
    objects = outputs.window_messages(_result(), header, window, VOCABULARY).objects.objects
    assert [o.class_id for o in objects] == [2, 3]
    objects = outputs.window_messages(_result(), header, window, ['bird']).objects.objects
    assert [o.class_id for o in objects] == [0, outputs.UNLABELED]


def test_paired_camera_info_carries_the_frame_header() -> None:
    info = CameraInfo(width=160, height=120, distortion_model='plumb_bob')
    info.header.frame_id, info.k[2] = 'camera_optical', 80.0
    header = Header(frame_id='camera', stamp=sec_to_stamp(5.25))
    paired = outputs.paired_camera_info(info, header)
    assert paired.header.stamp == header.stamp and paired.header.frame_id == 'camera'
    assert paired.k[2] == 80.0 and paired.width == 160 and paired.distortion_model == 'plumb_bob'
    assert info.header.frame_id == 'camera_optical'     # the stored message is left alone


def _publishers(harness: NodeHarness) -> tuple[Any, Any, Any]:
    image_pub = harness.publisher(Image, '/image', 'reliable', depth=100)
    audio_pub = harness.publisher(AudioChunk, '/audio', 'reliable', depth=200)
    info_pub = harness.publisher(CameraInfo, '/camera_info', 'reliable', depth=100)
    assert harness.wait_connected([image_pub, audio_pub, info_pub])
    return image_pub, audio_pub, info_pub


def test_camera_info_paired_with_the_window_frame_is_republished(shared: NodeHarness) -> None:
    """CameraInfo stamped 5 ms after each frame (k[2] = frame index), except for 0.67 s around
    every other window end: ~/camera_info carries the nearest one within pair_tolerance, with the
    mask's header; a window without one publishes none and counts it."""
    restart(shared)
    rec = shared.recorder
    shared._subs.append(shared.peer.create_subscription(
        CameraInfo, '/taco_node/camera_info', rec.callback('camera_info'),
        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)))
    image_pub, audio_pub, info_pub = _publishers(shared)
    frame = make_frame()
    sent: dict[float, int] = {}     # CameraInfo stamp -> frame index
    unpaired = shared.node._stats.counts.get('unpaired_camera_info', 0)

    def image(i: int, t: float) -> Any:
        if not 20 <= i % 60 < 40:       # frames 30, 90, ... (odd window ends) have none near
            info = CameraInfo(width=160, height=120)
            info.header.stamp, info.header.frame_id = sec_to_stamp(t + 0.005), 'camera'
            info.k[2] = float(i)
            info_pub.publish(info)
            sent[t + 0.005] = i
        return image_msg(frame, t)

    try:
        stream_until(shared, image_pub, audio_pub, windows=4, make_image=image)
    finally:
        for pub in (image_pub, audio_pub, info_pub):
            shared.peer.destroy_publisher(pub)
    infos = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in rec.get('camera_info')}
    expected_unpaired = 0
    masks = rec.get('mask')
    assert len(masks) >= 3
    for mask in masks:
        stamp = stamp_to_sec(mask.header.stamp)
        nearest = min(sent, key=lambda s: abs(s - stamp))
        info = infos.get((mask.header.stamp.sec, mask.header.stamp.nanosec))
        if abs(nearest - stamp) > 0.1 + 1e-6:
            assert info is None
            expected_unpaired += 1
            continue
        assert info is not None, f'no camera_info for the window at {stamp}'
        assert info.header.frame_id == mask.header.frame_id
        assert int(info.k[2]) == sent[nearest]
    assert len(infos) == len(masks) - expected_unpaired
    assert 0 < len(infos) and expected_unpaired > 0
    counted = shared.node._stats.counts.get('unpaired_camera_info', 0) - unpaired
    assert counted == expected_unpaired


def test_class_mask_is_a_live_parameter(shared: NodeHarness) -> None:
    restart(shared)
    node = shared.node
    image_pub, audio_pub, info_pub = _publishers(shared)
    try:
        assert node.set_parameters([Parameter('mask_encoding', value='class')])[0].successful
        stream_until(shared, image_pub, audio_pub, windows=2)
    finally:
        node.set_parameters([Parameter('mask_encoding', value='instance')])
        for pub in (image_pub, audio_pub, info_pub):
            shared.peer.destroy_publisher(pub)
    objects = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in shared.recorder.get('objects')}
    masks = shared.recorder.get('mask')
    assert masks and {m.encoding for m in masks} == {'mono16'}
    for mask in masks:
        obj = objects.get((mask.header.stamp.sec, mask.header.stamp.nanosec))
        if obj is not None:
            ids = {WORDS.index(o.label) for o in obj.objects}
            assert set(np.unique(_pixels(mask)).tolist()) - {outputs.UNLABELED} == ids
    refused = node.set_parameters([Parameter('mask_encoding', value='semantic')])[0]
    assert not refused.successful and 'not one of' in refused.reason


def test_solver_threads_is_live_and_bounded(shared: NodeHarness) -> None:
    node = shared.node
    assert node.pipeline_config().solver_threads == 1
    assert node._pipeline.config.solver_threads == 1
    try:
        assert node.set_parameters([Parameter('solver_threads', value=3)])[0].successful
        assert node._pipeline.config.solver_threads == 3
        assert node.pipeline_config().solver_threads == 3
        refused = node.set_parameters([Parameter('solver_threads', value=300)])[0]
        assert not refused.successful and node._pipeline.config.solver_threads == 3
    finally:
        node.set_parameters([Parameter('solver_threads', value=1)])
    assert node._pipeline.config.solver_threads == 1


def test_optional_outputs_that_are_off_are_said_once_at_configure(
        context: Any, base: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    """Without vision_msgs the node runs on taco_msgs alone; configure says so once (not per
    window) and /diagnostics keeps saying it."""
    from importlib.util import find_spec

    if find_spec('vision_msgs') is not None:
        pytest.skip('vision_msgs is installed here: test_node_interop covers its outputs')
    harness = NodeHarness(context, {**base, 'diagnostics_period': 0.2}, name='taco_optional')
    try:
        assert harness.started
        image_pub = harness.publisher(Image, '/image', 'reliable', depth=100)
        audio_pub = harness.publisher(AudioChunk, '/audio', 'reliable', depth=200)
        assert harness.wait_connected([image_pub, audio_pub])
        stream_until(harness, image_pub, audio_pub, windows=2)
        assert harness.wait_for(lambda: 'vision_msgs is not installed' in harness.diagnostics_values(
            'inference').get('optional outputs off', ''), EVENT_TIMEOUT)
        names = {name for name, _ in harness.node.get_publisher_names_and_types_by_node(
            'taco_optional', '/')}
    finally:
        harness.close()
    log = capfd.readouterr().err
    lines = [line for line in log.splitlines() if 'optional outputs off' in line]
    assert len(lines) == 1, log[-3000:]
    assert '~/detections, ~/vision_label_info: vision_msgs is not installed' in lines[0]
    assert '/taco_optional/mask' in names and '/taco_optional/camera_info' in names
    assert not {'/taco_optional/detections', '/taco_optional/vision_label_info'} & names
