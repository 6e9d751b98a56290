"""Every dependency in both package.xml files is something `rosdep install --from-paths src
--ignore-src -y` resolves on a Jazzy or Kilted robot (Ubuntu 24.04 noble), checked against a recorded
snapshot of the rosdep database (fixtures/rosdep_snapshot.yaml: source, commit and dates inside).

rosdep resolves a key in three ways, and so does this test: a package in the source tree (skipped by
--ignore-src), a ROS package released in the distribution (<distro>/distribution.yaml), or a system key
of rosdep/*.yaml with a rule for the platform.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.robot

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / 'fixtures' / 'rosdep_snapshot.yaml'
MANIFESTS = {name: REPO / name / 'package.xml' for name in ('taco_msgs', 'taco_ros')}
DISTROS = ('jazzy', 'kilted')
PLATFORM = ('ubuntu', 'noble')        # what both distributions release binaries for
DEPENDENCY_KINDS = ('build_depends', 'buildtool_depends', 'build_export_depends',
                    'buildtool_export_depends', 'exec_depends', 'test_depends', 'doc_depends')


@pytest.fixture(scope='module')
def snapshot() -> dict[str, Any]:
    return yaml.safe_load(SNAPSHOT.read_text())


def dependencies() -> dict[str, set[str]]:
    """{dependency key: manifests that name it} over every dependency tag of both manifests."""
    from catkin_pkg.package import parse_package

    found: dict[str, set[str]] = {}
    for name, path in MANIFESTS.items():
        package = parse_package(str(path))
        for kind in DEPENDENCY_KINDS:
            for dependency in getattr(package, kind):
                found.setdefault(dependency.name, set()).add(name)
    return found


def platform_rule(entry: dict[str, Any], os_name: str, codename: str) -> Any:
    """rosdep's rule of a system key for one OS version (None when it has none)."""
    rule = entry.get(os_name)
    if isinstance(rule, dict) and not set(rule) & {'apt', 'pip', 'source'}:
        rule = rule.get(codename, rule.get('*'))      # per-codename rules; '*' for all others
    return rule


def test_snapshot_says_where_it_comes_from(snapshot: dict[str, Any]) -> None:
    assert snapshot['source'] == 'https://github.com/ros/rosdistro'
    assert re.fullmatch(r'[0-9a-f]{40}', snapshot['commit'])
    assert re.fullmatch(r'\d{4}-\d{2}-\d{2}', snapshot['commit_date'])
    assert re.fullmatch(r'\d{4}-\d{2}-\d{2}', snapshot['recorded'])
    assert snapshot['commit_date'] <= snapshot['recorded']
    for key, record in snapshot['system_keys'].items():
        assert record['file'] in snapshot['files'], key


def unresolved(keys: dict[str, set[str]], snapshot: dict[str, Any], distro: str) -> dict[str, list]:
    """{key: manifests} of the keys rosdep cannot resolve for ``distro`` on PLATFORM."""
    missing = {}
    for key, manifests in keys.items():
        if key in MANIFESTS:
            continue          # in the source tree: rosdep --ignore-src skips it
        if key in snapshot['ros_packages'][distro]:
            continue
        record = snapshot['system_keys'].get(key)
        if record is None or platform_rule(record['entry'], *PLATFORM) is None:
            missing[key] = sorted(manifests)
    return missing


@pytest.mark.parametrize('distro', DISTROS)
def test_every_dependency_resolves(snapshot: dict[str, Any], distro: str) -> None:
    missing = unresolved(dependencies(), snapshot, distro)
    assert not missing, (
        f'not rosdep keys for ROS 2 {distro} on {" ".join(PLATFORM)} in the recorded database '
        f'(rosdistro {snapshot["commit"][:8]}): {missing}. Look the key up in rosdep/base.yaml or '
        'rosdep/python.yaml, then record its entry in fixtures/rosdep_snapshot.yaml')


def test_the_keys_that_stopped_rosdep_are_caught(snapshot: dict[str, Any]) -> None:
    """What the manifest used to name (issue 14): neither is a rosdep key."""
    keys = {'python3-sounddevice': {'taco_ros'}, 'libportaudio2': {'taco_ros'}, 'rclpy': {'taco_ros'},
            'taco_msgs': {'taco_ros'}}
    for distro in DISTROS:
        assert unresolved(keys, snapshot, distro) == {'python3-sounddevice': ['taco_ros'],
                                                      'libportaudio2': ['taco_ros']}


def test_no_key_installs_with_pip(snapshot: dict[str, Any]) -> None:
    """A pip rule makes rosdep pip-install into the system Python, which Ubuntu 24.04 refuses: such
    packages belong in requirements-robot.txt (the virtualenv of the README's robot section)."""
    used = dependencies()
    for key, record in snapshot['system_keys'].items():
        if key not in used:
            continue
        rule = platform_rule(record['entry'], *PLATFORM)
        assert not (isinstance(rule, dict) and 'pip' in rule), f'{key} installs with pip: {rule}'


def test_snapshot_holds_exactly_the_keys_in_use(snapshot: dict[str, Any]) -> None:
    used = set(dependencies()) - set(MANIFESTS)
    recorded = set(snapshot['system_keys'])
    for distro in DISTROS:
        recorded |= set(snapshot['ros_packages'][distro])
    assert recorded == used, f'stale: {sorted(recorded - used)}, missing: {sorted(used - recorded)}'


@pytest.mark.parametrize('rule, expected', [
    ({'ubuntu': ['portaudio19-dev']}, ['portaudio19-dev']),
    ({'ubuntu': {'*': ['python3-torch'], 'focal': None}}, ['python3-torch']),
    ({'ubuntu': {'jammy': ['x'], 'focal': None}}, None),
    ({'ubuntu': {'noble': None, '*': ['x']}}, None),
    ({'ubuntu': {'pip': {'packages': ['sounddevice']}}}, {'pip': {'packages': ['sounddevice']}}),
    ({'debian': ['x']}, None),
])
def test_platform_rules_are_read_as_rosdep_reads_them(rule: dict[str, Any], expected: Any) -> None:
    assert platform_rule(rule, *PLATFORM) == expected
