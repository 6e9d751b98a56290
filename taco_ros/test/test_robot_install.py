"""The README's robot install: the command block is what the Jazzy lane runs, requirements-robot.txt
covers every third-party import of the package with ranges that hold for numpy 1.26 (Jazzy) and numpy 2
(the Kilted lane's pins), and, inside the Jazzy lane, the running environment is the one a robot gets.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.robot

REPO = Path(__file__).resolve().parents[2]
README = REPO / 'README.md'
SETUP = REPO / 'scripts' / 'setup.sh'
PACKAGE_SRC = REPO / 'taco_ros' / 'taco_ros'
MARKER = '<!-- robot-commands'
# import name -> distribution, where they differ
DISTRIBUTIONS = {'PIL': 'pillow', 'open_clip': 'open_clip_torch', 'cv2': 'opencv-python-headless',
                 'yaml': 'PyYAML'}
# What a ROS install and its rosdep keys provide (python3-numpy, python3-opencv, python3-yaml).
FROM_THE_SYSTEM = {'numpy', 'cv2', 'yaml', 'rclpy', 'builtin_interfaces', 'std_msgs', 'sensor_msgs',
                   'diagnostic_msgs', 'lifecycle_msgs', 'rcl_interfaces', 'rosgraph_msgs',
                   'ament_index_python', 'launch', 'launch_ros', 'audio_common_msgs', 'taco_msgs',
                   'taco_ros'}
NO_DEPS = {'msclap'}     # installed by its own README line, pip install --no-deps


def readme_block() -> list[str]:
    text = README.read_text()
    block = text[text.index(MARKER):].split('```bash\n', 1)[1].split('```', 1)[0]
    return block.strip().splitlines()


def requirements(path: Path) -> dict[str, Requirement]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            requirement = Requirement(line)
            found[_normal(requirement.name)] = requirement
    return found


def _normal(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def pins(path: Path) -> dict[str, Version]:
    return {name: Version(next(iter(r.specifier)).version) for name, r in requirements(path).items()
            if len(r.specifier) == 1 and next(iter(r.specifier)).operator == '=='}


def test_readme_block_is_a_venv_on_top_of_the_ros_install() -> None:
    block = readme_block()
    assert block.index('source /opt/ros/jazzy/setup.bash') < block.index(
        'python3 -m venv --system-site-packages venv && touch venv/COLCON_IGNORE')
    assert 'rosdep install --from-paths src --ignore-src -y' in block
    assert 'pip install -r src/taco_ros/requirements-robot.txt' in block
    # colcon run by the venv's Python, so the installed scripts start with the venv's interpreter.
    assert 'python -m colcon build --symlink-install' in block
    assert not any(re.search(r'pip install .*--break-system-packages|sudo pip', line) for line in block)


def test_the_jazzy_lane_runs_the_readme_block(tmp_path: Path) -> None:
    """setup.sh's robot_commands: the README block with only its documented substitutions."""
    script = (f'source <(sed -n "/^robot_commands()/,/^}}/p" {SETUP}); cd {REPO}; '
              'ROS_PREFIX=/standin/opt/ros/jazzy WORKSPACE=/lane/taco_ws LANE=/lane robot_commands')
    ran = subprocess.run(['bash', '-c', script], capture_output=True, text=True, check=True).stdout
    expected = [line.replace('/opt/ros/jazzy', '/standin/opt/ros/jazzy')
                    .replace('~/taco_ws', '/lane/taco_ws')
                    .replace('<this repository>', '/lane/taco_ros.git')
                for line in readme_block()
                if not re.match(r'\s*(sudo apt-get|rosdep install)', line)]
    assert ran.strip().splitlines() == expected
    assert len(expected) == len(readme_block()) - 2      # only the apt and rosdep lines are left out


def _third_party_imports() -> set[str]:
    found = set()
    for path in PACKAGE_SRC.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split('.')[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != '__future__'}


def test_robot_requirements_cover_every_import() -> None:
    robot = requirements(REPO / 'requirements-robot.txt')
    missing = set()
    for name in _third_party_imports() - FROM_THE_SYSTEM - NO_DEPS:
        if _normal(DISTRIBUTIONS.get(name, name)) not in robot:
            missing.add(name)
    assert not missing, f'imported by taco_ros but not in requirements-robot.txt: {sorted(missing)}'
    assert 'numpy' in robot and robot['numpy'].specifier.contains('1.26.4')


@pytest.mark.parametrize('lock', ['requirements.txt', 'requirements-jazzy-lock.txt'])
def test_lane_pins_lie_inside_the_robot_ranges(lock: str) -> None:
    """Kilted's pins (numpy 2) and the Jazzy lane's (numpy 1.26) both satisfy the robot file."""
    robot = requirements(REPO / 'requirements-robot.txt')
    pinned = pins(REPO / lock)
    if lock == 'requirements-jazzy-lock.txt':
        assert 'numpy' not in pinned, 'the Jazzy lane must keep the system numpy'
        pinned['numpy'] = Version('1.26.4')    # requirements-jazzy-system.txt
    outside = {name: str(pinned[name]) for name, requirement in robot.items()
               if name in pinned and not requirement.specifier.contains(pinned[name])}
    assert not outside, f'{lock} pins versions outside requirements-robot.txt: {outside}'
    assert set(robot) <= set(pinned), f'{lock} does not pin {sorted(set(robot) - set(pinned))}'


def test_jazzy_system_pins_are_ubuntu_noble_versions() -> None:
    system = pins(REPO / 'requirements-jazzy-system.txt')
    assert system['numpy'] == Version('1.26.4')         # python3-numpy 1:1.26.4
    assert system['opencv-python-headless'].release[:2] == (4, 6)   # python3-opencv 4.6.0
    assert system['pyyaml'] == Version('6.0.1') and system['empy'].major == 3


@pytest.mark.skipif(os.environ.get('ROS_DISTRO') != 'jazzy', reason='checks the Jazzy lane itself')
def test_inside_the_jazzy_lane_ros_and_numpy_are_the_systems() -> None:
    import numpy
    import rclpy

    assert numpy.__version__ == '1.26.4'
    assert not Path(numpy.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), \
        'numpy must come from the system Python, not the venv'
    assert sys.prefix != sys.base_prefix, 'the suite runs in the robot venv'
    assert Path(rclpy.__file__).parts[-5:-2] == ('lib', 'python3.12', 'site-packages')
    assert sys.version_info[:2] == (3, 12)
