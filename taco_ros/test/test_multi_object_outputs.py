"""Several sounding objects in taco_node's output messages (outputs.window_messages, the code the node and
the bag replay publish with): one SoundingObject per object with its mask value, class id and track id,
and a class mask that paints each object's pixels with its own class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

from node_fixtures import WORDS, make_frame, noise_window, small_model_config
from std_msgs.msg import Header

from taco_ros import outputs
from taco_ros.conversions import sec_to_stamp
from taco_ros.core.contract import AudioWindow, SoundingObjectResult, TacoResult

VOCABULARY = ['dog', 'cat', 'bird', 'violin']


def _pixels(msg) -> np.ndarray:
    dtype = '<u2' if msg.encoding == 'mono16' else np.uint8
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width)


def _three_objects() -> TacoResult:
    mask = np.zeros((8, 10), np.uint8)
    mask[0:3, 0:3], mask[4:8, 0:2], mask[5:7, 6:10] = 1, 2, 3
    words, tracks, factors = ('violin', 'dog', 'bird'), (7, 3, 12), (5, 1, 6)
    objects = [SoundingObjectResult(
        mask_value=v, label=word, score=0.4, top_labels=[word, 'cat'], top_scores=[0.4, 0.1],
        confidence=0.3, audio_activation=0.5, bbox=(0, 0, 1, 1), factor_index=k, audio_factor=k,
        track_id=track, activation=np.full(3, 0.5, np.float32))
        for v, word, track, k in zip((1, 2, 3), words, tracks, factors, strict=True)]
    return TacoResult(
        mask=mask, objects=objects, sounding=True, confidence=0.3, k_star=5, steps=4, cold_start=False,
        mode='full', activation=np.full(3, 0.5, np.float32), token_offsets=np.arange(3) / 3,
        token_duration=1 / 3, window_duration=1.0, timings={}, score_map=None, random_weights=True)


def test_every_object_has_its_message_with_mask_value_class_id_and_track_id() -> None:
    result = _three_objects()
    header = Header(frame_id='camera', stamp=sec_to_stamp(3.0))
    window = AudioWindow(samples=np.zeros(16000, np.float32), sample_rate=16000, start=2.0)
    msgs = outputs.window_messages(result, header, window, VOCABULARY)
    objects = msgs.objects.objects
    assert [o.mask_value for o in objects] == [1, 2, 3]
    assert [o.track_id for o in objects] == [7, 3, 12]
    assert [o.class_id for o in objects] == [3, 0, 2]
    assert [o.factor_index for o in objects] == [5, 1, 6]
    assert [o.label for o in objects] == ['violin', 'dog', 'bird']
    np.testing.assert_array_equal(_pixels(msgs.mask), result.mask)
    # The class mask: each object's pixels hold its own class id.
    classes = _pixels(outputs.window_messages(result, header, window, VOCABULARY, 'class').mask)
    expected = np.full(result.mask.shape, outputs.UNLABELED, np.uint16)
    for value, class_id in ((1, 3), (2, 0), (3, 2)):
        expected[result.mask == value] = class_id
    np.testing.assert_array_equal(classes, expected)
    assert msgs.activation.label == 'violin' and msgs.activation.factor_index == 5   # k*, the first


def test_a_pipeline_with_several_objects_publishes_one_message_per_object(tmp_path: Path) -> None:
    from taco_ros.core.pipeline import PipelineConfig, TacoPipeline

    (tmp_path / 'empty').mkdir()
    pipeline = TacoPipeline(PipelineConfig(
        model_config=str(small_model_config(tmp_path)), model_dir=str(tmp_path / 'empty'), device='cpu',
        allow_random_weights=True, vocabulary=list(WORDS), max_objects=4,
        solver_overrides={'max_steps': 15, 'sounding_threshold': 0.0}))
    header = Header(frame_id='camera')
    vocabulary = list(pipeline.vocabulary)
    published = []
    try:
        for i in range(3):
            window = noise_window(seed=i)
            result = pipeline.process(make_frame(seed=i), window)
            msgs = outputs.window_messages(result, header, window, vocabulary)
            published.append((result, msgs))
    finally:
        pipeline.close()
    assert any(result.objects for result, _ in published)
    for result, msgs in published:
        assert len(msgs.objects.objects) == len(result.objects)
        for obj, msg in zip(result.objects, msgs.objects.objects, strict=True):
            assert (msg.mask_value, msg.track_id, msg.factor_index) == (obj.mask_value, obj.track_id,
                                                                        obj.factor_index)
            assert msg.track_id >= 1 and msg.class_id == vocabulary.index(obj.label)
            x, y, w, h = obj.bbox
            assert (msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height) == (x, y, w, h)
        assert set(np.unique(_pixels(msgs.mask)).tolist()) - {0} == {o.mask_value for o in result.objects}
