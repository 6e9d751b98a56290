"""Issue 2: the two packages build, install where ROS tools look, and their messages cross processes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from launch_fixtures import INSTALL, REPO

PACKAGE_SRC = REPO / 'taco_ros' / 'taco_ros'

# Importable Python modules that are ROS packages (their rosdep key is the same name).
ROS_PYTHON_PACKAGES = {
    'rclpy', 'builtin_interfaces', 'std_msgs', 'sensor_msgs', 'diagnostic_msgs', 'lifecycle_msgs',
    'rcl_interfaces', 'rosgraph_msgs', 'taco_msgs', 'ament_index_python', 'launch', 'launch_ros',
    'std_srvs', 'geometry_msgs', 'vision_msgs', 'message_filters', 'cv_bridge', 'audio_common_msgs',
}
# ROS packages the code may import only behind try/except (optional, never declared as a hard dependency).
OPTIONAL_ROS_IMPORTS = {'audio_common_msgs', 'launch', 'launch_ros'}


def _domain_id() -> str:
    return str(100 + os.getpid() % 100)


def test_colcon_lists_both_packages() -> None:
    # The colcon of the Python running the tests (the .venv here, the system's on a robot).
    out = subprocess.run(
        [sys.executable, '-m', 'colcon', 'list', '--names-only', '--base-paths', str(REPO)],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(out) == ['taco_msgs', 'taco_ros']


@pytest.mark.parametrize('executable', ['taco_node', 'mic_node', 'taco-ros'])
def test_console_scripts_are_where_ros2_run_looks(executable: str) -> None:
    script = INSTALL / 'taco_ros' / 'lib' / 'taco_ros' / executable
    assert script.is_file() and os.access(script, os.X_OK), script


def test_taco_ros_command_runs_from_path() -> None:
    env = dict(os.environ)
    out = subprocess.run(
        ['bash', '-c', f'source {INSTALL}/setup.bash && taco-ros info'],
        capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'torch' in out.stdout and 'rclpy' in out.stdout and 'model files' in out.stdout


def test_share_files_installed() -> None:
    share = INSTALL / 'taco_ros' / 'share'
    assert (share / 'ament_index' / 'resource_index' / 'packages' / 'taco_ros').is_file()
    assert (share / 'taco_ros' / 'package.xml').is_file()
    assert (INSTALL / 'taco_msgs' / 'share' / 'taco_msgs' / 'msg' / 'AudioChunk.msg').is_file()


def _parse_manifest(path: Path):
    from catkin_pkg.package import parse_package
    return parse_package(str(path))


def test_package_xml_parses_with_catkin_pkg() -> None:
    for name in ('taco_msgs', 'taco_ros'):
        package = _parse_manifest(REPO / name / 'package.xml')
        assert package.name == name
        assert package.package_format == 3
        package.validate()


def _imported_top_level_modules(root: Path) -> dict[str, set[str]]:
    """Top-level module names imported anywhere under root → the files importing them."""
    found: dict[str, set[str]] = {}
    for path in root.rglob('*.py'):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split('.')[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_package_xml_declares_every_ros_import() -> None:
    package = _parse_manifest(REPO / 'taco_ros' / 'package.xml')
    declared = {dep.name for dep in package.build_depends + package.exec_depends}
    imported = _imported_top_level_modules(PACKAGE_SRC)
    ros_imports = (set(imported) & ROS_PYTHON_PACKAGES) - OPTIONAL_ROS_IMPORTS
    missing = {name: sorted(imported[name]) for name in ros_imports - declared}
    assert not missing, f'ROS packages imported but not declared in package.xml: {missing}'


def test_core_does_not_import_rclpy() -> None:
    imported = _imported_top_level_modules(PACKAGE_SRC / 'core')
    ros = {name: files for name, files in imported.items() if name in ROS_PYTHON_PACKAGES}
    assert not ros, f'taco_ros.core must stay ROS-free: {ros}'


PUBLISHER = textwrap.dedent('''
    import sys, time
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import RegionOfInterest
    from taco_msgs.msg import AudioChunk, SoundingObject, SoundingObjectArray

    rclpy.init()
    node = rclpy.create_node('foundation_publisher')
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    audio_pub = node.create_publisher(AudioChunk, 'audio', qos)
    objects_pub = node.create_publisher(SoundingObjectArray, 'objects', qos)

    audio = AudioChunk()
    audio.header.stamp = Time(sec=12, nanosec=345)
    audio.header.frame_id = 'mic'
    audio.sample_rate = 16000
    audio.channels = 2
    audio.sample_format = AudioChunk.FORMAT_S16
    audio.int16_data = [(-1) ** i * (i * 37 % 32768) for i in range(1024)]

    objects = SoundingObjectArray()
    objects.header.stamp = Time(sec=12, nanosec=999)
    objects.header.frame_id = 'camera'
    objects.audio_start = Time(sec=11, nanosec=500)
    objects.audio_end = Time(sec=12, nanosec=500)
    objects.sounding = True
    objects.confidence = 0.75
    objects.solver_steps = 42
    objects.mode = 'full'
    objects.objects = [SoundingObject(
        mask_value=1, label='dog', score=0.31, top_labels=['dog', 'cat'], top_scores=[0.31, 0.2],
        confidence=0.75, audio_activation=0.5,
        bbox=RegionOfInterest(x_offset=10, y_offset=20, width=30, height=40), factor_index=3)]

    deadline = time.monotonic() + 20
    while audio_pub.get_subscription_count() == 0 or objects_pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.05)
        if time.monotonic() > deadline:
            sys.exit('no subscriber')
    audio_pub.publish(audio)
    objects_pub.publish(objects)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
''')


@pytest.mark.ros
def test_messages_cross_processes_intact(tmp_path: Path) -> None:
    rclpy = pytest.importorskip('rclpy')
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from taco_msgs.msg import AudioChunk, SoundingObjectArray

    env = dict(os.environ, ROS_DOMAIN_ID=_domain_id())
    os.environ['ROS_DOMAIN_ID'] = env['ROS_DOMAIN_ID']
    script = tmp_path / 'publisher.py'
    script.write_text(PUBLISHER)
    publisher = subprocess.Popen([sys.executable, str(script)], env=env)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('foundation_subscriber', context=context)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        received: dict[str, object] = {}
        node.create_subscription(AudioChunk, 'audio', lambda m: received.setdefault('audio', m), qos)
        node.create_subscription(
            SoundingObjectArray, 'objects', lambda m: received.setdefault('objects', m), qos)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 30
        while len(received) < 2 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert set(received) == {'audio', 'objects'}, f'received only {sorted(received)}'

        audio = received['audio']
        assert (audio.header.stamp.sec, audio.header.stamp.nanosec) == (12, 345)
        assert audio.header.frame_id == 'mic'
        assert (audio.sample_rate, audio.channels, audio.sample_format) == (16000, 2, AudioChunk.FORMAT_S16)
        assert list(audio.int16_data) == [(-1) ** i * (i * 37 % 32768) for i in range(1024)]

        objects = received['objects']
        assert objects.header.frame_id == 'camera'
        assert (objects.audio_start.sec, objects.audio_end.nanosec) == (11, 500)
        assert objects.sounding and objects.solver_steps == 42 and objects.mode == 'full'
        (obj,) = objects.objects
        assert (obj.label, obj.mask_value, obj.factor_index) == ('dog', 1, 3)
        assert list(obj.top_labels) == ['dog', 'cat']
        assert obj.score == pytest.approx(0.31) and obj.confidence == pytest.approx(0.75)
        assert (obj.bbox.x_offset, obj.bbox.y_offset, obj.bbox.width, obj.bbox.height) == (10, 20, 30, 40)
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        publisher.wait(timeout=30)
    assert publisher.returncode == 0
