"""One window's result as taco_node's output messages.

Plain functions, so the node and an offline replay publish or write the very same messages. Every
window output carries the header of the camera frame the window was paired with; the audio window's
start and end travel in the messages' own fields.

Class ids are vocabulary indices everywhere: ``~/label_info``, ``~/vision_label_info``, the
``class_id`` of ``~/detections`` (as a decimal string), the class mask and
``SoundingObject.class_id``. A label missing from the vocabulary (it changed while the window ran)
gets :data:`UNLABELED`, vision_msgs' reserved uint16 id.

Several objects (``max_objects`` > 1): one ``SoundingObject`` per object, each with its
``mask_value`` (its pixels in ``~/mask``), ``class_id`` and ``track_id``. ``~/audio_activation``
stays the activation of k*, the first object.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from taco_msgs.msg import (
    AudioActivation,
    LabelInfo,
    SoundingObject,
    SoundingObjectArray,
    VocabularyClass,
)
from taco_ros.conversions import numpy_to_image, sec_to_stamp
from taco_ros.core.contract import AudioWindow, SoundingObjectResult, TacoResult
from taco_ros.core.geometry import ObjectPosition

UNLABELED = 65535           # vision_msgs LabelInfo: the largest id of the id type
MASK_INSTANCE, MASK_CLASS = 'instance', 'class'


@dataclass
class WindowMessages:
    """The per-window outputs (the debug image is built separately, only when watched)."""

    mask: Image
    objects: SoundingObjectArray
    activation: AudioActivation


def window_messages(result: TacoResult, header: Header, window: AudioWindow,
                    vocabulary: Sequence[str] | None = None,
                    mask_encoding: str = MASK_INSTANCE) -> WindowMessages:
    """mask, objects and audio_activation of one window.

    ``vocabulary``: the words the result was computed with (class ids); needed for the class
    mask, optional otherwise (without it SoundingObject.class_id is UNLABELED).
    """
    ids = class_ids(result, vocabulary or [])
    return WindowMessages(mask=mask_message(result, header, mask_encoding, ids),
                          objects=objects_message(result, header, window, ids),
                          activation=activation_message(result, header, window))


def class_ids(result: TacoResult, vocabulary: Sequence[str]) -> list[int]:
    """The class id (vocabulary index) of each object's label; UNLABELED when it is missing."""
    index = {str(word): i for i, word in enumerate(vocabulary)}
    return [index.get(str(obj.label), UNLABELED) for obj in result.objects]


def mask_message(result: TacoResult, header: Header, encoding: str = MASK_INSTANCE,
                 ids: Sequence[int] | None = None) -> Image:
    """The frame-sized mask: 'instance' = mono8, 0 background, v = objects[v-1]; 'class' =
    mono16, each object's pixels hold its class id (``ids``), background UNLABELED."""
    if encoding == MASK_INSTANCE:
        return numpy_to_image(result.mask, header, 'mono8')
    if encoding != MASK_CLASS:
        raise ValueError(f'unknown mask encoding {encoding!r}')
    if ids is None or len(ids) != len(result.objects):
        raise ValueError('a class mask needs one class id per object')
    # instance value v (objects[v-1]) -> class id; 0 and values without an object -> UNLABELED
    lookup = np.full(256, UNLABELED, np.uint16)
    for obj, class_id in zip(result.objects, ids, strict=True):
        lookup[int(obj.mask_value)] = class_id
    lookup[0] = UNLABELED
    return numpy_to_image(lookup[np.asarray(result.mask, np.uint8)], header, 'mono16')


def objects_message(result: TacoResult, header: Header, window: AudioWindow,
                    ids: Sequence[int] | None = None) -> SoundingObjectArray:
    """The sounding objects of one window with the decision and solver facts."""
    start, end = _audio_span(window)
    msg = SoundingObjectArray(
        header=header, audio_start=start, audio_end=end,
        sounding=bool(result.sounding), confidence=float(result.confidence),
        solver_steps=int(result.steps), cold_start=bool(result.cold_start),
        mode=str(result.mode))
    ids = list(ids) if ids is not None else [UNLABELED] * len(result.objects)
    msg.objects = [object_message(obj, class_id)
                   for obj, class_id in zip(result.objects, ids, strict=True)]
    return msg


def object_message(obj: SoundingObjectResult, class_id: int = UNLABELED) -> SoundingObject:
    msg = SoundingObject(
        mask_value=int(obj.mask_value), label=str(obj.label), score=float(obj.score),
        top_labels=[str(w) for w in obj.top_labels],
        top_scores=[float(s) for s in obj.top_scores],
        confidence=float(obj.confidence), audio_activation=float(obj.audio_activation),
        factor_index=int(obj.factor_index))
    x, y, w, h = (int(v) for v in obj.bbox)
    msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height = x, y, w, h
    if hasattr(msg, 'class_id'):    # taco_msgs before class_id was added lacks the field
        msg.class_id = int(class_id)
    msg.track_id = int(obj.track_id)
    return msg


def set_positions(msg: SoundingObjectArray, positions: Sequence[ObjectPosition | None]) -> None:
    """Fill has_position, position (the median point) and size (the 5-95 percentile extent) of the
    objects placed with depth; camera optical frame, metres. The others keep has_position false."""
    for obj, place in zip(msg.objects, positions, strict=True):
        obj.has_position = place is not None
        if place is not None:
            obj.position.x, obj.position.y, obj.position.z = (float(v) for v in place.centroid)
            obj.size.x, obj.size.y, obj.size.z = (float(v) for v in place.size)


def activation_message(result: TacoResult, header: Header,
                       window: AudioWindow) -> AudioActivation:
    """Activation of the sounding factor over the window's audio tokens, with time offsets."""
    start, _ = _audio_span(window)
    label = result.objects[0].label if result.objects else ''
    return AudioActivation(
        header=header, audio_start=start,
        window_duration=float(result.window_duration),
        token_duration=float(result.token_duration),
        activation=np.asarray(result.activation, np.float32).tolist(),
        time_offset=np.asarray(result.token_offsets, np.float32).tolist(),
        label=label, factor_index=max(0, int(result.k_star)))


def debug_image_message(frame: np.ndarray, result: TacoResult, header: Header,
                        alpha: float) -> Image:
    """rgb8 frame with the mask blended, label, score and activation strip."""
    from taco_ros.overlay import draw_debug  # cv2 is loaded only when someone watches

    return numpy_to_image(draw_debug(frame, result, alpha), header, 'rgb8')


def label_info_message(vocabulary: Sequence[str], threshold: float, stamp: Time) -> LabelInfo:
    """The vocabulary (class_id = index) and the mask threshold in use."""
    msg = LabelInfo(threshold=float(threshold))
    msg.header.stamp = stamp
    msg.class_map = [VocabularyClass(class_id=i, class_name=str(word))
                     for i, word in enumerate(vocabulary)]
    return msg


def paired_camera_info(info: CameraInfo, header: Header) -> CameraInfo:
    """A copy of ``info`` carrying the paired frame's header (what ~/camera_info publishes)."""
    out = copy.copy(info)
    out.header = header
    return out


def _audio_span(window: AudioWindow) -> tuple[Time, Time]:
    return sec_to_stamp(window.start), sec_to_stamp(window.start + window.duration)
