"""Optional standard outputs: vision_msgs detections and both audio_common message flavours.

Nothing here is a hard dependency. Each message package is imported only when a builder runs,
and :func:`optional_outputs` says which of these outputs this environment can publish and, when
one cannot, why (so the node can log it once and carry on with taco_msgs alone).

vision_msgs conventions followed:
* ``Detection2DArray`` carries the image header; each ``Detection2D`` one sounding object, its
  ``results`` the object's ranked words (best first) with ``class_id`` = the word's index in
  the vocabulary written as a decimal string, matching the ``class_id`` of ``LabelInfo``.
* The box is the object's pixel box: ``center`` = (x + w/2, y + h/2) in pixel-edge coordinates
  (a box of ``w`` pixels starting at column ``x`` spans [x, x + w)), ``size`` = (w, h),
  ``theta`` = 0. ``Detection2D.id`` is the object's ``track_id`` as a decimal string (the same on
  ``taco_msgs/SoundingObject``), empty when the object is not tracked.
* ``score`` is the word's score as on ``taco_msgs/SoundingObject`` (CLIP similarity), so both
  topics report the same number.
* ``Detection3DArray`` (objects placed with depth only): the same header, ids and results; the box
  centre is the object's position and its size the object's extent (camera optical frame, metres,
  axis-aligned: orientation is the identity).

visualization_msgs ``MarkerArray`` (for RViz): a DELETEALL first (objects of the previous window
go), then per placed object a translucent CUBE over its extent (namespace ``objects``) and a
TEXT_VIEW_FACING label above it (namespace ``labels``), both with the object's track id as marker
id (untracked objects: minus their rank) and a lifetime of a few windows (a stalled node's markers
fade).
"""

from __future__ import annotations

import array
import colorsys
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from taco_ros import conversions as conv

OUTPUT_DETECTIONS = 'detections'                   # vision_msgs/Detection2DArray (+ LabelInfo)
OUTPUT_DETECTIONS_3D = 'detections_3d'             # vision_msgs/Detection3DArray (depth)
OUTPUT_MARKERS = 'markers'                         # visualization_msgs/MarkerArray (depth)
OUTPUT_MGONZS13_AUDIO = 'audio_common_stamped'     # mgonzs13 audio_common_msgs/AudioStamped
OUTPUT_ROS_DRIVERS_AUDIO = 'audio_data_stamped'    # ros-drivers AudioDataStamped + AudioInfo
UNLABELED_CLASS_ID = 65535                         # LabelInfo's reserved uint16 id

# numpy dtype → (PortAudio code of mgonzs13's AudioInfo.format, AudioData field)
_PORTAUDIO_FIELDS = {
    'float32': (conv.PA_FLOAT32, 'float32_data'), 'int32': (conv.PA_INT32, 'int32_data'),
    'int16': (conv.PA_INT16, 'int16_data'), 'int8': (conv.PA_INT8, 'int8_data'),
    'uint8': (conv.PA_UINT8, 'uint8_data'),
}
# numpy dtype → GStreamer sample format of ros-drivers' AudioInfo (little-endian bytes).
_GSTREAMER_FORMATS = {'float32': 'F32LE', 'int32': 'S32LE', 'int16': 'S16LE', 'int8': 'S8',
                      'uint8': 'U8'}


@dataclass(frozen=True)
class OptionalOutput:
    """Whether one optional output can be published here; ``reason`` says why not."""

    name: str
    available: bool
    reason: str = ''


def optional_outputs() -> dict[str, OptionalOutput]:
    """Availability of each optional output in this environment (imports, never raises)."""
    return {
        OUTPUT_DETECTIONS: _vision_output(),
        OUTPUT_DETECTIONS_3D: _vision_output(OUTPUT_DETECTIONS_3D),
        OUTPUT_MARKERS: _markers_output(),
        OUTPUT_MGONZS13_AUDIO: _audio_output(OUTPUT_MGONZS13_AUDIO, conv.FLAVOUR_MGONZS13),
        OUTPUT_ROS_DRIVERS_AUDIO: _audio_output(OUTPUT_ROS_DRIVERS_AUDIO,
                                                conv.FLAVOUR_ROS_DRIVERS),
    }


def _vision_output(name: str = OUTPUT_DETECTIONS) -> OptionalOutput:
    try:
        module = importlib.import_module('vision_msgs.msg')
    except ImportError:
        return OptionalOutput(name, False, 'vision_msgs is not installed (ros-<distro>-vision-msgs)')
    hypothesis = getattr(module, 'ObjectHypothesis', None)
    fields = getattr(hypothesis, '_fields_and_field_types', {}) or {}
    if fields.get('class_id') != 'string' or not hasattr(module, 'LabelInfo'):
        return OptionalOutput(name, False,
                              'vision_msgs is older than 4.x (no string class_id or LabelInfo)')
    return OptionalOutput(name, True)


def _markers_output() -> OptionalOutput:
    try:
        module = importlib.import_module('visualization_msgs.msg')
    except ImportError:
        return OptionalOutput(OUTPUT_MARKERS, False, 'visualization_msgs is not installed')
    if not hasattr(module, 'MarkerArray') or not hasattr(module.Marker, 'DELETEALL'):
        return OptionalOutput(OUTPUT_MARKERS, False, 'visualization_msgs has no Marker DELETEALL')
    return OptionalOutput(OUTPUT_MARKERS, True)


def _audio_output(name: str, wanted: str) -> OptionalOutput:
    flavour = conv.audio_common_flavour()
    if flavour == wanted:
        return OptionalOutput(name, True)
    if flavour is None:
        return OptionalOutput(name, False, 'audio_common_msgs is not installed')
    return OptionalOutput(name, False,
                          f'the installed audio_common_msgs is the {flavour} flavour, not {wanted}')


def _vision() -> Any:
    available = _vision_output()
    if not available.available:
        raise ValueError(f'cannot build vision_msgs output: {available.reason}')
    return importlib.import_module('vision_msgs.msg')


def _audio_common(wanted: str) -> Any:
    name = OUTPUT_MGONZS13_AUDIO if wanted == conv.FLAVOUR_MGONZS13 else OUTPUT_ROS_DRIVERS_AUDIO
    available = _audio_output(name, wanted)
    if not available.available:
        raise ValueError(f'cannot build {name}: {available.reason}')
    return importlib.import_module('audio_common_msgs.msg')


# -------------------------------------------------------------------------- vision_msgs
def check_vocabulary(vocabulary: Sequence[str]) -> None:
    """ValueError unless every word gets a uint16 class id below the UNLABELED id."""
    if len(vocabulary) >= UNLABELED_CLASS_ID:
        raise ValueError(f'a vocabulary of {len(vocabulary)} words does not fit uint16 class ids '
                         f'(at most {UNLABELED_CLASS_ID} words, {UNLABELED_CLASS_ID} is UNLABELED)')


def label_info(vocabulary: Sequence[str], header: Any, threshold: float) -> Any:
    """``vision_msgs/LabelInfo``: class id i ↔ the i-th vocabulary word."""
    msgs = _vision()
    check_vocabulary(vocabulary)
    msg = msgs.LabelInfo(header=header, threshold=float(threshold))
    msg.class_map = [msgs.VisionClass(class_id=index, class_name=str(word))
                     for index, word in enumerate(vocabulary)]
    return msg


def detection_array(result: Any, vocabulary: Sequence[str], header: Any) -> Any:
    """``vision_msgs/Detection2DArray`` of a TacoResult's sounding objects (see module doc).

    ``vocabulary`` is the one the result was computed with (the one in ``LabelInfo``); a word
    missing from it raises ValueError rather than publishing an id that names nothing.
    """
    msgs = _vision()
    check_vocabulary(vocabulary)
    ids = {str(word): index for index, word in enumerate(vocabulary)}
    out = msgs.Detection2DArray(header=header)
    out.detections = [_detection(msgs, obj, ids, header) for obj in result.objects]
    return out


def _hypotheses(msgs: Any, obj: Any, ids: dict[str, int]) -> list[Any]:
    """The object's ranked words as ObjectHypothesisWithPose (class_id = vocabulary index)."""
    words = list(obj.top_labels) or [obj.label]
    scores = list(obj.top_scores) or [obj.score]
    out = []
    for word, score in zip(words, scores, strict=True):
        if word not in ids:
            raise ValueError(f'label {word!r} is not in the vocabulary published in LabelInfo')
        hypothesis = msgs.ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(ids[word])
        hypothesis.hypothesis.score = float(score)
        out.append(hypothesis)
    return out


def _track_name(obj: Any) -> str:
    track_id = int(getattr(obj, 'track_id', 0))
    return str(track_id) if track_id else ''


def _detection(msgs: Any, obj: Any, ids: dict[str, int], header: Any) -> Any:
    detection = msgs.Detection2D(header=header, id=_track_name(obj))
    detection.results = _hypotheses(msgs, obj, ids)
    x, y, w, h = (float(v) for v in obj.bbox)
    detection.bbox.center.position.x = x + w / 2.0
    detection.bbox.center.position.y = y + h / 2.0
    detection.bbox.center.theta = 0.0
    detection.bbox.size_x, detection.bbox.size_y = w, h
    return detection


def detection_3d_array(result: Any, positions: Sequence[Any], vocabulary: Sequence[str],
                       header: Any) -> Any:
    """``vision_msgs/Detection3DArray`` of the objects with a position (``positions[i]``: the
    :class:`taco_ros.core.geometry.ObjectPosition` of ``result.objects[i]`` or None)."""
    msgs = _vision()
    check_vocabulary(vocabulary)
    ids = {str(word): index for index, word in enumerate(vocabulary)}
    out = msgs.Detection3DArray(header=header)
    for obj, place in zip(result.objects, positions, strict=True):
        if place is None:
            continue
        detection = msgs.Detection3D(header=header, id=_track_name(obj))
        detection.results = _hypotheses(msgs, obj, ids)
        _set_point(detection.bbox.center.position, place.centroid)
        detection.bbox.center.orientation.w = 1.0
        _set_point(detection.bbox.size, place.size)
        out.detections.append(detection)
    return out


def _set_point(target: Any, values: Any) -> None:
    target.x, target.y, target.z = (float(v) for v in values)


MARKER_NS_BOXES, MARKER_NS_LABELS = 'objects', 'labels'
_MIN_MARKER_SIZE = 0.01     # metres: a flat (or one-pixel) object stays visible
_TEXT_HEIGHT = 0.08


def marker_array(result: Any, positions: Sequence[Any], header: Any, lifetime: float) -> Any:
    """``visualization_msgs/MarkerArray``: DELETEALL, then a CUBE over each placed object's extent
    and its label above it (see module doc); ``lifetime`` in seconds."""
    msgs = _visualization()
    stamp = conv.sec_to_stamp(lifetime)     # a Duration has the same two fields
    delete_all = msgs.Marker(header=header, action=msgs.Marker.DELETEALL)
    out = msgs.MarkerArray(markers=[delete_all])
    for rank, (obj, place) in enumerate(zip(result.objects, positions, strict=True), start=1):
        if place is None:
            continue
        marker_id = int(getattr(obj, 'track_id', 0)) or -rank
        centre = (np.asarray(place.box_min, float) + np.asarray(place.box_max, float)) / 2.0
        size = np.maximum(np.asarray(place.size, float), _MIN_MARKER_SIZE)
        box = msgs.Marker(header=header, ns=MARKER_NS_BOXES, id=marker_id, type=msgs.Marker.CUBE,
                          action=msgs.Marker.ADD)
        _set_point(box.pose.position, centre)
        box.pose.orientation.w = 1.0
        _set_point(box.scale, size)
        box.color.r, box.color.g, box.color.b = _track_colour(marker_id)
        box.color.a = 0.5
        label = msgs.Marker(header=header, ns=MARKER_NS_LABELS, id=marker_id,
                            type=msgs.Marker.TEXT_VIEW_FACING, action=msgs.Marker.ADD,
                            text=f'{obj.label} {float(obj.score):.2f}')
        # Above the box: the optical frame's y points down.
        _set_point(label.pose.position, (centre[0], centre[1] - size[1] / 2.0 - _TEXT_HEIGHT, centre[2]))
        label.pose.orientation.w = 1.0
        label.scale.z = _TEXT_HEIGHT
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        for marker in (box, label):
            marker.lifetime.sec, marker.lifetime.nanosec = stamp.sec, stamp.nanosec
        out.markers += [box, label]
    return out


def _track_colour(marker_id: int) -> tuple[float, float, float]:
    """A colour per track, the same in every window (golden-ratio hue steps)."""
    hue = (abs(marker_id) * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 1.0)
    return float(red), float(green), float(blue)


def _visualization() -> Any:
    available = _markers_output()
    if not available.available:
        raise ValueError(f'cannot build visualization_msgs output: {available.reason}')
    return importlib.import_module('visualization_msgs.msg')


# -------------------------------------------------------------------------- microphone outputs
def _frames(samples: np.ndarray, table: dict[str, Any]) -> np.ndarray:
    frames = np.asarray(samples)
    if frames.ndim != 2 or frames.shape[1] < 1:
        raise ValueError(f'samples must be [frames, channels], got shape {frames.shape}')
    if frames.dtype.name not in table:
        raise ValueError(f'sample dtype {frames.dtype} is not one of {sorted(table)}')
    return np.ascontiguousarray(frames)


def _header(msg: Any, stamp_ns: int, frame_id: str) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id


def mgonzs13_audio_stamped(samples: np.ndarray, sample_rate: int, stamp_ns: int,
                           frame_id: str = '') -> Any:
    """mgonzs13 ``audio_common_msgs/AudioStamped`` of [frames, channels] samples.

    The dtype picks the PortAudio format (float32, int32, int16, int8, uint8); ``info.chunk`` is
    the frame count; the stamp is the first frame's capture time.
    """
    msgs = _audio_common(conv.FLAVOUR_MGONZS13)
    frames = _frames(samples, _PORTAUDIO_FIELDS)
    code, field = _PORTAUDIO_FIELDS[frames.dtype.name]
    msg = msgs.AudioStamped()
    _header(msg, stamp_ns, frame_id)
    info = msg.audio.info
    info.format, info.channels, info.rate, info.chunk = (
        code, frames.shape[1], int(sample_rate), frames.shape[0])
    setattr(msg.audio.audio_data, field, array.array(frames.dtype.char, frames.tobytes()))
    return msg


def ros_drivers_audio_info(sample_rate: int, channels: int, dtype: Any) -> Any:
    """ros-drivers ``audio_common_msgs/AudioInfo`` for raw little-endian PCM of ``dtype``."""
    msgs = _audio_common(conv.FLAVOUR_ROS_DRIVERS)
    name = np.dtype(dtype).name
    if name not in _GSTREAMER_FORMATS:
        raise ValueError(f'sample dtype {name} is not one of {sorted(_GSTREAMER_FORMATS)}')
    bits = np.dtype(dtype).itemsize * 8
    return msgs.AudioInfo(channels=int(channels), sample_rate=int(sample_rate),
                          sample_format=_GSTREAMER_FORMATS[name],
                          bitrate=int(sample_rate) * int(channels) * bits, coding_format='wave')


def ros_drivers_audio_stamped(samples: np.ndarray, stamp_ns: int, frame_id: str = '') -> Any:
    """ros-drivers ``audio_common_msgs/AudioDataStamped``: interleaved little-endian PCM bytes
    (publish :func:`ros_drivers_audio_info` beside it)."""
    msgs = _audio_common(conv.FLAVOUR_ROS_DRIVERS)
    frames = _frames(samples, _GSTREAMER_FORMATS)
    msg = msgs.AudioDataStamped()
    _header(msg, stamp_ns, frame_id)
    little = frames.astype(frames.dtype.newbyteorder('<'), copy=False)
    msg.audio.data = array.array('B', little.tobytes())
    return msg
