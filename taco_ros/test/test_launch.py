"""launch/taco.launch.py: it uses only the launch API, everything it names is installed, the parameter
files are the source of truth (a launch argument overrides only when set), names follow the namespace,
and the command lines it implies start the nodes.

launch/launch_ros are not installable here (platform.md): the file runs against recording stand-ins
(launch_fixtures) whose resolver builds the command lines as launch_ros does. Where launch_ros is
importable, the real one builds them too and both must agree.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bringup_fixtures import isolate_dds, ros_session, spin_until, stop_process
from launch_fixtures import (
    LAUNCH_API,
    LAUNCH_FILE,
    LIB_DIR,
    REPO,
    SHARE_DIR,
    LaunchResolver,
    load_launch_description,
)

from taco_ros import bags, params

RVIZ_FILE = REPO / 'taco_ros' / 'config' / 'taco.rviz'
BUILT_IN = {'use_sim_time'}      # declared by every rclpy node
NEW_ARGUMENTS = {'autostart', 'audio_info_topic', 'node_name', 'log_level', 'camera_info_topic',
                 'use_depth', 'depth_topic', 'depth_camera_info_topic'}
ALL_NODES = {'use_mic': 'true', 'rviz': 'true'}
INPUTS = (params.TOPIC_IMAGE, params.TOPIC_IMAGE_COMPRESSED, params.TOPIC_CAMERA_INFO, params.TOPIC_DEPTH,
          params.TOPIC_DEPTH_CAMERA_INFO, params.TOPIC_AUDIO, params.TOPIC_AUDIO_INFO)


def declared_mic_parameters() -> dict[str, Any]:
    """{name: default} of mic_node's parameters (it declares them from this table)."""
    return params.defaults(params.MIC_NODE_NAME)


def file_parameters(path: Path) -> dict[str, Any]:
    """The ros__parameters of a parameter file keyed for any node under any namespace."""
    content = yaml.safe_load(path.read_text())
    assert set(content) == {'/**'}, (
        f'{path.name} must be keyed /**: so that it applies under any namespace and node name, '
        f'found {sorted(content)}')
    return content['/**']['ros__parameters']


def expand(name: str, namespace: str, node: str) -> str:
    """rcl's expansion of a topic name for a node (absolute, ~ private, else relative)."""
    namespace = '/' + namespace.strip('/')
    if name.startswith('/'):
        return name
    if name.startswith('~'):
        return f'{namespace.rstrip("/")}/{node}{name[1:]}'
    return f'{namespace.rstrip("/")}/{name}'


def remapped(name: str, remaps: dict[str, str], namespace: str, node: str) -> str:
    """A node's topic after its remapping rules (first matching rule wins, as in rcl)."""
    full = expand(name, namespace, node)
    for source, target in remaps.items():
        if expand(source, namespace, node) == full:
            return expand(target, namespace, node)
    return full


@pytest.fixture(scope='module')
def description() -> Any:
    return load_launch_description()


def _require_installed(path: Path) -> None:
    assert path.exists(), (f'{path} is not installed: run scripts/setup.sh (make setup), which '
                           'rebuilds the workspace when launch/ or config/ files change')


# ------------------------------------------------------------------------------------ structure
LIGHT_MODULE = 'taco_ros.dds_profile'


def test_launch_file_uses_only_the_launch_api() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {'Expr', 'ImportFrom', 'Assign', 'FunctionDef'}, kinds
    modules = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert modules <= set(LAUNCH_API) | {LIGHT_MODULE}
    # The one project module it uses must stay cheap to import where launch runs: no rclpy, no torch.
    loaded = subprocess.run(
        [sys.executable, '-c', f'import sys, {LIGHT_MODULE}; '
         'print(sorted({"rclpy", "torch", "numpy", "taco_ros.core"} & set(sys.modules)))'],
        capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == '[]', loaded
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions[-1] == 'generate_launch_description' and 'launch_setup' in functions


def test_every_argument_is_declared_described_and_used(description: Any) -> None:
    resolver = LaunchResolver(description, ALL_NODES)
    for node in resolver.nodes():
        resolver.command(node)
    assert set(resolver.declared) == resolver.used
    for entity in resolver.entities:
        if type(entity).__name__ == 'DeclareLaunchArgument':
            assert len(entity.kwargs['description']) > 10, entity.args[0]
    assert {'camera_topic', 'audio_topic', 'image_transport', 'image_qos', 'audio_qos', 'device',
            'model_dir', 'use_mic', 'rviz', 'namespace', *NEW_ARGUMENTS} <= set(resolver.declared)


def test_executables_and_files_exist_in_the_installed_package(description: Any) -> None:
    resolver = LaunchResolver(description, ALL_NODES)
    assert {n.kwargs['package'] for n in resolver.nodes()} == {'taco_ros', 'rviz2'}
    for node in resolver.nodes():
        if node.kwargs['package'] != 'taco_ros':
            continue      # rviz2 comes with a desktop ROS install, not with this package
        executable = LIB_DIR / node.kwargs['executable']
        assert executable.is_file() and os.access(executable, os.X_OK), executable
        files, _ = resolver.parameters(node)
        assert files, f'{node.kwargs["executable"]} gets no parameter file'
        for file in files:
            _require_installed(Path(file))
    arguments = [str(resolver.value(a)) for a in resolver.node('rviz2').kwargs['arguments']]
    assert arguments[0] == '-d'
    _require_installed(Path(arguments[1]))
    _require_installed(SHARE_DIR / 'launch' / 'taco.launch.py')
    assert (SHARE_DIR / 'launch' / 'taco.launch.py').read_text() == LAUNCH_FILE.read_text()


def test_parameter_files_apply_anywhere_and_hold_declared_parameters(description: Any) -> None:
    resolver = LaunchResolver(description, ALL_NODES)
    (taco_file,) = resolver.parameters(resolver.node('taco_node'))[0]
    _require_installed(Path(taco_file))
    for name, value in file_parameters(Path(taco_file)).items():
        assert name in params.PARAMETERS_BY_NAME or name in BUILT_IN, name
        assert params.validate(name, value) is None, (name, value)
    (mic_file,) = resolver.parameters(resolver.node('mic_node'))[0]
    _require_installed(Path(mic_file))
    assert file_parameters(Path(mic_file)) == declared_mic_parameters(), \
        'config/mic.yaml must list mic_node defaults'


# ------------------------------------------------------------------ the file is the source of truth
def test_unset_arguments_leave_every_parameter_to_the_files(description: Any) -> None:
    resolver = LaunchResolver(description, ALL_NODES)
    for node in resolver.nodes():
        _, values = resolver.parameters(node)
        assert values == {}, f'{node.kwargs["executable"]} gets {values} although no argument is set'


# argument -> a value that differs from the parameter's default
SET_ARGUMENTS = {
    'image_transport': 'compressed', 'image_qos': 'reliable', 'audio_qos': 'best_effort',
    'device': 'cuda:1', 'model_config': 'taco_tiny', 'model_dir': '/opt/models',
    'allow_random_weights': 'true', 'autostart': 'false', 'use_sim_time': 'true',
}


@pytest.mark.parametrize('argument', sorted(SET_ARGUMENTS))
def test_a_set_argument_overrides_only_its_parameter(description: Any, argument: str) -> None:
    text = SET_ARGUMENTS[argument]
    resolver = LaunchResolver(description, {argument: text})
    _, values = resolver.parameters(resolver.node('taco_node'))
    expected = yaml.safe_load(text) if text in ('true', 'false') else text
    assert values == {argument: expected}
    assert params.validate(argument, expected) is None
    if argument in params.PARAMETERS_BY_NAME:
        assert params.PARAMETERS_BY_NAME[argument].default != expected


def test_mic_node_gets_only_the_arguments_meant_for_it(description: Any) -> None:
    resolver = LaunchResolver(description, {**ALL_NODES, 'mic_device': 'ReSpeaker',
                                            'use_sim_time': 'true', 'device': 'cpu'})
    _, values = resolver.parameters(resolver.node('mic_node'))
    # use_sim_time would stamp a live microphone on /clock: it is for taco_node and RViz only.
    assert values == {'device': 'ReSpeaker'}
    assert set(values) <= set(declared_mic_parameters())
    assert resolver.parameters(resolver.node('taco_node'))[1] == {'device': 'cpu', 'use_sim_time': True}
    assert resolver.parameters(resolver.node('rviz2'))[1] == {'use_sim_time': True}


def test_set_parameters_are_a_params_file_after_the_users_file(description: Any) -> None:
    resolver = LaunchResolver(description, {'namespace': 'robot1', 'device': 'cpu', 'autostart': 'false'})
    command = resolver.command(resolver.node('taco_node'))
    files = [command[i + 1] for i, arg in enumerate(command) if arg == '--params-file']
    assert len(files) == 2 and files[0] == str(SHARE_DIR / 'config' / 'taco.yaml')
    assert yaml.safe_load(Path(files[1]).read_text()) == {
        '/robot1/taco_node': {'ros__parameters': {'device': 'cpu', 'autostart': False}}}


@pytest.mark.parametrize('text', ['yes', 'maybe', ''])
def test_switches_refuse_other_words(description: Any, text: str) -> None:
    with pytest.raises(ValueError, match='true or false'):
        LaunchResolver(description, {'use_mic': text}).nodes()
    if text:
        with pytest.raises(ValueError, match='true or false'):
            LaunchResolver(description, {'autostart': text}).nodes()


# ------------------------------------------------------------------------------------ names
def test_topics_follow_the_namespace_unless_absolute(description: Any) -> None:
    default = LaunchResolver(description, ALL_NODES)
    taco = default.node('taco_node')
    resolved = {name: remapped(name, default.remappings(taco), '', 'taco_node') for name in INPUTS}
    # Without a namespace the defaults meet the sample bags' topics, and each calibration is found
    # beside its image (image_transport's convention) as camera drivers publish it.
    assert resolved == {params.TOPIC_IMAGE: bags.IMAGE_TOPIC,
                        params.TOPIC_IMAGE_COMPRESSED: bags.IMAGE_TOPIC + '/compressed',
                        params.TOPIC_CAMERA_INFO: '/camera/camera_info',
                        params.TOPIC_DEPTH: '/camera/aligned_depth_to_color/image_raw',
                        params.TOPIC_DEPTH_CAMERA_INFO: '/camera/aligned_depth_to_color/camera_info',
                        params.TOPIC_AUDIO: bags.AUDIO_TOPIC, params.TOPIC_AUDIO_INFO: '/audio_info'}
    mic = default.node('mic_node')
    mic_topic = declared_mic_parameters()['topic']
    assert remapped(mic_topic, default.remappings(mic), '', 'mic_node') == bags.AUDIO_TOPIC

    spaced = LaunchResolver(description, {**ALL_NODES, 'namespace': 'robot1', 'audio_info_topic': 'mic/info',
                                          'audio_topic': '/shared/audio'})
    taco, mic = spaced.node('taco_node'), spaced.node('mic_node')
    assert spaced.full_name(taco) == '/robot1/taco_node'
    names = {name: remapped(name, spaced.remappings(taco), 'robot1', 'taco_node') for name in INPUTS}
    assert names == {params.TOPIC_IMAGE: '/robot1/camera/image_raw',
                     params.TOPIC_IMAGE_COMPRESSED: '/robot1/camera/image_raw/compressed',
                     params.TOPIC_CAMERA_INFO: '/robot1/camera/camera_info',
                     params.TOPIC_DEPTH: '/robot1/camera/aligned_depth_to_color/image_raw',
                     params.TOPIC_DEPTH_CAMERA_INFO: '/robot1/camera/aligned_depth_to_color/camera_info',
                     params.TOPIC_AUDIO: '/shared/audio', params.TOPIC_AUDIO_INFO: '/robot1/mic/info'}
    assert remapped(mic_topic, spaced.remappings(mic), 'robot1', 'mic_node') == '/shared/audio'


def test_camera_and_depth_topics_can_be_named_one_by_one(description: Any) -> None:
    """A RealSense in its own namespace, calibration topics given explicitly; use_depth is set."""
    chosen = {'camera_topic': '/camera/camera/color/image_raw', 'camera_info_topic': '/calib/color',
              'depth_topic': '/camera/camera/aligned_depth_to_color/image_raw',
              'depth_camera_info_topic': '/calib/depth', 'use_depth': 'true'}
    resolver = LaunchResolver(description, chosen)
    taco = resolver.node('taco_node')
    names = {name: remapped(name, resolver.remappings(taco), '', 'taco_node') for name in INPUTS}
    assert names[params.TOPIC_IMAGE] == chosen['camera_topic']
    assert names[params.TOPIC_CAMERA_INFO] == '/calib/color'
    assert names[params.TOPIC_DEPTH] == chosen['depth_topic']
    assert names[params.TOPIC_DEPTH_CAMERA_INFO] == '/calib/depth'
    assert resolver.parameters(taco)[1]['use_depth'] is True
    default = LaunchResolver(description)
    assert 'use_depth' not in default.parameters(default.node('taco_node'))[1]
    # The private output ~/camera_info is not caught by the input's rule.
    assert remapped(params.TOPIC_PAIRED_CAMERA_INFO, resolver.remappings(taco), '', 'taco_node') == \
        '/taco_node/camera_info'


@pytest.mark.parametrize('overrides', [{}, {'namespace': 'robot1'},
                                       {'namespace': '/fleet/robot2', 'node_name': 'left_taco'}])
def test_rviz_shows_the_outputs_of_this_instance(description: Any, overrides: dict[str, str]) -> None:
    resolver = LaunchResolver(description, {**overrides, 'rviz': 'true'})
    taco, rviz = resolver.node('taco_node'), resolver.node('rviz2')
    taco_ns = str(resolver.value(taco.kwargs['namespace']))
    rviz_ns = str(resolver.value(rviz.kwargs['namespace']))
    node_name = str(resolver.value(taco.kwargs['name']))
    shown_types = ('sensor_msgs/Image', 'visualization_msgs/MarkerArray')   # what RViz draws
    published = {expand(spec.name, taco_ns, node_name) for spec in params.TOPICS
                 if spec.direction == 'pub' and spec.type.startswith(shown_types)}
    config = yaml.safe_load(RVIZ_FILE.read_text())
    shown = {remapped(display['Topic']['Value'], resolver.remappings(rviz), rviz_ns, 'rviz2')
             for display in config['Visualization Manager']['Displays']}
    assert shown == published
    assert all(not d['Topic']['Value'].startswith('/')
               for d in config['Visualization Manager']['Displays']), 'RViz topics must be relative'


def test_node_name_and_log_level_reach_the_command_line(description: Any) -> None:
    resolver = LaunchResolver(description, {**ALL_NODES, 'node_name': 'left_taco', 'log_level': 'debug'})
    command = resolver.command(resolver.node('taco_node'))
    assert command[1:4] == ['--ros-args', '--log-level', 'debug']
    assert '__node:=left_taco' in command
    for executable in ('taco_node', 'mic_node'):
        node = resolver.node(executable)
        assert [str(resolver.value(a)) for a in node.kwargs['ros_arguments']] == ['--log-level', 'debug']


def test_optional_nodes_follow_their_switches(description: Any) -> None:
    default = LaunchResolver(description)
    assert [n.kwargs['executable'] for n in default.nodes()] == ['taco_node']
    both = LaunchResolver(description, {'use_mic': 'true', 'rviz': 'True'})
    assert [n.kwargs['executable'] for n in both.nodes()] == ['taco_node', 'mic_node', 'rviz2']
    assert type(default.node('taco_node')).__name__ == 'LifecycleNode'


PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def test_nodes_get_the_large_data_dds_profile_unless_one_is_chosen(
        description: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROFILE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    everything = {'use_mic': 'true', 'rviz': 'true'}
    shipped = SHARE_DIR / 'config' / 'fastdds_large_data.xml'
    # Each Fast DDS reads its own variable: 3.x (Kilted on) the first, 2.x (Jazzy) the second.
    for distro, variable in (('kilted', PROFILE_VARIABLES[0]), ('', PROFILE_VARIABLES[0]),
                             ('jazzy', PROFILE_VARIABLES[1])):
        monkeypatch.setenv('ROS_DISTRO', distro)
        resolver = LaunchResolver(description, everything)
        for node in resolver.nodes():
            assert resolver.environment(node) == {variable: str(shipped)}, (distro, node)
    _require_installed(shipped)
    assert shipped.read_text() == (LAUNCH_FILE.parents[1] / 'config' / shipped.name).read_text()
    own = LaunchResolver(description, {**everything, 'fastdds_profile': '/robot/dds.xml'})
    assert {v for n in own.nodes() for v in own.environment(n).values()} == {'/robot/dds.xml'}
    none = LaunchResolver(description, {**everything, 'fastdds_profile': 'none'})
    assert not any(none.environment(n) for n in none.nodes())
    for name in PROFILE_VARIABLES:      # the user's own (Fast DDS 3 or 2), inherited
        monkeypatch.setenv(name, '/etc/robot_dds.xml')
        inherited = LaunchResolver(description, everything)
        assert not any(inherited.environment(n) for n in inherited.nodes())
        monkeypatch.delenv(name)


# ------------------------------------------------------------------ the real launch, where it exists
@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='launch_ros is not installable from PyPI (platform.md); runs on a ROS install')
@pytest.mark.parametrize('overrides', [{}, {'namespace': 'robot1', 'device': 'cpu', 'use_mic': 'true',
                                            'autostart': 'false', 'log_level': 'warn'}])
def test_real_launch_runs_the_same_command_lines(overrides: dict[str, str]) -> None:
    """launch_ros itself resolves the file: same executables, arguments and parameter values."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.utilities import perform_substitutions

    spec = importlib.util.spec_from_file_location('taco_launch_real', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = LaunchContext()
    context.launch_configurations.update(overrides)
    nodes = []
    for entity in module.generate_launch_description().entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)
        elif isinstance(entity, OpaqueFunction):
            nodes += entity.execute(context) or []
    real = {}
    for node in nodes:
        node._perform_substitutions(context)
        locals_ = {'name': f'__node:={node.node_name.rsplit("/", 1)[1]}',
                   'ns': f'__ns:={node.expanded_node_namespace}'}
        context.extend_locals({'ros_specific_arguments': locals_})
        real[node.node_executable] = [perform_substitutions(context, part) for part in node.cmd]
    ours = LaunchResolver(load_launch_description(), overrides)
    for node in ours.nodes():
        executable = node.kwargs['executable']
        assert _comparable(real[executable]) == _comparable(ours.command(node)), executable


def _comparable(command: list[str]) -> list[Any]:
    """A command line with parameter files replaced by their content."""
    out: list[Any] = [Path(command[0]).name]
    for previous, arg in itertools.pairwise(command):
        out.append(yaml.safe_load(Path(arg).read_text()) if previous == '--params-file' else arg)
    return out


# ------------------------------------------------------------------------------ real processes
@pytest.mark.ros
def test_mic_node_starts_from_the_launch_command_line(description: Any, tmp_path: Path) -> None:
    """What `ros2 launch ... use_mic:=true` runs: params file + overrides + remaps are accepted."""
    _require_installed(SHARE_DIR / 'config' / 'mic.yaml')
    resolver = LaunchResolver(description, {'use_mic': 'true', 'mic_device': 'no-such-mic',
                                            'namespace': 'robot1', 'audio_topic': '/robot1/mic'},
                              params_dir=tmp_path)
    command = resolver.command(resolver.node('mic_node'))
    env = dict(os.environ, **isolate_dds(), HOME=str(tmp_path),   # no ~/.asoundrc devices
               **resolver.environment(resolver.node('mic_node')))
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
    under its namespace, subscribed to the inputs inside it, with label_info latched."""
    from node_fixtures import small_model_config
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from taco_msgs.msg import AudioChunk, LabelInfo
    resolver = LaunchResolver(description, {
        'namespace': 'robot1', 'camera_topic': 'camera/color/image_raw', 'device': 'cpu',
        'allow_random_weights': 'true', 'model_config': str(small_model_config(tmp_path / 'models'))},
        params_dir=tmp_path)
    command = resolver.command(resolver.node('taco_node'))
    env = dict(os.environ, **isolate_dds(), XDG_CACHE_HOME=str(tmp_path / 'cache'),
               **resolver.environment(resolver.node('taco_node')))
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
