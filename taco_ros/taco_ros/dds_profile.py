"""Which Fast DDS profile a process gets, and through which environment variable.

Fast DDS gives each sending process 512 KB of shared memory; a raw 640x480 frame (0.9 MB) goes out
in fragments through it, and when a reader falls behind the fragments are refused: best-effort
frames are lost, reliable ones wait for repairs. config/fastdds_large_data.xml gives 32 MB.

Fast DDS 3 (Kilted and later) reads the profile from FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2
(Jazzy and before) from FASTRTPS_DEFAULT_PROFILES_FILE. Each reads only its own, and Kilted's rmw
warns in every node when the old one is set, so a process gets exactly one of them.

Used by taco.launch.py, the live demo and the benches; no rclpy import.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
FAST_DDS_2_DISTROS = frozenset({'humble', 'iron', 'jazzy'})
PROFILE_FILE = 'fastdds_large_data.xml'


def profile_variable(ros_distro: str) -> str:
    """The variable the Fast DDS of ``ros_distro`` reads (an unknown distro is taken as newer)."""
    return PROFILE_VARIABLES[1 if ros_distro in FAST_DDS_2_DISTROS else 0]


def inherited_profile(environment: Mapping[str, str]) -> str:
    """The profile file ``environment`` already names, under either variable ('' when none)."""
    return next((environment[name] for name in PROFILE_VARIABLES if environment.get(name)), '')


def profile_environment(profile: str | Path, environment: Mapping[str, str]) -> dict[str, str]:
    """The one variable that gives ``profile`` to a process started from ``environment``."""
    return {profile_variable(environment.get('ROS_DISTRO', '')): str(profile)}


def shipped_profile() -> Path:
    """config/fastdds_large_data.xml as installed in the taco_ros share directory."""
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory('taco_ros')) / 'config' / PROFILE_FILE
