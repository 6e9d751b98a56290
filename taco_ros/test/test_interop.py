"""Interoperability with vision_msgs and both audio_common flavours, over real DDS.

The message packages are built from test/interfaces/ (field-for-field copies of the upstream
definitions, checked here against the upstream type hashes) in their own workspaces; the peers
run in processes with a workspace sourced (see interface_fixtures.py and interop_peers.py).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')

from interface_fixtures import (
    COMPANIONS,
    INTERFACES,
    WORKSPACES,
    InterfaceWorkspace,
    finish_peer,
    interface_workspace,
    peers,
    run_peer,
    start_peer,
)
from interop_peers import stereo_signal

from taco_ros import interop

pytestmark = pytest.mark.ros

UPSTREAM = json.loads((INTERFACES / 'upstream_type_hashes.json').read_text())
PEER_TIMEOUT_S = 360.0


@pytest.fixture(scope='module')
def vision_ws() -> InterfaceWorkspace:
    return interface_workspace('vision')


@pytest.fixture(scope='module')
def ros_drivers_ws() -> InterfaceWorkspace:
    return interface_workspace('ros_drivers_audio')


@pytest.fixture(scope='module')
def mgonzs13_ws() -> InterfaceWorkspace:
    return interface_workspace('mgonzs13_audio')


@pytest.mark.parametrize('name', list(WORKSPACES))
def test_test_packages_have_the_upstream_type_hashes(name: str) -> None:
    """A type hash covers every field name and type, nested types included: equal hashes mean
    the copies are wire-compatible with the released packages (Jazzy and later match on it)."""
    workspace = interface_workspace(name)
    for package_dir in (WORKSPACES[name], *COMPANIONS.get(name, ())):
        upstream = UPSTREAM[package_dir]
        built = {message: workspace.type_hash(upstream['package'], message)
                 for message in upstream['type_hashes']}
        assert built == upstream['type_hashes'], package_dir


def test_optional_outputs_say_why_not_here() -> None:
    outputs = interop.optional_outputs()
    assert set(outputs) == {interop.OUTPUT_DETECTIONS, interop.OUTPUT_DETECTIONS_3D,
                            interop.OUTPUT_MARKERS, interop.OUTPUT_MGONZS13_AUDIO,
                            interop.OUTPUT_ROS_DRIVERS_AUDIO}
    if importlib.util.find_spec('vision_msgs') is None:
        assert not outputs[interop.OUTPUT_DETECTIONS].available
        assert 'vision_msgs is not installed' in outputs[interop.OUTPUT_DETECTIONS].reason
        with pytest.raises(ValueError, match='vision_msgs is not installed'):
            interop.label_info(['dog', 'cat'], None, 0.5)
        assert not outputs[interop.OUTPUT_DETECTIONS_3D].available
    if importlib.util.find_spec('visualization_msgs') is None:
        assert outputs[interop.OUTPUT_MARKERS] == interop.OptionalOutput(
            interop.OUTPUT_MARKERS, False, 'visualization_msgs is not installed')
        with pytest.raises(ValueError, match='visualization_msgs is not installed'):
            interop.marker_array(None, [], None, 1.0)
    if importlib.util.find_spec('audio_common_msgs') is None:
        for name in (interop.OUTPUT_MGONZS13_AUDIO, interop.OUTPUT_ROS_DRIVERS_AUDIO):
            assert outputs[name] == interop.OptionalOutput(
                name, False, 'audio_common_msgs is not installed')


def test_vocabulary_must_leave_the_unlabeled_class_id_free() -> None:
    interop.check_vocabulary([str(i) for i in range(65534)])
    with pytest.raises(ValueError, match='uint16 class ids'):
        interop.check_vocabulary([str(i) for i in range(65535)])


@pytest.mark.parametrize('name,available', [
    ('vision', {interop.OUTPUT_DETECTIONS, interop.OUTPUT_DETECTIONS_3D, interop.OUTPUT_MARKERS}),
    ('ros_drivers_audio', {interop.OUTPUT_ROS_DRIVERS_AUDIO}),
    ('mgonzs13_audio', {interop.OUTPUT_MGONZS13_AUDIO}),
])
def test_optional_outputs_with_each_package(name: str, available: set[str]) -> None:
    report = run_peer(interface_workspace(name), 'report_outputs', {}, PEER_TIMEOUT_S)
    assert {k for k, (ok, _) in report['outputs'].items() if ok} == available
    if name == 'ros_drivers_audio':
        assert report['outputs'][interop.OUTPUT_MGONZS13_AUDIO][1] == (
            'the installed audio_common_msgs is the ros_drivers flavour, not mgonzs13')


# ------------------------------------------------------------------------ ros-drivers audio
def raw_audio_round_trip(workspace: InterfaceWorkspace, tmp_path: Path, mode: str,
                         use_builders: bool) -> tuple[dict, np.ndarray, dict]:
    rate, frames, chunks = 48000, 960, 12
    common = {'prefix': f'/interop_{mode}', 'rate': rate, 'frames': frames, 'chunks': chunks}
    consumer = start_peer(workspace, 'raw_audio_consumer', {
        **common, 'total_frames': frames * chunks, 'samples_path': str(tmp_path / 'decoded.npy')})
    publisher = start_peer(workspace, 'raw_audio_publisher', {
        **common, 'mode': mode, 'info_after': 5, 'use_builders': use_builders,
        'start_ns': 1_700_000_000_000_000_000})
    with peers(consumer, publisher):
        report = finish_peer(consumer, PEER_TIMEOUT_S)
        assert finish_peer(publisher, PEER_TIMEOUT_S) == {'done': True}
    return report, np.load(tmp_path / 'decoded.npy'), common


def expected_audio(common: dict) -> tuple[np.ndarray, list[float]]:
    rate, frames = common['rate'], common['frames']
    samples = np.concatenate([stereo_signal(k, frames, rate) for k in range(common['chunks'])])
    stamps = [1_700_000_000 + k * frames / rate for k in range(common['chunks'])]
    return samples.astype(np.float32) / 32768.0, stamps


def test_ros_drivers_audio_before_its_audio_info_is_held_then_decoded(
        ros_drivers_ws: InterfaceWorkspace, tmp_path: Path) -> None:
    """An audio_capture-style publisher at 48 kHz stereo S16LE whose AudioInfo comes after five
    chunks: every chunk is decoded at 48 kHz stereo, none lost (the node used to read them with
    the capture node's defaults, 16 kHz mono)."""
    report, samples, common = raw_audio_round_trip(ros_drivers_ws, tmp_path, 'late', False)
    assert report['held_at_info'] == 5 and report['received'] == common['chunks']
    assert report['rates'] == [48000] * common['chunks']
    assert report['channels'] == [2] * common['chunks']
    assert report['dropped'] == 0 and report['resets'] == [] and report['refusals'] == []
    expected, stamps = expected_audio(common)
    np.testing.assert_array_equal(samples, expected)
    assert report['stamps'] == pytest.approx(stamps, abs=1e-6)


def test_ros_drivers_audio_after_its_audio_info_from_the_mic_builders(
        ros_drivers_ws: InterfaceWorkspace, tmp_path: Path) -> None:
    """AudioInfo first, messages built by interop (the mic node's ros-drivers output)."""
    report, samples, common = raw_audio_round_trip(ros_drivers_ws, tmp_path, 'early', True)
    assert report['held_at_info'] == 0
    assert report['rates'] == [48000] * common['chunks']
    assert report['dropped'] == 0 and report['resets'] == [] and report['refusals'] == []
    expected, stamps = expected_audio(common)
    np.testing.assert_array_equal(samples, expected)
    assert report['stamps'] == pytest.approx(stamps, abs=1e-6)


def test_bag_replay_holds_ros_drivers_audio_until_its_audio_info(
        ros_drivers_ws: InterfaceWorkspace, tmp_path: Path) -> None:
    """``bag process`` reads a recorded ros-drivers stream as the node does: the chunks logged
    before the AudioInfo are held, then decoded at 48 kHz with their own receipt times (they used
    to be read at once with the capture node's defaults, 16 kHz mono); an mp3 AudioInfo is refused
    and what follows dropped, counted."""
    config = {'rate': 48000, 'frames': 4800, 'chunks': 8, 'info_after': 3, 'audio_channel': 0,
              'samples_path': str(tmp_path / 'samples.npy')}
    report = run_peer(ros_drivers_ws, 'raw_audio_bag_decoder', config, PEER_TIMEOUT_S)
    # three held; the AudioInfo releases them; then one at a time; the mp3 info, the last chunk
    assert report['released'] == [0, 0, 0, 3, 1, 1, 1, 1, 1, 0, 0], report
    assert report['rates'] == [48000] * 8
    assert report['received'] == pytest.approx([0.1 * k for k in range(8)])
    assert report['problems'] == [] and len(report['refusals']) == 2      # the info, the chunk
    assert all('mp3' in text for text in report['refusals'])
    assert report['dropped'] == 1
    left = np.concatenate([stereo_signal(k, 4800, 48000) for k in range(8)])[:, 0] / 32768.0
    np.testing.assert_array_equal(np.load(config['samples_path']), left.astype(np.float32))


# --------------------------------------------------------------------------- mgonzs13 audio
def test_mgonzs13_capturer_stream_is_decoded(mgonzs13_ws: InterfaceWorkspace) -> None:
    """audio_capturer_node-style AudioStamped (paInt16, stereo, 48 kHz, 512-frame chunks, sensor
    QoS, stamped before each blocking read): every chunk received decodes exactly."""
    config = {'prefix': '/interop_mgonzs13', 'rate': 48000, 'chunk': 512, 'wanted': 20}
    consumer = start_peer(mgonzs13_ws, 'mgonzs13_consumer', config)
    capturer = start_peer(mgonzs13_ws, 'mgonzs13_capturer', config)
    with peers(consumer, capturer):
        report = finish_peer(consumer, PEER_TIMEOUT_S)
        finish_peer(capturer, PEER_TIMEOUT_S)
    assert report['flavour'] == 'mgonzs13'
    assert len(report['indices']) >= 20
    assert report['max_error'] == 0.0
    assert set(report['rates']) == {48000} and {tuple(s) for s in report['shapes']} == {(512, 2)}
    indices, stamps = report['indices'], report['stamps']
    assert indices == sorted(set(indices))          # best effort may skip, never reorder
    assert all(b > a for a, b in itertools.pairwise(stamps))


@pytest.mark.parametrize('name', ['ros_drivers_audio', 'mgonzs13_audio'])
def test_mic_output_builders_survive_serialization(name: str) -> None:
    report = run_peer(interface_workspace(name), 'audio_builders', {}, PEER_TIMEOUT_S)
    flavour = 'ros_drivers' if name == 'ros_drivers_audio' else 'mgonzs13'
    assert report['flavour'] == flavour
    wanted = 'mgonzs13' if flavour == 'ros_drivers' else 'ros_drivers'
    assert report['other_flavour_refusal'].endswith(
        f'the installed audio_common_msgs is the {flavour} flavour, not {wanted}')
    assert report['refused'] == {}
    for dtype, result in report['errors'].items():
        assert result['max_error'] == 0.0, dtype
        assert result['stamp'] == pytest.approx(1500.000000123) and result['rate'] == 44100
        assert result['frame_id'] == 'mic'
    fields = {dtype: result['fields'] for dtype, result in report['errors'].items()}
    if flavour == 'mgonzs13':
        assert fields == {'float32': [1, 3, 44100, 300], 'int32': [2, 3, 44100, 300],
                          'int16': [8, 3, 44100, 300], 'int8': [16, 3, 44100, 300],
                          'uint8': [32, 3, 44100, 300]}
    else:
        assert fields == {
            'float32': ['F32LE', 3, 44100, 44100 * 3 * 32, 'wave'],
            'int32': ['S32LE', 3, 44100, 44100 * 3 * 32, 'wave'],
            'int16': ['S16LE', 3, 44100, 44100 * 3 * 16, 'wave'],
            'int8': ['S8', 3, 44100, 44100 * 3 * 8, 'wave'],
            'uint8': ['U8', 3, 44100, 44100 * 3 * 8, 'wave']}


# ------------------------------------------------------------------------------ vision_msgs
def test_detections_reach_a_vision_msgs_consumer(vision_ws: InterfaceWorkspace,
                                                 tmp_path: Path) -> None:
    """taco's Detection2DArray and latched LabelInfo, read by a consumer that joins later and
    uses only what vision_msgs documents (class ids through LabelInfo, box = centre ± size/2)."""
    vocabulary = ['dog', 'violin', 'car engine', 'speech', 'bird']
    objects = [{'top_labels': ['violin', 'speech'], 'top_scores': [0.31, 0.12],
                'bbox': [10, 4, 21, 17]},
               {'top_labels': ['dog'], 'top_scores': [0.27], 'bbox': [0, 30, 64, 18]}]
    marker = tmp_path / 'label_info_published'
    config = {'prefix': '/interop_vision', 'vocabulary': vocabulary, 'objects': objects,
              'marker': str(marker)}
    publisher = start_peer(vision_ws, 'detection_publisher', config)
    with peers(publisher):
        deadline = time.monotonic() + PEER_TIMEOUT_S
        while not marker.exists() and publisher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), finish_peer(publisher, 5.0)
        consumer = start_peer(vision_ws, 'detection_consumer', config)
        with peers(consumer):
            report = finish_peer(consumer, PEER_TIMEOUT_S)
        assert finish_peer(publisher, PEER_TIMEOUT_S) == {'done': True}
    assert report['names'] == {str(i): word for i, word in enumerate(vocabulary)}
    assert report['threshold'] == pytest.approx(0.5)
    assert report['frame_id'] == 'camera' and report['stamp'] == [1234, 500]
    assert [o['words'] for o in report['objects']] == [['violin', 'speech'], ['dog']]
    assert [o['class_ids'] for o in report['objects']] == [['1', '3'], ['0']]
    assert report['objects'][0]['scores'] == pytest.approx([0.31, 0.12])
    assert [o['box'] for o in report['objects']] == [[10, 4, 21, 17], [0, 30, 64, 18]]
    assert {(o['theta'], o['id'], o['header']) for o in report['objects']} == {(0.0, '', 'camera')}
