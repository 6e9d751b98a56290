"""taco_node places its sounding objects in 3D from an aligned depth image, over real DDS: a plane at a
known distance (16UC1 at twice the colour resolution, 32FC1 at half of it) sent beside each frame;
every object's position is checked against the back-projection of the mask the node published
(computed here with numpy). Also: no depth, depth off, malformed depth messages, and (with the
vision and visualization test packages sourced) ~/detections_3d and ~/markers.

Random-weight taco_tiny models (node_fixtures): the masks mean nothing, but each is what the
node published, so the expected positions are exact.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

import node_fixtures  # noqa: E402
from depth_fixtures import PlaneScene, camera_with_depth, open_the_sounding_gate, placed_objects  # noqa: E402
from interface_fixtures import TEST_DIR, dds_env, interface_workspace  # noqa: E402
from node_fixtures import EVENT_TIMEOUT, WINDOW_TIMEOUT, NodeHarness, restart, stream_until  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from taco_msgs.msg import AudioChunk  # noqa: E402
from taco_ros.conversions import stamp_to_sec  # noqa: E402

pytestmark = pytest.mark.ros

context, base = node_fixtures.context, node_fixtures.base
PEERS = TEST_DIR / 'node_depth_peers.py'
PEER_TIMEOUT_S = 1200.0
POSITION_TOLERANCE = 1e-4    # metres: float32 depth, float64 maths on both sides
DEPTH = {'use_depth': True, 'image_qos': 'reliable', 'depth_min_points': 1, 'max_objects': 3,
         'diagnostics_period': 0.5}


@dataclass
class Publishers:
    image: Any
    audio: Any
    depth: Any
    info: Any


@pytest.fixture(scope='module')
def harness(context: Any, base: dict[str, Any]) -> NodeHarness:
    node = NodeHarness(context, {**base, **DEPTH}, name='taco_depth')
    assert node.started, 'taco_node did not configure and activate'
    yield node
    node.close()


@pytest.fixture(scope='module')
def pubs(harness: NodeHarness) -> Publishers:
    found = Publishers(harness.publisher(Image, '/image', 'reliable', depth=100),
                       harness.publisher(AudioChunk, '/audio', 'reliable', depth=200),
                       harness.publisher(Image, '/depth', 'reliable', depth=100),
                       harness.publisher(CameraInfo, '/depth_camera_info', 'reliable', depth=100))
    assert harness.wait_connected([found.image, found.audio, found.depth, found.info])
    return found


def stream_with_depth(harness: NodeHarness, pubs: Publishers, scene: PlaneScene | None,
                      windows: int = 2) -> list[Any]:
    """Stream until ``windows`` windows; the ~/objects of this stream's frames (a window of an
    earlier stream may still have been in flight)."""
    open_the_sounding_gate(harness.node)
    stream = stream_until(harness, pubs.image, pubs.audio, windows,
                          make_image=camera_with_depth(scene, pubs.depth, pubs.info))
    return [a for a in harness.recorder.get('objects') if stamp_to_sec(a.header.stamp) >= stream.t0]


def placed_after_streaming(harness: NodeHarness, pubs: Publishers,
                           scene: PlaneScene) -> list[tuple[Any, np.ndarray]]:
    """Objects and their masks, streamed until one has mask pixels (random weights: some windows
    have no object or an empty mask)."""
    harness.recorder.clear()
    deadline = time.monotonic() + 4 * WINDOW_TIMEOUT
    while True:
        arrays = stream_with_depth(harness, pubs, scene)
        found = placed_objects(harness.recorder.get('mask'), arrays)
        if any(mask.any() for _, mask in found) or time.monotonic() > deadline:
            return found


def check_positions(found: list[tuple[Any, np.ndarray]], scene: PlaneScene) -> None:
    placed = [(obj, mask) for obj, mask in found if mask.any()]
    assert placed, 'no published object had mask pixels'
    for obj, mask in found:
        expected = scene.expected(mask)
        assert obj.has_position == (expected is not None), (obj.mask_value, int(mask.sum()))
        if expected is None:
            continue
        centre, size = expected
        position = np.array([obj.position.x, obj.position.y, obj.position.z])
        extent = np.array([obj.size.x, obj.size.y, obj.size.z])
        assert abs(obj.position.z - scene.z) <= 0.0005 + 1e-6   # within one depth quantum
        np.testing.assert_allclose(position, centre, atol=POSITION_TOLERANCE)
        np.testing.assert_allclose(extent, size, atol=POSITION_TOLERANCE)


def test_16uc1_plane_at_twice_the_colour_resolution(harness: NodeHarness, pubs: Publishers) -> None:
    """1234 mm in 16UC1, 320x240 depth for 160x120 frames: z is the plane's to the millimetre,
    x and y the median of the published mask's pixels back-projected with the depth K."""
    scene = PlaneScene(1.234, '16UC1', 320, 240)
    check_positions(placed_after_streaming(harness, pubs, scene), scene)


def test_32fc1_plane_at_half_the_colour_resolution(harness: NodeHarness, pubs: Publishers) -> None:
    scene = PlaneScene(2.5, '32FC1', 80, 60, fx=50.0, fy=52.0)
    check_positions(placed_after_streaming(harness, pubs, scene), scene)


def _count(harness: NodeHarness, key: str) -> float:
    return harness.node._stats.counts.get(key, 0)


def test_without_depth_no_object_has_a_position_and_windows_are_counted(
        harness: NodeHarness, pubs: Publishers) -> None:
    before = _count(harness, 'windows_without_depth')
    harness.recorder.clear()
    arrays = stream_with_depth(harness, pubs, None)
    assert [o for a in arrays for o in a.objects], 'no window with an object was published'
    assert not [o for a in arrays for o in a.objects if o.has_position]
    assert _count(harness, 'windows_without_depth') >= before + len(arrays)
    assert harness.wait_for(lambda: float(harness.diagnostics_values('inputs').get(
        'windows without depth', '0')) > before, EVENT_TIMEOUT)


def test_depth_of_another_aspect_ratio_places_nothing_and_is_reported(
        harness: NodeHarness, pubs: Publishers) -> None:
    """A 100x100 depth image for 160x120 frames is not aligned to them: no position, counted."""
    before = _count(harness, 'unusable_depth')
    harness.recorder.clear()
    arrays = stream_with_depth(harness, pubs, PlaneScene(1.0, '16UC1', 100, 100))
    assert [o for a in arrays for o in a.objects], 'no window with an object was published'
    assert not [o for a in arrays for o in a.objects if o.has_position]
    assert _count(harness, 'unusable_depth') >= before + 1
    assert 'different aspect ratios' in harness.node._stats.last_input_problem


def test_depth_off_subscribes_to_nothing_and_counts_nothing(harness: NodeHarness,
                                                            pubs: Publishers) -> None:
    restart(harness, use_depth=False)
    try:
        assert harness.wait_for(lambda: pubs.depth.get_subscription_count() == 0, EVENT_TIMEOUT)
        before = _count(harness, 'windows_without_depth')
        arrays = stream_with_depth(harness, pubs, PlaneScene(1.0))
        assert [o for a in arrays for o in a.objects], 'no window with an object was published'
        assert not [o for a in arrays for o in a.objects if o.has_position]
        assert _count(harness, 'windows_without_depth') == before
    finally:
        restart(harness, use_depth=True)
        assert harness.wait_connected([pubs.depth, pubs.info])


def _bad_depth_messages() -> list[Image]:
    scene = PlaneScene(1.0, '16UC1', 32, 24)
    wrong_encoding = scene.depth_msg(1.0)
    wrong_encoding.encoding = 'rgb8'
    short_data = scene.depth_msg(1.0)
    short_data.data = bytes(short_data.data)[:-10]      # the rows its step declares do not fit
    short_step = scene.depth_msg(1.0)
    short_step.step = 32                                 # 32 16-bit pixels need 64 bytes a row
    huge = scene.depth_msg(1.0)
    huge.height, huge.width, huge.step = 100_000, 100_000, 200_000
    return [wrong_encoding, short_data, short_step, huge]


def test_malformed_depth_is_refused_and_counted_and_windows_go_on(
        harness: NodeHarness, pubs: Publishers) -> None:
    bad_before, big_before = _count(harness, 'bad_depth'), _count(harness, 'oversized_depth')
    for msg in _bad_depth_messages():
        pubs.depth.publish(msg)
    no_k = PlaneScene(1.0).info_msg(1.0)
    no_k.k = [0.0] * 9
    pubs.info.publish(no_k)
    assert harness.wait_for(lambda: _count(harness, 'bad_depth') >= bad_before + 4
                            and _count(harness, 'oversized_depth') >= big_before + 1, EVENT_TIMEOUT)
    assert harness.wait_for(lambda: float(harness.diagnostics_values('inputs').get(
        'bad depth', '0')) >= bad_before + 4, EVENT_TIMEOUT)
    harness.recorder.clear()
    assert stream_with_depth(harness, pubs, PlaneScene(1.5), windows=1)
    assert harness.node._lifecycle == 'active'


# ------------------------------------------------------- vision_msgs and visualization_msgs outputs
@pytest.fixture(scope='module')
def standard(base: dict[str, Any]) -> dict[str, Any]:
    workspace = interface_workspace('vision')
    config = {'base': {**base, **DEPTH}, 'scene': {'z': 1.234, 'encoding': '16UC1'}}
    result = workspace.run([str(PEERS), 'depth_outputs', json.dumps(config)], PEER_TIMEOUT_S,
                           **dds_env())
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert 'error' not in report, f'{report["error"]}\nnode log:\n{result.stderr[-6000:]}'
    return report


def test_detections_3d_hold_the_placed_objects(standard: dict[str, Any]) -> None:
    """One Detection3D per placed object, with the mask's header: box centre = position, size =
    extent, the ranked words' class ids and the track id as on the objects."""
    assert standard['optional_off'] == ''
    windows = [w for w in standard['windows'] if w['placed']]
    assert windows, standard['windows']
    for window in standard['windows']:
        assert window['detections_header'] == window['mask_header']
        placed = window['placed']
        assert [d['id'] for d in window['detections']] == [p['track'] for p in placed]
        for detection, obj in zip(window['detections'], placed, strict=True):
            assert detection['centre'] == pytest.approx(obj['position'], abs=1e-9)
            assert detection['orientation'] == [0.0, 0.0, 0.0, 1.0]
            assert detection['size'] == pytest.approx(obj['size'], abs=1e-9)
            assert detection['class_ids'] == obj['class_ids']
            assert detection['scores'] == pytest.approx(obj['scores'])


def test_markers_clear_then_draw_a_box_and_a_label_per_placed_object(standard: dict[str, Any]) -> None:
    for window in standard['windows']:
        markers = window['markers']
        assert markers[0]['action'] == 3                 # DELETEALL
        assert window['markers_header'] == window['mask_header']
        boxes = [m for m in markers[1:] if m['type'] == 1]
        labels = [m for m in markers[1:] if m['type'] == 9]
        assert len(boxes) == len(labels) == len(window['placed']) == (len(markers) - 1) // 2
        for box, label, obj in zip(boxes, labels, window['placed'], strict=True):
            assert (box['ns'], label['ns']) == ('objects', 'labels')
            assert box['id'] == label['id'] == (int(obj['track']) if obj['track'] else box['id'])
            assert box['scale'] == pytest.approx(np.maximum(obj['size'], 0.01))
            assert box['position'][2] == pytest.approx(1.234, abs=0.0005)
            assert label['text'].startswith(obj['label'] + ' ')
            assert label['position'][1] < box['position'][1]      # above it (y points down)
            assert 0 < box['lifetime'] <= 3 * 1.0 + 1e-9 and box['lifetime'] == label['lifetime']
    assert any(w['markers'][1:] for w in standard['windows'])
