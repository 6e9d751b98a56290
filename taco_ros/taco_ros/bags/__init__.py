"""rosbag2 files for taco_ros, one module per concept:

- :mod:`.rosbag`: read and write bags with rosbags (no ROS install needed; sqlite3 or MCAP);
- :mod:`.schema`, :mod:`.messages`, :mod:`.topics`: the typestore, message builders/decoders and the
  topic names and types of the node's inputs and outputs;
- :mod:`.scene`: the synthetic scene (moving shapes; speech, tones, silences);
- :mod:`.media`: bags from a video file (or image folder) plus a WAV file;
- :mod:`.player`, :mod:`.recorder`: play and record through rclpy (imported only when used);
- :mod:`.process` (with :mod:`.inputs`, :mod:`.result_writer`, :mod:`.node_params`): deterministic
  replay of a bag through taco_node's window policy and pipeline into a result bag;
- :mod:`.results`, :mod:`.compare`: read result bags back, compare two of them.

The names below are the package's public API: ``from taco_ros import bags; bags.read_messages(...)``.
"""

from taco_ros.bags.compare import (
    Comparison,
    Tolerances,
    compare_bags,
    compare_results,
    format_comparison,
)
from taco_ros.bags.info import describe_bag
from taco_ros.bags.media import make_media_bag, media_frames, read_wav
from taco_ros.bags.messages import (
    audio_message,
    compressed_message,
    frame_from_message,
    image_message,
    samples_from_message,
)
from taco_ros.bags.node_params import default_params_file, node_parameters, read_params_file
from taco_ros.bags.player import BagPlayer, PlayReport, play_bag, restamp_cdr
from taco_ros.bags.process import ProcessReport, format_report, process_bag
from taco_ros.bags.recorder import BagRecorder, record_bag
from taco_ros.bags.results import ObjectView, WindowResult, read_vocabulary, read_windows
from taco_ros.bags.rosbag import (
    STORAGES,
    BagMessage,
    BagSummary,
    bag_topics,
    find_topic,
    offered_qos,
    read_messages,
    remove_bag,
    storage_plugin,
    write_bag,
)
from taco_ros.bags.scene import (
    SCENE_FILE,
    SceneConfig,
    SoundEvent,
    make_synthetic_bag,
    read_scene,
    render_scene_frame,
    scene_audio,
    scene_events,
    scene_frames,
)
from taco_ros.bags.schema import header_first, stamp_ns, taco_msgs_dir, typestore
from taco_ros.bags.topics import (
    AUDIO_TOPIC,
    AUDIO_TYPE,
    COMPRESSED_TYPE,
    DIAGNOSTICS_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    NODE_NAME,
    OUTPUT_TOPICS,
    message_class,
    output_topics,
)

__all__ = [
    'AUDIO_TOPIC',
    'AUDIO_TYPE',
    'COMPRESSED_TYPE',
    'DIAGNOSTICS_TOPIC',
    'IMAGE_TOPIC',
    'IMAGE_TYPE',
    'NODE_NAME',
    'OUTPUT_TOPICS',
    'SCENE_FILE',
    'STORAGES',
    'BagMessage',
    'BagPlayer',
    'BagRecorder',
    'BagSummary',
    'Comparison',
    'ObjectView',
    'PlayReport',
    'ProcessReport',
    'SceneConfig',
    'SoundEvent',
    'Tolerances',
    'WindowResult',
    'audio_message',
    'bag_topics',
    'compare_bags',
    'compare_results',
    'compressed_message',
    'default_params_file',
    'describe_bag',
    'find_topic',
    'format_comparison',
    'format_report',
    'frame_from_message',
    'header_first',
    'image_message',
    'make_media_bag',
    'make_synthetic_bag',
    'media_frames',
    'message_class',
    'node_parameters',
    'offered_qos',
    'output_topics',
    'play_bag',
    'process_bag',
    'read_messages',
    'read_params_file',
    'read_scene',
    'read_vocabulary',
    'read_wav',
    'read_windows',
    'record_bag',
    'remove_bag',
    'render_scene_frame',
    'restamp_cdr',
    'samples_from_message',
    'scene_audio',
    'scene_events',
    'scene_frames',
    'stamp_ns',
    'storage_plugin',
    'taco_msgs_dir',
    'typestore',
    'write_bag',
]
