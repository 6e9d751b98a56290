"""taco_node's depth input without DDS: the checks a depth message passes before it is stored, reading
its values (row padding, byte order), the bounded store, and SoundingObject positions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')
pytest.importorskip('taco_msgs.msg')

from depth_fixtures import PlaneScene
from sensor_msgs.msg import CameraInfo, Image

from taco_msgs.msg import SoundingObject, SoundingObjectArray
from taco_ros import outputs
from taco_ros.conversions import InputTooLargeError
from taco_ros.core.geometry import ObjectPosition
from taco_ros.depth_input import check_depth_image, depth_array, intrinsics_of
from taco_ros.node_inputs import StampedStore


def _image(values: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    dtype = values.dtype.newbyteorder('>' if big_endian else '<')
    rows = values.astype(dtype).view(np.uint8).reshape(values.shape[0], -1)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 7, np.uint8)], axis=1)
    return Image(height=values.shape[0], width=values.shape[1], encoding=encoding,
                 is_bigendian=int(big_endian), step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize('encoding,dtype', [('16UC1', np.uint16), ('32FC1', np.float32)])
@pytest.mark.parametrize('big_endian', [False, True])
def test_depth_values_are_read_with_row_padding_and_either_byte_order(
        encoding: str, dtype: type, big_endian: bool) -> None:
    values = (np.arange(12).reshape(3, 4) * 250 + 100).astype(dtype)
    msg = _image(values, encoding, pad=6, big_endian=big_endian)
    check_depth_image(msg, 1000)
    read = depth_array(msg)
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    np.testing.assert_array_equal(read, values)


def test_bad_depth_messages_are_refused_with_the_reason() -> None:
    msg = PlaneScene(1.0, '16UC1', 8, 6).depth_msg(1.0)
    check_depth_image(msg, 48)
    with pytest.raises(InputTooLargeError, match='more than max_image_pixels = 47'):
        check_depth_image(msg, 47)
    msg.encoding = 'mono8'
    with pytest.raises(ValueError, match="depth encoding 'mono8' is not one of 16UC1, 32FC1"):
        check_depth_image(msg, 48)
    msg = PlaneScene(1.0, '16UC1', 8, 6).depth_msg(1.0)
    msg.step = 15
    with pytest.raises(ValueError, match='step 15 is shorter than one row'):
        check_depth_image(msg, 48)
    msg.step, msg.data = 16, bytes(95)
    with pytest.raises(ValueError, match='depth data has 95 bytes, 6 rows of step 16 need 96'):
        check_depth_image(msg, 48)
    msg.height = msg.width = 0
    with pytest.raises(ValueError, match='no pixels'):
        check_depth_image(msg, 48)


def test_depth_camera_info_needs_a_usable_k() -> None:
    info = PlaneScene(1.0, width=64, height=48).info_msg(1.0)
    intrinsics = intrinsics_of(info)
    assert (intrinsics.fx, intrinsics.fy, intrinsics.width, intrinsics.height) == (200.0, 210.0, 64, 48)
    with pytest.raises(ValueError, match='fx must be positive'):
        intrinsics_of(CameraInfo(width=64, height=48))


def test_store_keeps_the_newest_within_its_byte_budget() -> None:
    store: StampedStore[bytes] = StampedStore(capacity=10, max_bytes=250, cost=len)
    for stamp in (1.0, 2.0, 3.0):
        store.add(stamp, bytes(100))
    assert len(store) == 2 and store.nearest(1.0, 0.5) is None and store.nearest(2.1, 0.5) is not None
    store.add(4.0, bytes(1000))        # over the budget alone: kept, the older ones go
    assert len(store) == 1 and store.nearest(4.0, 0.0) is not None
    store.clear()
    assert len(store) == 0 and store.nearest(4.0, 1.0) is None


def test_sounding_objects_get_position_and_size() -> None:
    msg = SoundingObjectArray(objects=[SoundingObject(), SoundingObject()])
    place = ObjectPosition(centroid=np.array([0.1, -0.2, 1.5]), box_min=np.array([0.0, -0.3, 1.4]),
                           box_max=np.array([0.3, -0.1, 1.6]), n_points=40, valid_fraction=1.0)
    outputs.set_positions(msg, [None, place])
    first, second = msg.objects
    assert not first.has_position and (first.position.z, first.size.x) == (0.0, 0.0)
    assert second.has_position
    assert [second.position.x, second.position.y, second.position.z] == [0.1, -0.2, 1.5]
    assert [second.size.x, second.size.y, second.size.z] == pytest.approx([0.3, 0.2, 0.2])
