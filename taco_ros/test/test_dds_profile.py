"""config/fastdds_large_data.xml: the Fast DDS profile for raw frames between processes.

Without it each process sends through a 512 KB shared-memory segment; bench/bench_soak.py lost 13 %
of its 0.9 MB frames that way. The profile must load (Fast DDS falls back to its defaults, with only
a log line, on a profile it cannot read), give the publishing process its large segment, and still
carry raw frames from one process to another.
"""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

PROFILE = Path(__file__).resolve().parents[1] / 'config' / 'fastdds_large_data.xml'
NS = {'dds': 'http://www.eprosima.com'}
SEGMENT_BYTES = 32 << 20
FRAMES = 30


def _profile() -> ET.Element:
    return ET.parse(PROFILE).getroot()


def test_profile_declares_a_large_segment_and_keeps_udp() -> None:
    root = _profile()
    kinds = {d.findtext('dds:transport_id', namespaces=NS): d
             for d in root.iterfind('.//dds:transport_descriptor', NS)}
    types = {d.findtext('dds:type', namespaces=NS) for d in kinds.values()}
    assert types == {'SHM', 'UDPv4'}, 'other machines need UDPv4 once the builtins are off'
    shm = next(d for d in kinds.values() if d.findtext('dds:type', namespaces=NS) == 'SHM')
    assert int(shm.findtext('dds:segment_size', namespaces=NS)) == SEGMENT_BYTES
    participant = root.find('.//dds:participant', NS)
    assert participant is not None and participant.get('is_default_profile') == 'true'
    used = [e.text for e in participant.iterfind('.//dds:userTransports/dds:transport_id', NS)]
    assert sorted(used) == sorted(kinds)
    assert participant.findtext('.//dds:useBuiltinTransports', namespaces=NS) == 'false'


def load_bench() -> Any:
    """bench/bench_transport.py as a module (the bench is not a package)."""
    path = Path(__file__).resolve().parents[2] / 'bench' / 'bench_transport.py'
    spec = importlib.util.spec_from_file_location('bench_transport', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.ros
def test_a_process_with_the_profile_sends_raw_frames_through_its_large_segment() -> None:
    """Two processes with the profile (bench_transport's publisher and subscriber): the publisher's
    segment has the profile's size, and every raw frame arrives (reliable, keep-all: none may be
    dropped however busy the machine, so the count does not depend on its speed)."""
    from node_fixtures import module_domain_id

    bench = load_bench()
    args = bench.parse_args(['--frames', str(FRAMES), '--size', '640x480',
                             '--domain-id', str(module_domain_id())])
    result = bench.run_case(args, PROFILE, 'reliable', (640, 480), keep_all=True)
    assert any(size >= SEGMENT_BYTES for size in result['segments']), result['segments']
    assert sorted(index for index, _ in result['frames']) == list(range(FRAMES))
    assert bench.PROFILE == PROFILE


@pytest.mark.parametrize(('distro', 'variable'), [
    ('jazzy', 'FASTRTPS_DEFAULT_PROFILES_FILE'), ('humble', 'FASTRTPS_DEFAULT_PROFILES_FILE'),
    ('kilted', 'FASTDDS_DEFAULT_PROFILES_FILE'), ('rolling', 'FASTDDS_DEFAULT_PROFILES_FILE'),
    ('', 'FASTDDS_DEFAULT_PROFILES_FILE')])
def test_a_process_gets_only_the_variable_its_fast_dds_reads(distro: str, variable: str) -> None:
    from taco_ros.dds_profile import profile_environment

    assert profile_environment(PROFILE, {'ROS_DISTRO': distro}) == {variable: str(PROFILE)}


def test_a_profile_the_user_set_is_found_under_either_name() -> None:
    from taco_ros.dds_profile import inherited_profile

    assert inherited_profile({'ROS_DISTRO': 'kilted'}) == ''
    assert inherited_profile({'FASTDDS_DEFAULT_PROFILES_FILE': ''}) == ''
    assert inherited_profile({'FASTRTPS_DEFAULT_PROFILES_FILE': '/etc/dds.xml'}) == '/etc/dds.xml'
    assert inherited_profile({'FASTDDS_DEFAULT_PROFILES_FILE': '/a.xml',
                              'FASTRTPS_DEFAULT_PROFILES_FILE': '/b.xml'}) == '/a.xml'


@pytest.mark.ros
def test_the_installed_profile_is_the_one_in_the_source_tree() -> None:
    from taco_ros.dds_profile import shipped_profile

    assert shipped_profile().read_text() == PROFILE.read_text()
