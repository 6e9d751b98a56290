"""Topic names and message types of taco_ros bags: the camera and microphone inputs the bag tools
write, and the outputs taco_node publishes (what ``bag record`` and ``bag process`` write)."""

from __future__ import annotations

import importlib

IMAGE_TOPIC = '/camera/image_raw'
AUDIO_TOPIC = '/audio'

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
AUDIO_INFO_TYPE = 'audio_common_msgs/msg/AudioInfo'    # ros-drivers: the format of AudioData
AUDIO_TYPE = 'taco_msgs/msg/AudioChunk'

OUTPUT_TOPICS = {   # taco_node's outputs (params.TOPICS, private names) → message type
    'mask': 'sensor_msgs/msg/Image',
    'objects': 'taco_msgs/msg/SoundingObjectArray',
    'audio_activation': 'taco_msgs/msg/AudioActivation',
    'debug_image': 'sensor_msgs/msg/Image',
    'label_info': 'taco_msgs/msg/LabelInfo',
}
DIAGNOSTICS_TOPIC = ('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray')
NODE_NAME = '/taco_node'


def output_topics(node_name: str = NODE_NAME, debug_image: bool = True,
                  diagnostics: bool = True) -> dict[str, str]:
    """{topic: type} that taco_node publishes when its fully qualified name is ``node_name``."""
    base = '/' + node_name.strip('/')
    topics = {f'{base}/{name}': msgtype for name, msgtype in OUTPUT_TOPICS.items()
              if debug_image or name != 'debug_image'}
    if diagnostics:
        topics[DIAGNOSTICS_TOPIC[0]] = DIAGNOSTICS_TOPIC[1]
    return topics


def message_class(msgtype: str) -> type:
    """rclpy message class of 'pkg/msg/Name'."""
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)
