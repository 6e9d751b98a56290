"""launch/taco.launch.py: declarative, everything it names is installed, every parameter it sets is
declared by its node, and the command lines it implies start the nodes.

launch/launch_ros are not installable here (platform.md): the file runs against recording stand-ins
of the launch API (bringup_fixtures.LAUNCH_API) and the stand-ins' substitutions are evaluated the
way ``ros2 launch`` evaluates them. Where launch_ros is importable the real one builds it too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from bringup_fixtures import (
    LAUNCH_FILE,
    LIB_DIR,
    REPO,
    SHARE_DIR,
    LaunchResolver,
    isolate_dds,
    load_launch_description,
    ros_session,
    spin_until,
    stop_process,
)

from taco_ros import bags, params

MIC_SOURCE = REPO / 'taco_ros' / 'taco_ros' / 'mic_node.py'
BUILT_IN = {'use_sim_time'}      # declared by every rclpy node


def declared_mic_parameters() -> dict[str, Any]:
    """{name: default} of mic_node's parameters (it declares them from this table)."""
    return params.defaults(params.MIC_NODE_NAME)


@pytest.fixture(scope='module')
def description() -> Any:
    return load_launch_description()


def _node(resolver: LaunchResolver, executable: str) -> Any:
    (node,) = [n for n in resolver.nodes() if n.kwargs['executable'] == executable]
    return node


def _require_installed(path: Path) -> None:
    assert path.exists(), (f'{path} is not installed: run scripts/setup.sh (make setup), which '
                           'rebuilds the workspace when launch/ or config/ files change')


def test_launch_file_is_declarative() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {'Expr', 'ImportFrom', 'Assign', 'FunctionDef'}, kinds
    modules = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert modules <= {'launch', 'launch.actions', 'launch.conditions', 'launch.substitutions',
                       'launch_ros.actions', 'launch_ros.parameter_descriptions',
                       'launch_ros.substitutions'}
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions == ['generate_launch_description']


def test_every_argument_is_declared_described_and_used(description: Any) -> None:
    resolver = LaunchResolver(description)
    for node in resolver.nodes():
        resolver.enabled(node)
        resolver.command(node)
    assert set(resolver.declared) == resolver.used
    for entity in resolver.entities:
        if type(entity).__name__ == 'DeclareLaunchArgument':
            assert len(entity.kwargs['description']) > 10, entity.args[0]
    assert {'camera_topic', 'audio_topic', 'image_transport', 'image_qos', 'audio_qos', 'device',
            'model_dir', 'use_mic', 'rviz', 'namespace'} <= set(resolver.declared)


def test_executables_and_files_exist_in_the_installed_package(description: Any) -> None:
    resolver = LaunchResolver(description)
    packages = {n.kwargs['package'] for n in resolver.nodes()}
    assert packages == {'taco_ros', 'rviz2'}
    for node in resolver.nodes():
        if node.kwargs['package'] != 'taco_ros':
            continue      # rviz2 comes with a desktop ROS install, not with this package
        executable = LIB_DIR / node.kwargs['executable']
        assert executable.is_file() and os.access(executable, os.X_OK), executable
        files, _ = resolver.parameters(node)
        assert files, f'{node.kwargs["executable"]} gets no parameter file'
        for file in files:
            _require_installed(Path(file))
    rviz = _node(resolver, 'rviz2')
    arguments = [str(resolver.value(a)) for a in rviz.kwargs['arguments']]
    assert arguments[0] == '-d'
    _require_installed(Path(arguments[1]))
    _require_installed(SHARE_DIR / 'launch' / 'taco.launch.py')
    assert (SHARE_DIR / 'launch' / 'taco.launch.py').read_text() == LAUNCH_FILE.read_text()


def test_parameter_files_only_hold_declared_parameters(description: Any) -> None:
    resolver = LaunchResolver(description)
    taco_files, _ = resolver.parameters(_node(resolver, 'taco_node'))
    mic_files, _ = resolver.parameters(_node(resolver, 'mic_node'))
    for file in taco_files:
        _require_installed(Path(file))
        values = yaml.safe_load(Path(file).read_text())['/**']['ros__parameters']
        assert set(values) <= set(params.PARAMETERS_BY_NAME) | BUILT_IN
        for name, value in values.items():
            assert params.validate(name, value) is None, (name, value)
    mic = declared_mic_parameters()
    for file in mic_files:
        _require_installed(Path(file))
        values = yaml.safe_load(Path(file).read_text())['/**']['ros__parameters']
        assert values == mic, 'config/mic.yaml must list mic_node defaults'


@pytest.mark.parametrize('overrides', [
    {},
    {'image_transport': 'compressed', 'image_qos': 'reliable', 'device': 'cuda:1',
     'model_dir': '/opt/models', 'allow_random_weights': 'true', 'use_sim_time': 'true'},
])
def test_node_parameters_set_by_the_launch_are_declared_and_valid(
        description: Any, overrides: dict[str, str]) -> None:
    resolver = LaunchResolver(description, overrides)
    _, taco = resolver.parameters(_node(resolver, 'taco_node'))
    assert set(taco) <= set(params.PARAMETERS_BY_NAME) | BUILT_IN
    for name, value in taco.items():
        assert params.validate(name, value) is None, (name, value)
    assert taco['autostart'] is True
    for name, text in overrides.items():
        if name in taco:
            assert str(taco[name]).lower() == text
    _, mic = resolver.parameters(_node(resolver, 'mic_node'))
    assert set(mic) <= set(declared_mic_parameters()) | BUILT_IN


def test_remappings_connect_the_default_bag_and_microphone(description: Any) -> None:
    resolver = LaunchResolver(description)
    remaps = resolver.remappings(_node(resolver, 'taco_node'))
    assert remaps == {params.TOPIC_IMAGE: bags.IMAGE_TOPIC,
                      params.TOPIC_IMAGE_COMPRESSED: bags.IMAGE_TOPIC + '/compressed',
                      params.TOPIC_AUDIO: bags.AUDIO_TOPIC}
    mic_remaps = resolver.remappings(_node(resolver, 'mic_node'))
    assert mic_remaps == {declared_mic_parameters()['topic']: bags.AUDIO_TOPIC}
    moved = LaunchResolver(description, {'camera_topic': '/head/rgb', 'audio_topic': '/head/mic'})
    assert moved.remappings(_node(moved, 'taco_node'))['image/compressed'] == '/head/rgb/compressed'
    assert moved.remappings(_node(moved, 'mic_node')) == {'audio': '/head/mic'}


def test_optional_nodes_follow_their_switches(description: Any) -> None:
    default = LaunchResolver(description)
    assert [default.enabled(n) for n in default.nodes()] == [True, False, False]
    both = LaunchResolver(description, {'use_mic': 'true', 'rviz': 'True'})
    assert [both.enabled(n) for n in both.nodes()] == [True, True, True]
    assert type(_node(default, 'taco_node')).__name__ == 'LifecycleNode'


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='launch_ros is not installable from PyPI (platform.md)')
def test_launch_ros_builds_the_description() -> None:
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location('taco_launch_real', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = module.generate_launch_description()
    names = [e.name for e in real.entities if isinstance(e, DeclareLaunchArgument)]
    assert names == [name for name, _, _ in module.ARGUMENTS]


@pytest.mark.ros
def test_mic_node_starts_from_the_launch_command_line(description: Any, tmp_path: Path) -> None:
    """What `ros2 launch ... use_mic:=true` runs: params file + overrides + remaps are accepted."""
    _require_installed(SHARE_DIR / 'config' / 'mic.yaml')
    resolver = LaunchResolver(description, {'use_mic': 'true', 'mic_device': 'no-such-mic',
                                            'namespace': 'robot1', 'audio_topic': '/robot1/mic'})
    command = resolver.command(_node(resolver, 'mic_node'))
    env = dict(os.environ, **isolate_dds(), HOME=str(tmp_path))   # no ~/.asoundrc devices
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        with ros_session('launch_test_probe') as (_, node, executor):
            from diagnostic_msgs.msg import DiagnosticArray
            statuses: list = []
            node.create_subscription(DiagnosticArray, '/diagnostics',
                                     lambda m: statuses.extend(m.status), 10)
            assert spin_until(executor, lambda: bool(statuses), 30), 'mic_node did not come up'
            publishers = node.get_publishers_info_by_topic('/robot1/mic')
            assert [(p.node_name, p.node_namespace) for p in publishers] == [('mic_node', '/robot1')]
            assert 'no-such-mic' in statuses[-1].message
            assert process.poll() is None
    finally:
        stop_process(process)
    assert process.returncode == 0, process.stdout.read()


@pytest.mark.ros
@pytest.mark.skipif(not (LIB_DIR / 'taco_node').is_file(), reason='taco_node is not installed')
def test_taco_node_starts_from_the_launch_command_line(description: Any, tmp_path: Path) -> None:
    """What `ros2 launch taco_ros taco.launch.py namespace:=robot1 ...` runs for taco_node comes up
    under its namespace, subscribed to the remapped inputs, with label_info latched."""
    from node_fixtures import small_model_config
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from taco_msgs.msg import AudioChunk, LabelInfo
    resolver = LaunchResolver(description, {
        'namespace': 'robot1', 'camera_topic': '/robot1/camera/color/image_raw',
        'audio_topic': '/robot1/audio', 'device': 'cpu', 'allow_random_weights': 'true',
        'model_config': str(small_model_config(tmp_path / 'models'))})
    command = resolver.command(_node(resolver, 'taco_node'))
    env = dict(os.environ, **isolate_dds(), XDG_CACHE_HOME=str(tmp_path / 'cache'))
    env.pop('TACO_MODEL_DIR', None)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        with ros_session('launch_test_taco_probe') as (_, node, executor):
            infos: list = []
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            node.create_subscription(LabelInfo, '/robot1/taco_node/label_info', infos.append,
                                     latched)

            def up() -> bool:
                assert process.poll() is None, process.stdout.read()
                return bool(infos)
            # audio_msg_type auto: taco_node subscribes once a publisher shows the audio type.
            node.create_publisher(AudioChunk, '/robot1/audio', 10)
            assert spin_until(executor, up, 120), 'taco_node published no label_info'
            for topic in ('/robot1/camera/color/image_raw', '/robot1/audio'):
                def subscribed(topic: str = topic) -> bool:
                    found = node.get_subscriptions_info_by_topic(topic)
                    return [(s.node_name, s.node_namespace) for s in found] == [
                        ('taco_node', '/robot1')]
                assert spin_until(executor, subscribed, 20), f'taco_node is not on {topic}'
            assert len(infos[0].class_map) == 527      # the default AudioSet vocabulary
    finally:
        stop_process(process)
    assert process.returncode == 0, process.stdout.read()
