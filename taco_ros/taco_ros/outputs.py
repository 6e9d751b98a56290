"""One window's result as taco_node's output messages.

Plain functions, so the node and an offline replay publish or write the very same messages. Every
window output carries the header of the camera frame the window was paired with; the audio window's
start and end travel in the messages' own fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
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


@dataclass
class WindowMessages:
    """The per-window outputs (the debug image is built separately, only when watched)."""

    mask: Image
    objects: SoundingObjectArray
    activation: AudioActivation


def window_messages(result: TacoResult, header: Header, window: AudioWindow) -> WindowMessages:
    """mask, objects and audio_activation of one window."""
    return WindowMessages(mask=mask_message(result, header),
                          objects=objects_message(result, header, window),
                          activation=activation_message(result, header, window))


def mask_message(result: TacoResult, header: Header) -> Image:
    """mono8 mask of the frame's size: 0 background, v = objects[v-1]."""
    return numpy_to_image(result.mask, header, 'mono8')


def objects_message(result: TacoResult, header: Header,
                    window: AudioWindow) -> SoundingObjectArray:
    """The sounding objects of one window with the decision and solver facts."""
    start, end = _audio_span(window)
    msg = SoundingObjectArray(
        header=header, audio_start=start, audio_end=end,
        sounding=bool(result.sounding), confidence=float(result.confidence),
        solver_steps=int(result.steps), cold_start=bool(result.cold_start),
        mode=str(result.mode))
    msg.objects = [object_message(obj) for obj in result.objects]
    return msg


def object_message(obj: SoundingObjectResult) -> SoundingObject:
    msg = SoundingObject(
        mask_value=int(obj.mask_value), label=str(obj.label), score=float(obj.score),
        top_labels=[str(w) for w in obj.top_labels],
        top_scores=[float(s) for s in obj.top_scores],
        confidence=float(obj.confidence), audio_activation=float(obj.audio_activation),
        factor_index=int(obj.factor_index))
    x, y, w, h = (int(v) for v in obj.bbox)
    msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height = x, y, w, h
    return msg


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


def _audio_span(window: AudioWindow) -> tuple[Time, Time]:
    return sec_to_stamp(window.start), sec_to_stamp(window.start + window.duration)
