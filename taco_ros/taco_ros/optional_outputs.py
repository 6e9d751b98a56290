"""taco_node's optional outputs: their publishers (made when the message package is importable) and
their per-window messages (built by :mod:`taco_ros.interop`).

* vision_msgs 4.x: ``~/detections`` and ``~/vision_label_info`` always, ``~/detections_3d`` while
  ``use_depth`` is set;
* visualization_msgs: ``~/markers`` while ``use_depth`` is set.

The publishers exist from configure whenever the package does (``use_depth`` applies at activate,
so it can change without a new configure); what is off and why is said once at configure and kept
for /diagnostics.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from taco_ros import interop, params
from taco_ros.core.contract import TacoResult
from taco_ros.core.geometry import ObjectPosition
from taco_ros.diagnostics import NodeStats
from taco_ros.node_inputs import THROTTLE_SEC

MARKER_LIFETIME_WINDOWS = 3     # markers outlive a missed window or two, not a stalled node


def make_publishers(make: Callable[[type, str, Any], Any], reliable: Any, latched: Any,
                    log: Any) -> tuple[dict[str, Any], str]:
    """{output key: publisher} of the optional outputs available here, and the ones that are off
    with the reason ('' when none is); logs both once."""
    available = interop.optional_outputs()
    pubs: dict[str, Any] = {}
    off: list[str] = []
    vision = available[interop.OUTPUT_DETECTIONS]
    if vision.available:
        msgs = importlib.import_module('vision_msgs.msg')
        pubs['detections'] = make(msgs.Detection2DArray, params.TOPIC_DETECTIONS, reliable)
        pubs['vision_label_info'] = make(msgs.LabelInfo, params.TOPIC_VISION_LABEL_INFO, latched)
        pubs['detections_3d'] = make(msgs.Detection3DArray, params.TOPIC_DETECTIONS_3D, reliable)
    else:
        off += [f'{params.TOPIC_DETECTIONS}, {params.TOPIC_VISION_LABEL_INFO}: {vision.reason}',
                f'{params.TOPIC_DETECTIONS_3D}: {vision.reason}']
    markers = available[interop.OUTPUT_MARKERS]
    if markers.available:
        msgs = importlib.import_module('visualization_msgs.msg')
        pubs['markers'] = make(msgs.MarkerArray, params.TOPIC_MARKERS, reliable)
    else:
        off.append(f'{params.TOPIC_MARKERS}: {markers.reason}')
    names = {'detections': params.TOPIC_DETECTIONS, 'vision_label_info': params.TOPIC_VISION_LABEL_INFO,
             'detections_3d': params.TOPIC_DETECTIONS_3D + ' (use_depth)',
             'markers': params.TOPIC_MARKERS + ' (use_depth)'}
    if pubs:
        log.info(f'optional outputs on: {", ".join(names[key] for key in pubs)}')
    if off:
        log.info(f'optional outputs off: {"; ".join(off)}')
    return pubs, '; '.join(off)


def publish(pubs: dict[str, Any], result: TacoResult, positions: Sequence[ObjectPosition | None],
            vocabulary: list[str], header: Any, values: dict[str, Any], log: Any,
            stats: NodeStats) -> None:
    """One window's optional outputs (``values``: the node's parameters)."""
    try:
        if 'detections' in pubs:
            pubs['detections'].publish(interop.detection_array(result, vocabulary, header))
        if 'detections_3d' in pubs and values['use_depth']:
            pubs['detections_3d'].publish(
                interop.detection_3d_array(result, positions, vocabulary, header))
    except ValueError as exc:   # a label outside the vocabulary: no id names it
        stats.add('skipped_detections')
        log.warning(f'no detections for this window: {exc}', throttle_duration_sec=THROTTLE_SEC)
    if 'markers' in pubs and values['use_depth']:
        lifetime = MARKER_LIFETIME_WINDOWS * float(values['hop_sec'])
        pubs['markers'].publish(interop.marker_array(result, positions, header, lifetime))
