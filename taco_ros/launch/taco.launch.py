"""Bring up taco_node (sound-prompted segmentation), optionally a microphone and RViz.

    ros2 launch taco_ros taco.launch.py camera_topic:=/camera/color/image_raw audio_topic:=/audio
    ros2 launch taco_ros taco.launch.py use_mic:=true mic_device:=ReSpeaker rviz:=true
    ros2 launch taco_ros taco.launch.py image_transport:=compressed device:=cuda:0

taco_node reads config/taco.yaml (or params_file:=...), then the launch arguments below, which win
over the file. It configures and activates itself (autostart); its outputs are
<namespace>/taco_node/{mask, objects, audio_activation, debug_image, label_info} and /diagnostics.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# name, default, description
ARGUMENTS = [
    ('namespace', '', 'Namespace of every node started here.'),
    ('params_file', PathJoinSubstitution([FindPackageShare('taco_ros'), 'config', 'taco.yaml']),
     'taco_node parameter file.'),
    ('camera_topic', '/camera/image_raw',
     'Camera image topic (sensor_msgs/Image); with image_transport:=compressed, '
     '<camera_topic>/compressed is used.'),
    ('audio_topic', '/audio', 'Audio topic (taco_msgs/AudioChunk or another supported type).'),
    ('image_transport', 'raw', 'raw or compressed.'),
    ('image_qos', 'sensor_data', 'Camera subscription QoS: sensor_data, reliable, best_effort, '
     'system_default.'),
    ('audio_qos', 'sensor_data', 'Audio subscription QoS (same choices).'),
    ('device', 'auto', 'Torch device: auto, cpu, cuda or cuda:N.'),
    ('model_config', 'taco_convnext_large', 'Model configuration name or JSON path.'),
    ('model_dir', '', 'Directory searched first for model files ("" = TACO_MODEL_DIR, '
     '~/.cache/taco_ros/models).'),
    ('allow_random_weights', 'false',
     'Run with random weights when model files are missing (tests only: meaningless masks).'),
    ('use_sim_time', 'false', 'Use /clock (e.g. taco-ros bag play --clock).'),
    ('use_mic', 'false', 'Also start mic_node publishing on audio_topic.'),
    ('mic_device', '', 'mic_node input device: "" default, an index, or part of its name.'),
    ('mic_params_file', PathJoinSubstitution([FindPackageShare('taco_ros'), 'config', 'mic.yaml']),
     'mic_node parameter file.'),
    ('rviz', 'false', 'Start rviz2 with config/taco.rviz (debug overlay and mask).'),
]


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    use_sim_time = ParameterValue(arg('use_sim_time'), value_type=bool)

    taco_node = LifecycleNode(
        package='taco_ros', executable='taco_node', name='taco_node', namespace=arg('namespace'),
        output='screen', emulate_tty=True,
        parameters=[arg('params_file'), {
            'image_transport': ParameterValue(arg('image_transport'), value_type=str),
            'image_qos': ParameterValue(arg('image_qos'), value_type=str),
            'audio_qos': ParameterValue(arg('audio_qos'), value_type=str),
            'device': ParameterValue(arg('device'), value_type=str),
            'model_config': ParameterValue(arg('model_config'), value_type=str),
            'model_dir': ParameterValue(arg('model_dir'), value_type=str),
            'allow_random_weights': ParameterValue(arg('allow_random_weights'), value_type=bool),
            'autostart': True,
            'use_sim_time': use_sim_time,
        }],
        remappings=[
            ('image', arg('camera_topic')),
            ('image/compressed', [arg('camera_topic'), '/compressed']),
            ('audio', arg('audio_topic')),
        ],
    )

    mic_node = Node(
        package='taco_ros', executable='mic_node', name='mic_node', namespace=arg('namespace'),
        output='screen', condition=IfCondition(arg('use_mic')),
        parameters=[arg('mic_params_file'), {
            'device': ParameterValue(arg('mic_device'), value_type=str),
            'use_sim_time': use_sim_time,
        }],
        remappings=[('audio', arg('audio_topic'))],
    )

    rviz = Node(
        package='rviz2', executable='rviz2', name='rviz2', namespace=arg('namespace'),
        arguments=['-d', PathJoinSubstitution([FindPackageShare('taco_ros'), 'config', 'taco.rviz'])],
        parameters=[{'use_sim_time': use_sim_time}],
        condition=IfCondition(arg('rviz')),
    )

    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, default, description in ARGUMENTS]
    return LaunchDescription([*declared, taco_node, mic_node, rviz])
