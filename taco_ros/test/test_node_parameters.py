"""taco_node's parameters: the tables, the generated files and README, and how the node refuses
bad values (wrong type, range, choice, timing) from ``ros2 param set``, its service, and start-up,
never crashing. Real DDS, random-weight taco_tiny models built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('taco_msgs.msg')

import node_fixtures  # noqa: E402
from node_fixtures import EVENT_TIMEOUT, WORDS, NodeHarness  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from taco_ros import params, params_docs  # noqa: E402
from taco_ros.taco_node import TacoNode  # noqa: E402

pytestmark = pytest.mark.ros

# The module's node and its context (pytest fixtures from node_fixtures).
context, base, shared = node_fixtures.context, node_fixtures.base, node_fixtures.shared


# ---------------------------------------------------------------------------- parameters
@pytest.mark.parametrize('node,file', [('taco_node', 'taco.yaml'), ('mic_node', 'mic.yaml')])
def test_config_files_are_the_generated_tables(node: str, file: str) -> None:
    import yaml

    path = Path(__file__).resolve().parents[1] / 'config' / file
    text = path.read_text(encoding='utf-8')
    assert text == params_docs.yaml_text(node), \
        f'config/{file} is stale: regenerate it with taco_ros.params_docs.yaml_text({node!r})'
    # Keyed /** so that the file applies under any namespace and node name.
    values = yaml.safe_load(text)['/**']['ros__parameters']
    defaults = params.defaults(node)
    assert values == {k: v for k, v in defaults.items() if v != []}
    for name, value in values.items():
        assert params.validate(name, value, node) is None, (name, value)


def test_parameter_table_yaml_and_readme_agree() -> None:
    table = params_docs.markdown_table()
    for spec in params.PARAMETERS:
        assert spec.description and f'| `{spec.name}` |' in table
        assert params.validate(spec.name, spec.default) is None, spec.name
        if spec.type_name in ('int', 'double'):
            assert spec.range is not None, f'{spec.name} needs a range'
    for topic in params.TOPICS:
        assert f'| `{topic.name}` |' in table
    assert params.validate_together(params.defaults()) is None


def test_declared_descriptors_match_the_table(shared: NodeHarness) -> None:
    node = shared.node
    names = [spec.name for spec in params.PARAMETERS]
    for spec, descriptor in zip(params.PARAMETERS, node.describe_parameters(names), strict=True):
        assert descriptor.description == spec.full_description()
        assert descriptor.read_only == spec.startup_only
        if spec.range is not None:
            bounds = (descriptor.integer_range or descriptor.floating_point_range)[0]
            assert (bounds.from_value, bounds.to_value) == pytest.approx(spec.range)
    config = node.pipeline_config()
    assert config.vocabulary == WORDS and config.solver_overrides == {'max_steps': 10}


@pytest.mark.parametrize('name,value,reason', [
    ('window_sec', 0.0, 'out of range'),
    ('window_sec', 1, 'type'),
    ('mode', 'panoptic', 'not one of'),
    ('device', 'cuda:0', 'applied at configure'),
    ('model_config', 'taco_convnext_large', 'applied at configure'),
    ('image_qos', 'reliable', 'applied at activate'),
    ('vocabulary', ['dog', 'dog'], 'duplicate'),
    ('vocabulary', ['only one'], 'at least 2'),
    ('latency_error', 0.5, 'latency_warn'),
    ('autostart', False, 'read-only'),
    ('vocabulary', True, 'list of words'),          # crashed the node with a TypeError
    ('vocabulary', 'dog', 'list of words'),         # was taken as the words 'd', 'o', 'g'
    ('vocabulary', [1, 2], 'non-empty strings'),    # was taken as the words '1', '2'
    ('window_queue', -1, 'out of range'),
    ('solver_threads', 257, 'out of range'),
    ('mask_encoding', 'semantic', 'not one of'),
    ('audio_sample_format', 'mp3', 'not one of'),
    ('audio_sample_format', 'S16LE', 'applied at activate'),
])
def test_bad_parameter_values_are_refused_with_a_reason(shared: NodeHarness, name: str, value: Any,
                                                         reason: str) -> None:
    before = shared.node.get_parameter(name).value
    result = shared.node.set_parameters([Parameter(name, value=value)])[0]
    assert not result.successful and reason in result.reason, result.reason
    assert shared.node.get_parameter(name).value == before


def _wrong_type(spec: params.ParamSpec) -> Any:
    """A value of another ROS type than the parameter's."""
    return {'bool': 'yes', 'int': 1.5, 'double': 'fast', 'string': 7,
            'string[]': True}[spec.type_name]


@pytest.mark.parametrize('name', [spec.name for spec in params.PARAMETERS])
def test_every_parameter_refuses_a_value_of_the_wrong_type(shared: NodeHarness, name: str) -> None:
    node = shared.node
    before = node.get_parameter(name).value
    result = node.set_parameters([Parameter(name, value=_wrong_type(
        params.PARAMETERS_BY_NAME[name]))])[0]
    assert not result.successful and result.reason, name
    assert node.get_parameter(name).value == before
    assert params.validate(name, _wrong_type(params.PARAMETERS_BY_NAME[name])) is not None


def test_parameter_service_refuses_a_wrong_type_and_the_node_runs_on(shared: NodeHarness) -> None:
    """`ros2 param set /taco_node vocabulary true` goes through this service."""
    from rcl_interfaces.srv import SetParameters

    client = shared.peer.create_client(SetParameters, '/taco_node/set_parameters')
    try:
        assert client.wait_for_service(timeout_sec=EVENT_TIMEOUT)

        def call(value: Any) -> Any:
            request = SetParameters.Request(
                parameters=[Parameter('vocabulary', value=value).to_parameter_msg()])
            future = client.call_async(request)
            assert shared.wait_for(future.done, EVENT_TIMEOUT), 'no answer: the node is down'
            return future.result().results[0]

        for bad in (True, 'dog', [1, 2], 3.5):
            result = call(bad)
            assert not result.successful and 'vocabulary' in result.reason, result.reason
        assert call(['violin', 'trumpet']).successful
        assert shared.node.wait_for_vocabulary(EVENT_TIMEOUT)    # encoded off the executor
        assert shared.node._pipeline.vocabulary == ['violin', 'trumpet']
    finally:
        assert call(list(WORDS)).successful
        assert shared.node.wait_for_vocabulary(EVENT_TIMEOUT)
        shared.peer.destroy_client(client)


def test_wrong_start_up_values_are_refused_with_a_message(context: Any,
                                                          base: dict[str, Any]) -> None:
    """A parameter file or -p with a wrong type or range (which made rclpy raise while the node
    was being constructed) or a value our rules refuse: the node is built, reports, and does not
    configure until the values are fixed."""
    overrides = {**base, 'autostart': False, 'window_sec': 1, 'max_image_pixels': 'big',
                 'hop_sec': 99.0, 'vocabulary': True, 'mode': 'panoptic'}
    node = TacoNode('taco_node_bad_values', context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in overrides.items()])
    try:
        problem = node._configure_problem()
        for name in ('window_sec', 'max_image_pixels', 'hop_sec'):
            assert name in problem, problem
        assert node.get_parameter('window_sec').value == 1.0       # the default, not the refused 1
        assert not node.start() and node._pipeline is None
        results = node.set_parameters([Parameter('window_sec', value=1.5),
                                       Parameter('max_image_pixels', value=1_000_000),
                                       Parameter('hop_sec', value=0.5)])
        assert all(r.successful for r in results), [r.reason for r in results]
        assert 'mode' in node._configure_problem()
        assert node.set_parameters([Parameter('mode', value='coarse')])[0].successful
        assert 'vocabulary' in node._configure_problem()
        assert node.set_parameters([Parameter('vocabulary', value=['a', 'b'])])[0].successful
        assert node._configure_problem() is None
    finally:
        node.release()
        node.destroy_node()


def test_live_parameters_apply(shared: NodeHarness) -> None:
    node = shared.node
    results = node.set_parameters([Parameter('mask_threshold', value=0.3),
                                   Parameter('top_k', value=3), Parameter('mode', value='coarse')])
    try:
        assert all(r.successful for r in results)
        config = node._pipeline.config
        assert (config.mask_threshold, config.top_k, config.mode) == (0.3, 3, 'coarse')
    finally:
        node.set_parameters([Parameter('mask_threshold', value=0.5), Parameter('top_k', value=5),
                             Parameter('mode', value='full')])


README_BEGIN = '<!-- taco_node tables: generated by taco_ros.params_docs.markdown_table() -->'
README_END = '<!-- end of taco_node tables -->'


def test_readme_tables_match_the_declarations() -> None:
    readme = Path(__file__).resolve().parents[2] / 'README.md'
    text = readme.read_text(encoding='utf-8') if readme.is_file() else ''
    if README_BEGIN not in text:
        pytest.fail('README.md has no generated taco_node tables section')
    section = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    assert section.strip() == params_docs.readme_tables().strip(), \
        'README tables are stale: paste taco_ros.params_docs.readme_tables() between the markers'
    for node in ('taco_node', 'mic_node'):
        for spec in params.NODES[node].parameters:
            assert f'| `{spec.name}` |' in params_docs.markdown_table(node)
