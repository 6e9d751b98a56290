"""config/taco.rviz: a valid RViz2 config whose displays show topics taco_node publishes under the
launch defaults, with QoS that connects to them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from bringup_fixtures import REPO, LaunchResolver, load_launch_description

from taco_ros import params

pytestmark = pytest.mark.robot

RVIZ_FILE = REPO / 'taco_ros' / 'config' / 'taco.rviz'
# RViz display class → the message type it shows
DISPLAYED_TYPES = {'rviz_default_plugins/Image': 'sensor_msgs/Image',
                   'rviz_default_plugins/MarkerArray': 'visualization_msgs/MarkerArray'}


@pytest.fixture(scope='module')
def rviz() -> dict[str, Any]:
    return yaml.safe_load(RVIZ_FILE.read_text())


def _published_under_launch_defaults() -> dict[str, params.TopicSpec]:
    """{absolute topic: spec} of taco_node's outputs as the default launch names them."""
    resolver = LaunchResolver(load_launch_description())
    (node,) = [n for n in resolver.nodes() if n.kwargs['executable'] == 'taco_node']
    namespace = '/' + str(resolver.value(node.kwargs['namespace'])).strip('/')
    name = resolver.value(node.kwargs['name'])
    base = namespace.rstrip('/') + '/' + name
    topics = {}
    for spec in params.TOPICS:
        if spec.direction != 'pub':
            continue
        topic = spec.name.replace('~', base, 1) if spec.name.startswith('~') else spec.name
        topics[topic] = spec
    return topics


def _displays(rviz: dict[str, Any]) -> list[dict[str, Any]]:
    return rviz['Visualization Manager']['Displays']


def test_rviz_file_is_an_rviz2_config(rviz: dict[str, Any]) -> None:
    assert {'Panels', 'Visualization Manager', 'Window Geometry'} <= set(rviz)
    manager = rviz['Visualization Manager']
    assert manager['Global Options']['Fixed Frame']
    for panel in rviz['Panels']:
        assert panel['Class'].startswith('rviz_common/')
    for display in _displays(rviz):
        assert display['Class'].startswith('rviz_default_plugins/')
        # RViz2 keeps each display's dock state under its name.
        assert display['Name'] in rviz['Window Geometry']


def test_displays_show_the_overlay_and_the_mask_published_by_taco_node(rviz: dict[str, Any]) -> None:
    published = _published_under_launch_defaults()
    shown = {}
    for display in _displays(rviz):
        # Relative in the file (they follow the launch namespace); rviz2 runs in '/' by default.
        topic = '/' + display['Topic']['Value'].lstrip('/')
        assert topic in published, f'{display["Name"]} shows {topic}, which taco_node does not publish'
        spec = published[topic]
        message_type = DISPLAYED_TYPES[display['Class']]
        assert spec.type.startswith(message_type), (topic, spec.type)
        # A reliable RViz subscription gets nothing from a best-effort publisher.
        if display['Topic']['Reliability Policy'] == 'Reliable':
            assert spec.qos.startswith('reliable'), (topic, spec.qos)
        assert display['Topic']['Durability Policy'] == 'Volatile'
        shown[topic] = display['Enabled']
    assert shown == {'/taco_node/debug_image': True, '/taco_node/mask': True, '/taco_node/markers': True}
