"""What `ros2 launch taco_ros taco.launch.py ...` starts, run for real: the launch file's command lines
(launch_fixtures.LaunchResolver) started as processes, read back over real DDS through the parameter,
lifecycle and graph services a robot's tools use.

- A parameter file with a non-default value for every parameter, under a namespace: every value arrives.
- The same with one launch argument set per node: only that parameter differs.
- autostart:=false: taco_node waits in unconfigured until a lifecycle client drives it.
- Two instances from one parameter file, two namespaces: each gets only its own inputs and publishes
  only under its namespace; their diagnostics names differ.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from bringup_fixtures import isolate_dds, ros_session, spin_until, stop_process
from launch_fixtures import LIB_DIR, LaunchResolver, load_launch_description
from test_launch import declared_mic_parameters

from taco_ros import params

pytestmark = [pytest.mark.ros,
              pytest.mark.skipif(not (LIB_DIR / 'taco_node').is_file(), reason='taco_node is not installed')]

START_TIMEOUT = 300.0      # torch import + random-weight models on a busy 2-core machine
CALL_TIMEOUT = 60.0
GLOBAL_TOPICS = {'/diagnostics', '/rosout', '/parameter_events'}

# Non-default values that need a meaning (the rest are derived from the defaults).
TACO_VALUES = {'model_config': 'taco_tiny', 'model_dir': '/opt/taco/models', 'device': 'cuda:1',
               'anchors': '/opt/taco/kitchen.bank', 'vocabulary': ['dog', 'cat', 'siren'],
               'autostart': False, 'latency_warn': 2.5, 'latency_error': 7.5, 'window_sec': 1.5,
               'buffer_sec': 12.0}
MIC_VALUES = {'device': 'no-such-mic', 'sample_format': 'float32', 'qos': 'reliable',
              'retry_max_s': 20.0}


def _other(name: str, default: Any, choices: tuple[str, ...] | None = None,
           limits: tuple[float, float] | None = None) -> Any:
    """A valid value of a parameter that differs from its default."""
    if isinstance(default, bool):
        return not default
    if choices:
        return next(c for c in choices if c != default)
    if isinstance(default, (int, float)):
        step = 1 if isinstance(default, int) else 0.25
        value = default + step if limits is None or default + step <= limits[1] else default - step
        return type(default)(value)
    return f'{default}_{name}' if isinstance(default, str) else default


def non_default_taco_parameters() -> dict[str, Any]:
    values = {spec.name: TACO_VALUES.get(spec.name, _other(spec.name, spec.default, spec.choices,
                                                            spec.range))
              for spec in params.PARAMETERS}
    values['use_sim_time'] = True
    for name, value in values.items():
        assert params.validate(name, value) is None, (name, value)
        if name in params.PARAMETERS_BY_NAME:
            assert value != params.PARAMETERS_BY_NAME[name].default, name
    assert params.validate_together(values) is None
    return values


def non_default_mic_parameters() -> dict[str, Any]:
    values = {name: MIC_VALUES.get(name, _other(name, default))
              for name, default in declared_mic_parameters().items()}
    values['use_sim_time'] = True
    return values


def write_params(path: Path, values: dict[str, Any]) -> Path:
    """A parameter file as a robot user writes one: keyed /** so any namespace and name match."""
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return path


@contextmanager
def launched(commands: list[list[str]], workdir: Path, env: dict[str, str]) -> Iterator[list[Any]]:
    """The processes of the command lines, each logging to a file; stopped (SIGINT) at the end."""
    processes = []
    try:
        for i, command in enumerate(commands):
            with open(workdir / f'node{i}.log', 'w') as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))
        yield processes
    finally:
        for process in processes:
            # A node's clean shutdown (rclpy, PortAudio's ALSA probe) can take seconds on a busy machine.
            stop_process(process, timeout=90.0)
    # Reached only when the test body passed: a clean exit on SIGINT is part of the contract.
    for i, process in enumerate(processes):
        assert process.returncode == 0, (workdir / f'node{i}.log').read_text()


def logs(workdir: Path) -> str:
    return '\n'.join(p.read_text(errors='replace')[-3000:] for p in sorted(workdir.glob('node*.log')))


class Probe:
    """Calls a node's parameter and lifecycle services the way ros2 param / a lifecycle manager do."""

    def __init__(self, node: Any, executor: Any, workdir: Path) -> None:
        self.node, self.executor, self.workdir = node, executor, workdir

    def call(self, service_type: Any, service: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        client = self.node.create_client(service_type, service)
        try:
            assert spin_until(self.executor, client.service_is_ready, START_TIMEOUT), (
                f'{service} never appeared\n{logs(self.workdir)}')
            future = client.call_async(request)
            assert spin_until(self.executor, future.done, timeout), f'{service} did not answer'
            return future.result()
        finally:
            self.node.destroy_client(client)

    def parameters(self, full_name: str, names: list[str]) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        reply = self.call(GetParameters, f'{full_name}/get_parameters', GetParameters.Request(names=names))
        values = [parameter_value_to_python(v) for v in reply.values]
        return {name: list(v) if isinstance(v, (list, tuple)) or hasattr(v, 'tolist') else v
                for name, v in zip(names, values, strict=True)}

    def state(self, full_name: str) -> str:
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f'{full_name}/get_state', GetState.Request()).current_state.label

    def transition(self, full_name: str, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        request = ChangeState.Request(transition=Transition(id=transition_id))
        # configure loads the models: as slow as a start.
        return self.call(ChangeState, f'{full_name}/change_state', request, START_TIMEOUT).success


def _latched() -> Any:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, **isolate_dds(), XDG_CACHE_HOME=str(tmp_path / 'cache'), HOME=str(tmp_path))
    env.pop('TACO_MODEL_DIR', None)
    return env


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


# ------------------------------------------------------------------------------ the file wins
@pytest.mark.parametrize('arguments', [{}, {'device': 'cpu', 'mic_device': 'other-mic'}],
                         ids=['file-only', 'one-argument-per-node'])
def test_every_file_value_arrives_under_a_namespace(tmp_path: Path, arguments: dict[str, str]) -> None:
    taco_values, mic_values = non_default_taco_parameters(), non_default_mic_parameters()
    resolver = LaunchResolver(load_launch_description(), {
        'namespace': 'robot1', 'use_mic': 'true',
        'params_file': str(write_params(tmp_path / 'taco.yaml', taco_values)),
        'mic_params_file': str(write_params(tmp_path / 'mic.yaml', mic_values)), **arguments},
        params_dir=tmp_path)
    expected = {'/robot1/taco_node': dict(taco_values), '/robot1/mic_node': dict(mic_values)}
    if arguments:
        expected['/robot1/taco_node']['device'] = arguments['device']
        expected['/robot1/mic_node']['device'] = arguments['mic_device']
    commands = [resolver.command(resolver.node(e)) for e in ('taco_node', 'mic_node')]
    env = {**_env(tmp_path), **resolver.environment(resolver.node('taco_node'))}
    with launched(commands, tmp_path, env), \
            ros_session('launch_param_probe') as (_, node, executor):
        probe = Probe(node, executor, tmp_path)
        for full_name, values in expected.items():
            got = probe.parameters(full_name, sorted(values))
            wrong = {k: (got[k], v) for k, v in values.items() if not _close(got[k], v)}
            assert not wrong, f'{full_name}: (running, file) differ: {wrong}\n{logs(tmp_path)}'
        # autostart: false came from the file too.
        assert probe.state('/robot1/taco_node') == 'unconfigured'


# ------------------------------------------------------------------------------ lifecycle manager
def test_autostart_false_waits_for_a_lifecycle_manager(tmp_path: Path) -> None:
    from lifecycle_msgs.msg import Transition
    from node_fixtures import small_model_config

    from taco_msgs.msg import LabelInfo
    resolver = LaunchResolver(load_launch_description(), {
        'namespace': 'arm', 'autostart': 'false', 'device': 'cpu', 'allow_random_weights': 'true',
        'model_config': str(small_model_config(tmp_path / 'models'))}, params_dir=tmp_path)
    full_name = '/arm/taco_node'
    env = {**_env(tmp_path), **resolver.environment(resolver.node('taco_node'))}
    with launched([resolver.command(resolver.node('taco_node'))], tmp_path, env), \
            ros_session('lifecycle_manager_probe') as (_, node, executor):
        infos: list = []
        node.create_subscription(LabelInfo, f'{full_name}/label_info', infos.append, _latched())
        probe = Probe(node, executor, tmp_path)
        assert probe.state(full_name) == 'unconfigured'
        spin_until(executor, lambda: False, 3.0)       # nothing happens on its own
        assert probe.state(full_name) == 'unconfigured' and not infos
        assert probe.transition(full_name, Transition.TRANSITION_CONFIGURE), logs(tmp_path)
        assert probe.state(full_name) == 'inactive'
        assert probe.transition(full_name, Transition.TRANSITION_ACTIVATE), logs(tmp_path)
        assert probe.state(full_name) == 'active'
        assert spin_until(executor, lambda: bool(infos), START_TIMEOUT), 'no label_info once active'


# ------------------------------------------------------------------------------ two instances
def _frame(stamp: float) -> Any:
    from node_fixtures import image_msg
    return image_msg(np.full((120, 160, 3), 90, np.uint8), stamp)


def _chunk(stamp: float) -> Any:
    from node_fixtures import audio_chunk_msg, tone
    return audio_chunk_msg(tone(512, int(stamp * 16000)), stamp)


def _inputs(statuses: dict[str, Any], full_name: str) -> dict[str, str]:
    """The latest 'inputs' status values of one instance (statuses keyed by hardware_id, name)."""
    found = [s for (hw, name), s in statuses.items()
             if full_name in (hw, name.split(':')[0]) and name.endswith('inputs')]
    return {kv.key: kv.value for kv in found[0].values} if found else {}


def test_two_instances_from_one_file_stay_apart(tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from node_fixtures import small_model_config
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from taco_msgs.msg import AudioChunk, LabelInfo
    shared = write_params(tmp_path / 'shared.yaml', {
        'device': 'cpu', 'allow_random_weights': True, 'input_timeout': 60.0,
        'model_config': str(small_model_config(tmp_path / 'models'))})
    names = {ns: f'/{ns}/taco_node' for ns in ('robot1', 'robot2')}
    resolvers = {ns: LaunchResolver(load_launch_description(), {'namespace': ns, 'params_file': str(shared)},
                                    params_dir=tmp_path) for ns in names}
    commands = [r.command(r.node('taco_node')) for r in resolvers.values()]
    env = {**_env(tmp_path), **resolvers['robot1'].environment(resolvers['robot1'].node('taco_node'))}
    with launched(commands, tmp_path, env), \
            ros_session('two_instances_probe') as (_, node, executor):
        statuses: dict[tuple[str, str], Any] = {}
        node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: statuses.update(
            {(s.hardware_id, s.name): s for s in m.status}), 50)
        infos: dict[str, list] = {name: [] for name in names.values()}
        for full_name, received in infos.items():
            node.create_subscription(LabelInfo, f'{full_name}/label_info', received.append, _latched())
        # autostart: each configures and activates before it serves anything; label_info says it did.
        assert spin_until(executor, lambda: all(infos.values()), START_TIMEOUT), logs(tmp_path)
        probe = Probe(node, executor, tmp_path)
        assert [probe.state(full_name) for full_name in names.values()] == ['active', 'active']
        # robot1 sees a camera, robot2 a microphone: each on the topics inside its namespace.
        images = node.create_publisher(Image, '/robot1/camera/image_raw', qos_profile_sensor_data)
        audio = node.create_publisher(AudioChunk, '/robot2/audio', qos_profile_sensor_data)

        def fed_apart() -> bool:
            now = time.time()
            images.publish(_frame(now))
            audio.publish(_chunk(now))
            one, two = _inputs(statuses, names['robot1']), _inputs(statuses, names['robot2'])
            return (float(one.get('image rate (Hz)', 0)) > 0
                    and float(two.get('audio chunk rate (Hz)', 0)) > 0)
        assert spin_until(executor, fed_apart, START_TIMEOUT), f'inputs never arrived: {statuses}'
        one, two = _inputs(statuses, names['robot1']), _inputs(statuses, names['robot2'])
        assert float(one['audio chunk rate (Hz)']) == 0 and one['audio sample rate'] == '0'
        assert float(two['image rate (Hz)']) == 0 and two['frames held'] == '0'

        for ns, full_name in names.items():
            for topic in (f'/{ns}/camera/image_raw', f'/{ns}/audio'):
                subscribers = {(s.node_name, s.node_namespace)
                               for s in node.get_subscriptions_info_by_topic(topic)}
                assert subscribers <= {('taco_node', f'/{ns}')}, (topic, subscribers)
            published = {topic for topic, _ in
                         node.get_publisher_names_and_types_by_node('taco_node', f'/{ns}')}
            assert f'{full_name}/label_info' in published
            outside = {t for t in published - GLOBAL_TOPICS if not t.startswith(f'/{ns}/')}
            assert not outside, f'{full_name} publishes outside its namespace: {outside}'

        # Every status either instance publishes names it: /diagnostics is shared by the whole robot.
        seen = {name for _, name in statuses}
        unnamed = {n for n in seen if not any(full_name in n for full_name in names.values())}
        assert not unnamed, f'diagnostics names must carry the node\'s full name: {sorted(seen)}'
        for full_name in names.values():
            assert any(n.endswith('inputs') and full_name in n for n in seen), (full_name, seen)
            assert any(n.endswith('inference') and full_name in n for n in seen), (full_name, seen)
