"""Bring up taco_node (sound-prompted segmentation), optionally a microphone and RViz.

    ros2 launch taco_ros taco.launch.py camera_topic:=/camera/color/image_raw audio_topic:=/audio
    ros2 launch taco_ros taco.launch.py use_mic:=true mic_device:=ReSpeaker rviz:=true
    ros2 launch taco_ros taco.launch.py namespace:=robot1 params_file:=my.yaml autostart:=false

The parameter files are the source of truth: taco_node reads params_file (default config/taco.yaml),
mic_node reads mic_params_file. A launch argument that maps to a parameter (device, image_qos,
autostart, ...) defaults to "" and overrides the file only when it is set. Key your own files with
``/**:`` so that they apply under any namespace and node name.

Fast DDS gives each process 512 KB of shared memory to send through, too little for raw camera
frames: the nodes started here get config/fastdds_large_data.xml (32 MB) unless
FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3) or FASTRTPS_DEFAULT_PROFILES_FILE (Fast DDS 2) is set or
fastdds_profile says otherwise. Give the camera driver the
same profile: it is the sender's memory that counts.

Topic arguments are remapping targets: relative names (the defaults) resolve inside ``namespace``,
absolute ones (``/camera/...``) reach outside it. Outputs are <namespace>/<node_name>/{mask, objects,
audio_activation, debug_image, label_info}, plus /diagnostics.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from taco_ros.dds_profile import PROFILE_FILE, inherited_profile, profile_variable

FROM_FILE = 'default: the value in the parameter file.'

# name, default, description
ARGUMENTS = [
    ('namespace', '', 'Namespace of every node started here (two robots or cameras: one each).'),
    ('node_name', 'taco_node', 'Name of the taco_node instance.'),
    ('params_file', PathJoinSubstitution([FindPackageShare('taco_ros'), 'config', 'taco.yaml']),
     'taco_node parameter file (keys /**: or /<namespace>/<node_name>:).'),
    ('camera_topic', 'camera/image_raw',
     'Camera image topic (sensor_msgs/Image); with image_transport compressed, '
     '<camera_topic>/compressed is used.'),
    ('camera_info_topic', '',
     'sensor_msgs/CameraInfo of the camera, republished with each window\'s frame. Empty: '
     'camera_info beside camera_topic (image_transport\'s convention: camera/image_raw -> '
     'camera/camera_info).'),
    ('use_depth', '', f'true: place each object in 3D from depth_topic; {FROM_FILE}'),
    ('depth_topic', 'camera/aligned_depth_to_color/image_raw',
     'Depth image aligned to the camera (16UC1 mm or 32FC1 m), read when use_depth is true.'),
    ('depth_camera_info_topic', '',
     'CameraInfo of the depth image. Empty: camera_info beside depth_topic.'),
    ('audio_topic', 'audio', 'Audio topic (taco_msgs/AudioChunk or another supported type); '
     'mic_node publishes here.'),
    ('audio_info_topic', 'audio_info',
     'audio_common_msgs/AudioInfo topic (only for ros-drivers AudioData streams).'),
    ('image_transport', '', f'raw or compressed; {FROM_FILE}'),
    ('image_qos', '', f'Camera subscription QoS: sensor_data, reliable, best_effort, '
     f'system_default; {FROM_FILE}'),
    ('audio_qos', '', f'Audio subscription QoS (same choices); {FROM_FILE}'),
    ('device', '', f'Torch device: auto, cpu, cuda or cuda:N; {FROM_FILE}'),
    ('model_config', '', f'Model configuration name or JSON path; {FROM_FILE}'),
    ('model_dir', '', f'Directory searched first for model files; {FROM_FILE}'),
    ('allow_random_weights', '',
     f'true: run with random weights when model files are missing (tests only); {FROM_FILE}'),
    ('autostart', '', 'true: taco_node configures and activates itself; false: it waits in '
     f'unconfigured for a lifecycle manager; {FROM_FILE}'),
    ('use_sim_time', '', 'true: taco_node and RViz run on /clock (bag replay with --clock); '
     f'mic_node keeps stamping with the system clock; {FROM_FILE}'),
    ('log_level', 'info', 'Log level of the nodes started here: debug, info, warn, error, fatal.'),
    ('use_mic', 'false', 'Also start mic_node publishing on audio_topic.'),
    ('mic_device', '', f'mic_node input device: an index or part of its name; {FROM_FILE}'),
    ('mic_params_file', PathJoinSubstitution([FindPackageShare('taco_ros'), 'config', 'mic.yaml']),
     'mic_node parameter file.'),
    ('rviz', 'false', 'Start rviz2 with config/taco.rviz (debug overlay and mask of this instance).'),
    ('fastdds_profile', '',
     'Fast DDS XML profile of the nodes started here (rmw_fastrtps_cpp). Empty: the one in '
     '$FASTDDS_DEFAULT_PROFILES_FILE or $FASTRTPS_DEFAULT_PROFILES_FILE when set, else '
     'config/fastdds_large_data.xml (32 MB of shared memory, so raw frames and debug images reach '
     'other processes on this machine); none: leave the environment as it is; or a file path.'),
]

# launch argument -> (parameter, type) of the node it overrides when set
TACO_OVERRIDES = {
    'image_transport': ('image_transport', str),
    'image_qos': ('image_qos', str),
    'audio_qos': ('audio_qos', str),
    'device': ('device', str),
    'model_config': ('model_config', str),
    'model_dir': ('model_dir', str),
    'allow_random_weights': ('allow_random_weights', bool),
    'autostart': ('autostart', bool),
    'use_sim_time': ('use_sim_time', bool),
    'use_depth': ('use_depth', bool),
}
MIC_OVERRIDES = {'mic_device': ('device', str)}
RVIZ_OVERRIDES = {'use_sim_time': ('use_sim_time', bool)}
# Topics of taco.rviz, relative to the launch namespace.
RVIZ_TOPICS = ('debug_image', 'mask', 'markers')


def switch(arguments: dict, name: str) -> bool:
    """A true/false launch argument (launch's IfCondition spelling: true, false, 1, 0)."""
    text = arguments[name].strip().lower()
    if text not in ('true', 'false', '1', '0'):
        raise ValueError(f'launch argument {name} must be true or false, got {arguments[name]!r}')
    return text in ('true', '1')


def overrides(arguments: dict, table: dict) -> dict:
    """{parameter: value} of the launch arguments in ``table`` that the user set."""
    chosen = {}
    for argument, (parameter, kind) in table.items():
        text = arguments[argument]
        if text == '':
            continue
        if kind is bool:
            chosen[parameter] = switch(arguments, argument)
        else:
            chosen[parameter] = ParameterValue(text, value_type=str)
    return chosen


def camera_info_beside(image_topic: str) -> str:
    """image_transport's convention: the calibration of <prefix>/image_raw is <prefix>/camera_info."""
    prefix, slash, _ = image_topic.rstrip('/').rpartition('/')
    return f'{prefix}{slash}camera_info'


def dds_environment(context) -> dict:
    """The environment variables that give the nodes their Fast DDS profile (empty: none set)."""
    choice = context.launch_configurations['fastdds_profile'].strip()
    if choice == 'none' or (choice == '' and inherited_profile(context.environment)):
        return {}
    if choice == '':
        choice = PathJoinSubstitution([FindPackageShare('taco_ros'), 'config', PROFILE_FILE])
    return {profile_variable(context.environment.get('ROS_DISTRO', '')): choice}


def launch_setup(context) -> list:
    arguments = context.launch_configurations
    namespace, name = arguments['namespace'], arguments['node_name']
    log_level = ['--log-level', arguments['log_level']]
    camera, depth = arguments['camera_topic'], arguments['depth_topic']
    env = dds_environment(context)
    actions = [LifecycleNode(
        package='taco_ros', executable='taco_node', name=name, namespace=namespace,
        output='screen', emulate_tty=True, ros_arguments=log_level, additional_env=env,
        parameters=[arguments['params_file'], overrides(arguments, TACO_OVERRIDES)],
        remappings=[('image', camera), ('image/compressed', camera + '/compressed'),
                    ('camera_info', arguments['camera_info_topic'] or camera_info_beside(camera)),
                    ('depth', depth),
                    ('depth_camera_info',
                     arguments['depth_camera_info_topic'] or camera_info_beside(depth)),
                    ('audio', arguments['audio_topic']),
                    ('audio_info', arguments['audio_info_topic'])],
    )]
    if switch(arguments, 'use_mic'):
        # No use_sim_time here: a live microphone is stamped on the system clock whatever /clock says.
        actions.append(Node(
            package='taco_ros', executable='mic_node', name='mic_node', namespace=namespace,
            output='screen', ros_arguments=log_level, additional_env=env,
            parameters=[arguments['mic_params_file'], overrides(arguments, MIC_OVERRIDES)],
            remappings=[('audio', arguments['audio_topic'])],
        ))
    if switch(arguments, 'rviz'):
        actions.append(Node(
            package='rviz2', executable='rviz2', name='rviz2', namespace=namespace, additional_env=env,
            arguments=['-d', PathJoinSubstitution([FindPackageShare('taco_ros'), 'config',
                                                   'taco.rviz'])],
            parameters=[overrides(arguments, RVIZ_OVERRIDES)],
            remappings=[(f'taco_node/{topic}', f'{name}/{topic}') for topic in RVIZ_TOPICS],
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, default, description in ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=launch_setup)])
