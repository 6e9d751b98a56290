"""Parameters, topics and QoS of taco_node and mic_node: the tables the nodes declare from and
config/*.yaml and the README tables are generated from (by taco_ros.params_docs; a test keeps
them equal).

Importable without rclpy (the launch file and the docs read it); the few functions that need ROS
types import them inside.

taco_node's parameters are either *read-only* (models, device, input types and QoS: they change only
by reconfiguring the lifecycle node, i.e. deactivate → cleanup → set → configure → activate) or
*live* (thresholds, windows, vocabulary, mode: validated and applied from the next window).
mic_node's are all read at start-up.

A value of the wrong type is refused with a message wherever it comes from: ``ros2 param set`` (the
node's validator), or a parameter file / ``-p`` at start-up
(:func:`taco_ros.param_declaration.declare_all` declares the default
instead and returns the problem, which the node reports and refuses to configure with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from taco_ros.audio_formats import SAMPLE_FORMATS
from taco_ros.core.contract import (
    AUDIO_CONTEXTS,
    CLAP_CONTEXT_SEC,
    MAX_OBJECTS,
    MODES,
    PAIR_WITH,
    PRECISIONS,
    RESIZE_POLICIES,
    SOLVER_PROFILES,
    check_device,
)

NODE_NAME = 'taco_node'
MIC_NODE_NAME = 'mic_node'

# ---------------------------------------------------------------------------------------- topics
# Inputs are relative names (remap them: image:=/camera/color/image_raw); outputs are private.
TOPIC_IMAGE = 'image'
TOPIC_IMAGE_COMPRESSED = 'image/compressed'     # image_transport's naming for the compressed stream
TOPIC_CAMERA_INFO = 'camera_info'               # optional: republished with each window's frame
TOPIC_AUDIO = 'audio'
TOPIC_AUDIO_INFO = 'audio_info'                 # ros-drivers audio_common stream description
TOPIC_DEPTH = 'depth'                           # optional (use_depth): depth aligned to the camera
TOPIC_DEPTH_CAMERA_INFO = 'depth_camera_info'   # the depth image's calibration
TOPIC_MASK = '~/mask'
TOPIC_OBJECTS = '~/objects'
TOPIC_AUDIO_ACTIVATION = '~/audio_activation'
TOPIC_DEBUG_IMAGE = '~/debug_image'
TOPIC_LABEL_INFO = '~/label_info'
TOPIC_PAIRED_CAMERA_INFO = '~/camera_info'
TOPIC_DETECTIONS = '~/detections'               # vision_msgs/Detection2DArray (when installed)
TOPIC_VISION_LABEL_INFO = '~/vision_label_info'  # vision_msgs/LabelInfo (~/label_info is taco_msgs')
TOPIC_DETECTIONS_3D = '~/detections_3d'         # vision_msgs/Detection3DArray (use_depth)
TOPIC_MARKERS = '~/markers'                     # visualization_msgs/MarkerArray (use_depth)
TOPIC_DIAGNOSTICS = '/diagnostics'
SERVICE_SET_VOCABULARY = '~/set_vocabulary'

# Output QoS: results are reliable with a short history; label_info is latched (vision_msgs rule).
OUTPUT_DEPTH = 5

QOS_PROFILES = ('sensor_data', 'reliable', 'best_effort', 'system_default')
MASK_ENCODINGS = ('instance', 'class')
MIC_MSG_TYPES = ('taco', 'audio_common_stamped', 'audio_data_stamped')
VISION_MSGS_NEEDED = 'vision_msgs 4.x installed'


@dataclass(frozen=True)
class TopicSpec:
    """One topic or service of the node, for the README table and the tests.

    enabled_by: what makes the node use it ('always', a parameter value or an installed package).
    """

    name: str
    type: str
    direction: str      # 'sub', 'pub' or 'srv'
    qos: str
    description: str
    enabled_by: str = 'always'


T = TopicSpec
RELIABLE_OUT = f'reliable, depth {OUTPUT_DEPTH}'
TOPICS: list[TopicSpec] = [
    T(TOPIC_IMAGE, 'sensor_msgs/Image', 'sub', 'image_qos (sensor_data)',
      'camera frames (rgb8, bgr8, rgba8, bgra8, mono8, 16-bit, Bayer, YUV 4:2:2; any row step)',
      "image_transport 'raw'"),
    T(TOPIC_IMAGE_COMPRESSED, 'sensor_msgs/CompressedImage', 'sub', 'image_qos (sensor_data)',
      'jpeg/png frames', "image_transport 'compressed'"),
    T(TOPIC_CAMERA_INFO, 'sensor_msgs/CameraInfo', 'sub', 'image_qos (sensor_data)',
      "the camera's calibration; the one nearest each window's frame (within pair_tolerance) is "
      'republished on ~/camera_info', 'always (optional input)'),
    T(TOPIC_AUDIO, 'taco_msgs/AudioChunk | std_msgs/Int16MultiArray | '
      'std_msgs/Float32MultiArray | audio_common_msgs (either flavour)', 'sub',
      'audio_qos (sensor_data, depth audio_qos_depth)',
      'microphone chunks; type chosen by audio_msg_type (auto: the type on the topic)'),
    T(TOPIC_AUDIO_INFO, 'audio_common_msgs/AudioInfo (ros-drivers)', 'sub',
      'best effort; and reliable + transient_local once a latched publisher appears',
      'format of ros-drivers AudioData(Stamped); until it (or audio_sample_format) is known, '
      'chunks are held (a few seconds)', 'audio_msg_type audio_data / audio_data_stamped'),
    T(TOPIC_DEPTH, 'sensor_msgs/Image (16UC1 mm or 32FC1 m)', 'sub', 'image_qos (sensor_data)',
      'depth aligned to the camera, paired like camera_info: places the objects in 3D', 'use_depth'),
    T(TOPIC_DEPTH_CAMERA_INFO, 'sensor_msgs/CameraInfo', 'sub', 'image_qos (sensor_data)',
      "the depth image's calibration (K), paired with it by stamp", 'use_depth'),
    T(TOPIC_MASK, 'sensor_msgs/Image (mono8 or mono16)', 'pub', RELIABLE_OUT,
      "same size and header as the paired frame; mask_encoding 'instance' (mono8): 0 background, "
      "v = objects[v-1]; 'class' (mono16): the class id of ~/label_info, 65535 background"),
    T(TOPIC_OBJECTS, 'taco_msgs/SoundingObjectArray', 'pub', RELIABLE_OUT,
      'sounding objects (label, scores, box, confidence) of each window; empty when nothing '
      'in view sounds'),
    T(TOPIC_AUDIO_ACTIVATION, 'taco_msgs/AudioActivation', 'pub', RELIABLE_OUT,
      "activation of the sounding factor over the window's audio tokens, with time offsets"),
    T(TOPIC_DEBUG_IMAGE, 'sensor_msgs/Image (rgb8)', 'pub', RELIABLE_OUT,
      'frame with the mask blended, label, score and activation strip', 'a subscriber'),
    T(TOPIC_LABEL_INFO, 'taco_msgs/LabelInfo', 'pub', 'reliable, transient_local, depth 1',
      'current vocabulary (class_id = index) and mask threshold; republished on change'),
    T(TOPIC_PAIRED_CAMERA_INFO, 'sensor_msgs/CameraInfo', 'pub', RELIABLE_OUT,
      "the camera_info paired with each window's frame, with the frame's header (to project "
      'the mask)', 'camera_info published'),
    T(TOPIC_DETECTIONS, 'vision_msgs/Detection2DArray', 'pub', RELIABLE_OUT,
      "the sounding objects for generic consumers; the frame's header; class_id = "
      'vocabulary index as in ~/vision_label_info', VISION_MSGS_NEEDED),
    T(TOPIC_VISION_LABEL_INFO, 'vision_msgs/LabelInfo', 'pub',
      'reliable, transient_local, depth 1', 'the class ids of ~/detections (same ids as '
      '~/label_info); republished on change', VISION_MSGS_NEEDED),
    T(TOPIC_DETECTIONS_3D, 'vision_msgs/Detection3DArray', 'pub', RELIABLE_OUT, 'objects placed with depth: '
      'box centre = position, size = extent; ids as on ~/detections', f'use_depth, {VISION_MSGS_NEEDED}'),
    T(TOPIC_MARKERS, 'visualization_msgs/MarkerArray', 'pub', RELIABLE_OUT, 'a box and a label per '
      'object placed with depth, for RViz (after a DELETEALL)', 'use_depth, visualization_msgs installed'),
    T(TOPIC_DIAGNOSTICS, 'diagnostic_msgs/DiagnosticArray', 'pub', 'reliable, depth 10',
      'input rates, latency, per-stage times, drops, buffer fill, device, GPU memory; '
      'every diagnostics_period'),
    T(SERVICE_SET_VOCABULARY, 'taco_msgs/srv/SetVocabulary', 'srv', 'services default',
      'replace the vocabulary (same as setting the vocabulary parameter)'),
]

MIC_TOPICS: list[TopicSpec] = [
    T(TOPIC_AUDIO, 'taco_msgs/AudioChunk | audio_common_msgs/AudioStamped (mgonzs13) | '
      'audio_common_msgs/AudioDataStamped (ros-drivers)', 'pub',
      'qos (reliable), depth qos_depth',
      'blocks of block_size frames, header.stamp = capture time of the first sample; the '
      'topic name is the topic parameter', 'msg_type (taco, audio_common_stamped, '
      'audio_data_stamped; the audio_common ones need that flavour installed)'),
    T(TOPIC_AUDIO_INFO, 'audio_common_msgs/AudioInfo (ros-drivers)', 'pub',
      'reliable, transient_local, depth 1', 'the stream format (channels, rate, S16LE / S32LE / '
      'F32LE, wave); the topic name is the info_topic parameter', 'msg_type audio_data_stamped'),
    T(TOPIC_DIAGNOSTICS, 'diagnostic_msgs/DiagnosticArray', 'pub', 'reliable, depth 10',
      'device, rate, overflows, dropped blocks, clock re-syncs, restarts; every '
      'diagnostics_period_s'),
]
del T


# ------------------------------------------------------------------------------------ parameters
APPLIES = ('live', 'activate', 'configure', 'startup')
APPLIES_NOTE = {
    'activate': 'Applied at activate (deactivate, set, activate).',
    'configure': 'Applied at configure (deactivate, cleanup, set, configure).',
    'startup': 'Read at start-up only.',
}


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    default: its value in the node and in config/taco.yaml; its Python type is the ROS type
        (bool, int, float, str, list[str]).
    applies: when a new value takes effect:
        'live' — from the next window;
        'activate' — at the next activate (inputs: refused while active; deactivate, set, activate);
        'configure' — at the next configure (models: refused while configured; deactivate,
            cleanup, set, configure);
        'startup' — read once at start-up (rclpy ``read_only``).
    range: inclusive (min, max) for numbers (published as FloatingPointRange / IntegerRange).
    choices: allowed strings (checked by the node's validator, listed in the description).
    also_int: the string may be given as an integer (mic_node's device index).
    """

    name: str
    default: Any
    description: str
    group: str
    applies: str = 'live'
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    also_int: bool = False

    def __post_init__(self) -> None:
        if self.applies not in APPLIES:
            raise ValueError(f'{self.name}: applies must be one of {APPLIES}, got {self.applies!r}')

    @property
    def read_only(self) -> bool:
        """True when the value cannot change while the node runs (not 'live')."""
        return self.applies != 'live'

    @property
    def startup_only(self) -> bool:
        return self.applies == 'startup'

    @property
    def choice_list(self) -> str:
        """The choices, comma-separated ("" written as such)."""
        return ', '.join(choice or '""' for choice in self.choices or ())

    @property
    def type_name(self) -> str:
        if isinstance(self.default, bool):
            return 'bool'
        if isinstance(self.default, int):
            return 'int'
        if isinstance(self.default, float):
            return 'double'
        if isinstance(self.default, list):
            return 'string[]'
        return 'string | int' if self.also_int else 'string'

    def full_description(self, change_note: bool = True) -> str:
        text = self.description
        if change_note and self.applies != 'live':
            text += ' ' + APPLIES_NOTE[self.applies]
        if self.choices:
            text += ' One of: ' + self.choice_list + '.'
        return text


P = ParamSpec
PARAMETERS: list[ParamSpec] = [
    # -- models (read-only) --
    P('model_config', 'taco_convnext_large',
      "Model configuration: a name from taco_ros/model_configs ('taco_convnext_large', "
      "'taco_tiny') or a JSON path.", 'models', applies='configure'),
    P('model_dir', '', 'Directory searched first for model files ("" = TACO_MODEL_DIR, then '
      '~/.cache/taco_ros/models).', 'models', applies='configure'),
    P('anchors', '', 'Anchor bank file; "" builds the bank from the vocabulary with the text '
      'encoders at configure.', 'models', applies='configure'),
    P('device', 'auto', 'Torch device: auto (cuda if available), cpu, cuda or cuda:N.', 'models',
      applies='configure'),
    P('precision', 'fp32', 'Autocast precision of the backbones on CUDA (ignored on CPU).',
      'models', applies='configure', choices=PRECISIONS),
    P('allow_random_weights', False, 'Run with random weights when model files are missing (tests, '
      'demo); outputs are meaningless and every window logs a warning.', 'models', applies='configure'),
    P('seed', 0, 'Seed of the solver initialisation (CPU runs are deterministic).', 'models',
      applies='configure', range=(0, 2 ** 31 - 1)),
    P('resize', 'squash', "Frame resize policy before the backbone: 'squash' to 764x764 (the "
      "paper), 'letterbox' keeps the aspect ratio.", 'models', applies='configure',
      choices=RESIZE_POLICIES),
    # -- processing (live) --
    P('mode', 'full', "full: FC-CLIP mask of the sounding factor; coarse: its 24x24 co-NMF "
      "activation map upsampled; baseline: A-FC-CLIP (CLAP picks a word, FC-CLIP segments it).",
      'processing', choices=MODES),
    P('vocabulary', [], 'Open vocabulary (anchor words); [] = the 527 AudioSet names. Also set_vocabulary. '
      'Encoded off the executor; ~/label_info announces it once windows use it.', 'processing'),
    P('solver_profile', 'streaming', 'Co-NMF settings: streaming (warm start, Adam, early stop) or '
      'paper (1800 GD steps, cold k-means start every window).', 'processing',
      choices=SOLVER_PROFILES),
    P('solver_max_steps', 0, 'Cap on co-NMF steps per window (0 = the profile default).',
      'processing', range=(0, 10000)),
    P('mask_threshold', 0.5, 'Threshold on the sounding factor\'s soft map (0..1) for the mask.',
      'processing', range=(0.0, 1.0)),
    P('min_component_area', 0, 'Mask components smaller than this many pixels are removed.',
      'processing', range=(0, 100_000_000)),
    P('top_k', 5, 'Number of runner-up labels per object.', 'processing', range=(1, 50)),
    P('max_objects', 1, "Most sounding objects per window: 1 = TACO's single sounding factor k*; more "
      'adds each other co-NMF factor whose image and audio words agree (docs/method.md), each with '
      'its own mask value, labels, box and track_id.', 'processing', range=(1, MAX_OBJECTS)),
    P('audio_context', 'tile', "CLAP input: 'tile' repeats the window to 7 s (TACO), 'history' "
      "uses the last 7 s of real audio.", 'processing', choices=AUDIO_CONTEXTS),
    P('silence_rms', 0.001, 'Windows whose RMS is below this are "nothing sounding" without '
      'running the models (0 disables the gate).', 'processing', range=(0.0, 1.0)),
    P('solver_threads', 1, "torch intra-op threads while the co-NMF runs on the CPU (0 keeps the "
      "process's setting); 1 is fastest for its many small operations and does not collapse when "
      'other processes load the cores (bench/bench_threads.py).', 'processing', range=(0, 256)),
    # -- outputs (live) --
    P('mask_encoding', 'instance', "~/mask pixels: 'instance' = mono8 object index (0 background, "
      "v = objects[v-1]); 'class' = mono16 class id of ~/label_info and ~/vision_label_info "
      '(the vocabulary index; 65535 = background, vision_msgs UNLABELED).', 'outputs',
      choices=MASK_ENCODINGS),
    # -- inputs --
    P('image_transport', 'raw', "'raw' subscribes to image (sensor_msgs/Image), 'compressed' to "
      "image/compressed (sensor_msgs/CompressedImage).", 'inputs', applies='activate',
      choices=('raw', 'compressed')),
    P('image_qos', 'sensor_data', 'QoS of the image subscription; sensor_data (best effort) '
      'connects to reliable and best-effort publishers alike.', 'inputs', applies='activate',
      choices=QOS_PROFILES),
    P('image_qos_depth', 5, 'History depth of the image subscription.', 'inputs', applies='activate',
      range=(1, 1000)),
    P('audio_msg_type', 'auto', 'Audio message type; auto takes the type advertised on the audio '
      'topic.', 'inputs', applies='activate',
      choices=('auto', 'taco', 'int16_multiarray', 'float32_multiarray', 'audio_common_stamped',
               'audio_data_stamped', 'audio_data')),
    P('audio_qos', 'sensor_data', 'QoS of the audio subscription.', 'inputs', applies='activate',
      choices=QOS_PROFILES),
    P('audio_qos_depth', 50, 'History depth of the audio subscription (bursts of small chunks).',
      'inputs', applies='activate', range=(1, 10000)),
    P('audio_sample_rate', 16000, 'Sample rate of std_msgs multiarray audio, and of ros-drivers '
      'audio while audio_sample_format is set and no audio_info has arrived.', 'inputs',
      range=(1000, 384000)),
    P('audio_channels', 1, 'Interleaved channels of std_msgs multiarray audio (without a layout), '
      'and of ros-drivers audio while audio_sample_format is set and no audio_info has arrived.',
      'inputs', range=(1, 64)),
    P('audio_sample_format', '', 'ros-drivers AudioData(Stamped) only: "" holds the chunks (a few '
      'seconds) until audio_info says how to read them; a GStreamer sample format decodes them at '
      'once as raw PCM with audio_sample_rate and audio_channels, until an audio_info says '
      'otherwise.', 'inputs', applies='activate', choices=('', *SAMPLE_FORMATS)),
    P('audio_channel', -1, 'Channel used from multi-channel audio; -1 averages all channels.',
      'inputs', range=(-1, 63)),
    P('max_image_pixels', 16_777_216, 'Frames and depth images with more pixels are refused (and '
      'reported).', 'inputs', range=(1, 1_000_000_000)),
    P('use_depth', False, 'Subscribe to depth and depth_camera_info and place each object in 3D (Sounding'
      'Object position and size, ~/detections_3d, ~/markers).', 'inputs', applies='activate'),
    P('depth_min', 0.1, 'Depths below this are no measurement, metres.', 'inputs', range=(0.0, 100.0)),
    P('depth_max', 10.0, 'Depths beyond this are no measurement, metres.', 'inputs', range=(0.01, 1000.0)),
    P('depth_min_points', 20, 'Fewest mask pixels with a valid depth that give an object a position.',
      'inputs', range=(1, 1_000_000)),
    # -- windows --
    P('window_sec', 1.0, 'Length of the audio window factorised with one frame (TACO: 1 s).',
      'windows', range=(0.1, 7.0)),
    P('hop_sec', 1.0, 'Time between window ends.', 'windows', range=(0.05, 10.0)),
    P('pair_with', 'end', 'Pair each window with the camera frame nearest its end or its centre.',
      'windows', choices=PAIR_WITH),
    P('pair_tolerance', 0.1, 'Largest |frame stamp - pairing time| accepted, seconds.', 'windows',
      range=(0.0, 5.0)),
    P('frame_wait', 0.5, 'How far the audio may run past the pairing time while waiting for a '
      'later frame, seconds.', 'windows', range=(0.0, 5.0)),
    P('buffer_sec', 10.0, 'Audio ring buffer length, seconds.', 'windows', applies='configure',
      range=(2.0, 120.0)),
    P('stamp_tolerance', 0.02, 'Chunk stamps within this of the buffer end are appended '
      'contiguously (clock jitter), seconds. mgonzs13 audio_common stamps each chunk with now() '
      'before a blocking read: use at least chunk duration / 2 (4096-frame chunks at 16 kHz: '
      '0.128).', 'windows', range=(0.0, 0.5)),
    P('cold_start_gap', 0.25, 'Zero-filled audio in a window (seconds) that forces a cold '
      'co-NMF start.', 'windows', range=(0.0, 60.0)),
    P('window_queue', 0, 'Windows kept while inference is busy: 0 = only the newest (the others '
      'are dropped and counted); N > 0 = up to N in order (lock-step replay; older ones are '
      'dropped).', 'windows', range=(0, 1000)),
    # -- diagnostics --
    P('diagnostics_period', 1.0, 'Period of /diagnostics, seconds.', 'diagnostics',
      applies='configure', range=(0.1, 60.0)),
    P('latency_warn', 1.5, 'Window latency (window end to publish) above which diagnostics '
      'warn, seconds.', 'diagnostics', range=(0.0, 600.0)),
    P('latency_error', 5.0, 'Window latency above which diagnostics report an error, seconds.',
      'diagnostics', range=(0.0, 600.0)),
    P('input_timeout', 2.0, 'No image or audio for this long is reported as a warning, seconds.',
      'diagnostics', range=(0.1, 600.0)),
    P('debug_alpha', 0.5, 'Opacity of the mask in debug_image.', 'diagnostics',
      range=(0.0, 1.0)),
    # -- lifecycle --
    P('autostart', True, 'Configure and activate at start-up (false: wait for a lifecycle '
      'manager).', 'lifecycle', applies='startup'),
]
del P

PARAMETERS_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}

MIC_SAMPLE_FORMATS = ('int16', 'int32', 'float32')

P = ParamSpec
MIC_PARAMETERS: list[ParamSpec] = [
    P('device', '', 'Input device: "" or -1 = the default input device, an integer = PortAudio '
      'device index, otherwise a case-insensitive substring of the device name.', 'device',
      applies='startup', also_int=True),
    P('sample_rate', 16000, 'Capture rate in frames per second.', 'stream', applies='startup',
      range=(8000, 192000)),
    P('channels', 1, 'Interleaved channels captured and published.', 'stream', applies='startup',
      range=(1, 32)),
    P('block_size', 512, 'Frames per published block (PortAudio blocksize); 512 at 16 kHz = '
      '32 ms.', 'stream', applies='startup', range=(16, 65536)),
    P('sample_format', 'int16', 'Sample format captured and published.', 'stream',
      applies='startup', choices=MIC_SAMPLE_FORMATS),
    P('frame_id', 'microphone', 'header.frame_id of published blocks.', 'publishing',
      applies='startup'),
    P('topic', 'audio', 'Output topic (relative to the namespace).', 'publishing',
      applies='startup'),
    P('msg_type', 'taco', 'Message type published: taco (taco_msgs/AudioChunk), '
      'audio_common_stamped (mgonzs13 AudioStamped) or audio_data_stamped (ros-drivers '
      'AudioDataStamped, with a latched AudioInfo on info_topic); an audio_common type needs that '
      'flavour of audio_common_msgs installed, else taco is published and the refusal reported.',
      'publishing', applies='startup', choices=MIC_MSG_TYPES),
    P('info_topic', 'audio_info', 'AudioInfo topic of msg_type audio_data_stamped (relative to '
      'the namespace).', 'publishing', applies='startup'),
    P('qos', 'reliable', 'Publisher QoS; reliable as REP-2003 asks of drivers (consumers subscribe '
      'with sensor_data, which connects to it).', 'publishing', applies='startup',
      choices=QOS_PROFILES),
    P('qos_depth', 20, 'History depth of the publisher.', 'publishing', applies='startup',
      range=(1, 1000)),
    P('retry_initial_s', 0.5, 'First delay before re-opening a missing or lost device; doubles on '
      'each failure.', 'recovery', applies='startup', range=(0.01, 60.0)),
    P('retry_max_s', 10.0, 'Longest delay between attempts to open the device.', 'recovery',
      applies='startup', range=(0.1, 600.0)),
    P('device_timeout_s', 2.0, 'A running stream that delivers no block for this long is treated '
      'as lost.', 'recovery', applies='startup', range=(0.1, 60.0)),
    P('clock_tolerance_s', 0.2, 'Largest gap between the sample-clock stamp and the measured '
      'capture time before the stamps are re-anchored (counted as clock_resyncs).', 'recovery',
      applies='startup', range=(0.001, 10.0)),
    P('diagnostics_period_s', 1.0, 'Period of the /diagnostics status.', 'diagnostics',
      applies='startup', range=(0.1, 60.0)),
]
del P


@dataclass(frozen=True)
class NodeTables:
    """Everything generated for one node: its parameters and topics."""

    parameters: list[ParamSpec]
    topics: list[TopicSpec]

    @property
    def by_name(self) -> dict[str, ParamSpec]:
        return {spec.name: spec for spec in self.parameters}


NODES: dict[str, NodeTables] = {
    NODE_NAME: NodeTables(PARAMETERS, TOPICS),
    MIC_NODE_NAME: NodeTables(MIC_PARAMETERS, MIC_TOPICS),
}


def defaults(node: str = NODE_NAME) -> dict[str, Any]:
    """{name: default} of every parameter of ``node``."""
    return {spec.name: copy_default(spec.default) for spec in NODES[node].parameters}


def copy_default(value: Any) -> Any:
    """A default as a fresh value (lists are copied, so a node never shares the table's list)."""
    return list(value) if isinstance(value, list) else value


# ------------------------------------------------------------------------------------ validation
MAX_WORD_LENGTH = 200
MAX_VOCABULARY = 10_000


def normalise(name: str, value: Any, node: str = NODE_NAME) -> Any:
    """A declared value as the node uses it: an unset or empty list is [] (rcl reads an empty YAML
    list as unset or as an empty byte array); a tuple is a list. Nothing else is converted, so a
    value of the wrong type reaches :func:`validate` as it came."""
    spec = NODES[node].by_name.get(name)
    if spec is None or spec.type_name != 'string[]':
        return value
    if value is None or (isinstance(value, (bytes, bytearray)) and not value):
        return []
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        return value
    if not isinstance(value, str) and hasattr(value, '__len__') and len(value) == 0:
        return []
    return value


def validate(name: str, value: Any, node: str = NODE_NAME) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name`` of ``node`` (None when it is).

    Checks the type, the range and the choices, plus the rules rclpy cannot express (device
    syntax, vocabulary words). Cross-parameter rules are in :func:`validate_together`. Never
    raises, whatever ``value`` is.
    """
    spec = NODES[node].by_name.get(name)
    if spec is None:
        return None     # not ours (use_sim_time, qos overrides ...)
    reason = _type_problem(spec, value)
    if reason:
        return reason
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f'{name}={value} is outside [{spec.range[0]}, {spec.range[1]}]'
    if spec.choices is not None and value not in spec.choices:
        return f'{name}={value!r} is not one of {spec.choice_list}'
    if node == NODE_NAME and name == 'device':
        return check_device(value)
    if spec.type_name == 'string[]':
        return validate_vocabulary(value)
    return None


def _type_problem(spec: ParamSpec, value: Any) -> str | None:
    name, kind = spec.name, spec.type_name
    shown = f'{value!r} ({type(value).__name__})'
    if kind == 'bool' and not isinstance(value, bool):
        return f'{name} must be true or false, got {shown}'
    if kind == 'int' and (isinstance(value, bool) or not isinstance(value, int)):
        return f'{name} must be an integer, got {shown}'
    if kind == 'double':
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f'{name} must be a number, got {shown}'
        if isinstance(value, int):
            return f'{name} has type int, it must be a double (write {value}.0)'
        if not math.isfinite(value):
            return f'{name} must be finite, got {value!r}'
    if kind == 'string' and not isinstance(value, str):
        return f'{name} must be a string, got {shown}'
    if kind == 'string | int' and (isinstance(value, bool) or not isinstance(value, (str, int))):
        return f'{name} must be a string or an integer, got {shown}'
    if kind == 'string[]' and not isinstance(value, list):
        return f'{name} must be a list of words, e.g. ["dog", "car horn"], got {shown}'
    return None


def validate_vocabulary(words: Any) -> str | None:
    """Why ``words`` is not a usable vocabulary (None when it is; [] means the default)."""
    if not isinstance(words, (list, tuple)):
        return f'vocabulary must be a list of words, got {words!r}'
    words = list(words)
    bad = [w for w in words if not isinstance(w, str) or not w.strip()]
    if bad:
        return f'vocabulary words must be non-empty strings, got {bad[:5]!r}'
    if len(words) > MAX_VOCABULARY:
        return f'vocabulary has {len(words)} words, more than {MAX_VOCABULARY}'
    long = [w for w in words if len(w) > MAX_WORD_LENGTH]
    if long:
        return f'vocabulary words must be at most {MAX_WORD_LENGTH} characters, got {long[0][:40]!r}...'
    seen: set[str] = set()
    duplicates = sorted({w for w in words if w in seen or seen.add(w)})
    if duplicates:
        return f'vocabulary has duplicate words: {duplicates[:5]}'
    if len(words) == 1:
        return 'vocabulary needs at least 2 words (the label is a choice among them)'
    return None


def validate_all(values: dict[str, Any], node: str = NODE_NAME) -> str | None:
    """The first problem among ``values`` (each, then together for taco_node); None if none."""
    for name, value in values.items():
        reason = validate(name, value, node)
        if reason:
            return reason
    return validate_together(values) if node == NODE_NAME else None


def validate_together(values: dict[str, Any]) -> str | None:
    """Rules that tie taco_node's parameters together; ``values`` holds every effective value."""
    if values['latency_error'] < values['latency_warn']:
        return (f"latency_error ({values['latency_error']}) must be >= latency_warn "
                f"({values['latency_warn']})")
    if values['depth_max'] <= values['depth_min']:
        return f"depth_max ({values['depth_max']}) must be above depth_min ({values['depth_min']})"
    context = CLAP_CONTEXT_SEC if values['audio_context'] == 'history' else 0.0
    needed = values['window_sec'] + context + 1.0
    if values['buffer_sec'] < needed:
        return (f"buffer_sec ({values['buffer_sec']}) must hold window_sec + the audio context + 1 s "
                f"= {needed}")
    return None


# -------------------------------------------------------------------------------------- ROS glue
def qos_profile(name: str, depth: int) -> Any:
    """rclpy QoSProfile for a QoS parameter value."""
    from rclpy.qos import (
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
        qos_profile_system_default,
    )

    if name == 'sensor_data':
        profile = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability)
    elif name == 'reliable':
        profile = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
    elif name == 'best_effort':
        profile = QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT)
    elif name == 'system_default':
        profile = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth,
            reliability=qos_profile_system_default.reliability,
            durability=qos_profile_system_default.durability)
    else:
        raise ValueError(f'unknown QoS profile {name!r}; expected one of {QOS_PROFILES}')
    return profile


def pipeline_config(values: dict[str, Any], *, keep_text_encoders: bool = True) -> Any:
    """The PipelineConfig that taco_node's parameter values describe: the one mapping, used by the
    node and by offline replay (which never changes the vocabulary, so it may drop the text encoders)."""
    from taco_ros.core.contract import PipelineConfig

    steps = int(values['solver_max_steps'])
    return PipelineConfig(
        model_config=values['model_config'], model_dir=values['model_dir'] or None,
        device=values['device'], precision=values['precision'], mode=values['mode'],
        anchors=values['anchors'] or None, vocabulary=list(values['vocabulary']) or None,
        solver_profile=values['solver_profile'],
        solver_overrides={'max_steps': steps} if steps > 0 else {},
        mask_threshold=values['mask_threshold'], min_component_area=values['min_component_area'],
        top_k=values['top_k'], max_objects=values['max_objects'],
        audio_context=values['audio_context'], resize=values['resize'],
        allow_random_weights=values['allow_random_weights'], seed=values['seed'],
        silence_rms=values['silence_rms'], solver_threads=values['solver_threads'],
        keep_text_encoders=keep_text_encoders)
