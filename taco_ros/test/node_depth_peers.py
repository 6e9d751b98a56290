"""taco_node's 3D outputs with vision_msgs and visualization_msgs: run with the 'vision' test workspace
sourced (interface_fixtures.py builds both packages into it).

``python node_depth_peers.py depth_outputs '<json config>'`` runs a TacoNode (random-weight
taco_tiny built by the calling test, ``use_depth`` on) in a NodeHarness, streams frames with a
plane's depth beside each, records ~/mask, ~/objects, ~/detections_3d and ~/markers and prints
one JSON report (the windows whose four messages all arrived) as the last stdout line; on a
failure, ``{"error": ...}``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

import rclpy
from depth_fixtures import PlaneScene, camera_with_depth, open_the_sounding_gate, stamp_key
from node_fixtures import WINDOW_TIMEOUT, WORDS, NodeHarness, stream_until
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from taco_msgs.msg import AudioChunk

NAME = 'depth_peer'


def _header(header: Any) -> str:
    return f'{header.stamp.sec}.{header.stamp.nanosec:09d}|{header.frame_id}'


def _xyz(value: Any) -> list[float]:
    return [float(value.x), float(value.y), float(value.z)]


def _object(obj: Any) -> dict[str, Any]:
    return {'track': str(obj.track_id) if obj.track_id else '', 'label': obj.label,
            'position': _xyz(obj.position), 'size': _xyz(obj.size),
            'class_ids': [str(WORDS.index(word)) for word in obj.top_labels],
            'scores': [float(s) for s in obj.top_scores]}


def _detection(detection: Any) -> dict[str, Any]:
    pose = detection.bbox.center
    return {'id': detection.id, 'centre': _xyz(pose.position),
            'orientation': [pose.orientation.x, pose.orientation.y, pose.orientation.z,
                            pose.orientation.w],
            'size': _xyz(detection.bbox.size),
            'class_ids': [r.hypothesis.class_id for r in detection.results],
            'scores': [float(r.hypothesis.score) for r in detection.results]}


def _marker(marker: Any) -> dict[str, Any]:
    return {'ns': marker.ns, 'id': int(marker.id), 'type': int(marker.type),
            'action': int(marker.action), 'position': _xyz(marker.pose.position),
            'scale': _xyz(marker.scale), 'text': marker.text,
            'lifetime': marker.lifetime.sec + marker.lifetime.nanosec * 1e-9}


def _windows(harness: NodeHarness, detections: list[Any], markers: list[Any]) -> list[dict[str, Any]]:
    masks = {stamp_key(m.header): m for m in harness.recorder.get('mask')}
    objects = {stamp_key(m.header): m for m in harness.recorder.get('objects')}
    found_3d = {stamp_key(m.header): m for m in detections}
    drawn = {stamp_key(m.markers[0].header): m for m in markers if m.markers}
    windows = []
    for key in sorted(set(masks) & set(objects) & set(found_3d) & set(drawn)):
        windows.append({
            'mask_header': _header(masks[key].header),
            'placed': [_object(o) for o in objects[key].objects if o.has_position],
            'detections_header': _header(found_3d[key].header),
            'detections': [_detection(d) for d in found_3d[key].detections],
            'markers_header': _header(drawn[key].markers[0].header),
            'markers': [_marker(m) for m in drawn[key].markers]})
    return windows


def depth_outputs(config: dict[str, Any]) -> dict[str, Any]:
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    context = rclpy.Context()
    rclpy.init(context=context)
    harness = NodeHarness(context, config['base'], name=NAME)
    try:
        if not harness.started:
            raise RuntimeError('taco_node did not configure and activate')
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        detections: list[Any] = []
        markers: list[Any] = []
        harness.peer.create_subscription(Detection3DArray, f'/{NAME}/detections_3d',
                                         detections.append, reliable)
        harness.peer.create_subscription(MarkerArray, f'/{NAME}/markers', markers.append, reliable)
        pubs = [harness.publisher(Image, '/image', 'reliable', depth=100),
                harness.publisher(AudioChunk, '/audio', 'reliable', depth=200),
                harness.publisher(Image, '/depth', 'reliable', depth=100),
                harness.publisher(CameraInfo, '/depth_camera_info', 'reliable', depth=100)]
        if not harness.wait_connected(pubs):
            raise RuntimeError('the node did not subscribe to image, audio, depth and depth_camera_info')
        scene = PlaneScene(**config['scene'])
        open_the_sounding_gate(harness.node)
        deadline = time.monotonic() + 4 * WINDOW_TIMEOUT
        while True:
            stream_until(harness, pubs[0], pubs[1], 2,
                         make_image=camera_with_depth(scene, pubs[2], pubs[3]))
            windows = _windows(harness, list(detections), list(markers))
            if any(w['placed'] for w in windows) or time.monotonic() > deadline:
                break
        return {'optional_off': harness.node._optional_off, 'windows': windows}
    finally:
        harness.close()
        context.try_shutdown()


ROLES = {f.__name__: f for f in (depth_outputs,)}


def main() -> None:
    role, config = sys.argv[1], json.loads(sys.argv[2])
    try:
        report = ROLES[role](config)
    except Exception:
        report = {'error': traceback.format_exc()}
    print(json.dumps(report))


if __name__ == '__main__':
    main()
