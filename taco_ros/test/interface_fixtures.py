"""Third-party interface packages for the interoperability tests, built with colcon and cached.

``test/interfaces/`` holds field-for-field copies of vision_msgs, visualization_msgs (the messages
taco_node publishes, built in the vision workspace) and of both audio_common_msgs flavours (each
directory's SOURCE.md names the upstream commit). The two audio_common_msgs share
their package name, so every package gets a workspace of its own. A workspace is built the way
scripts/setup.sh builds taco_msgs (the venv's colcon, the venv and the repository's install/ as
prefixes) into ``$TMPDIR/taco_ros_test_interfaces/<name>-<content hash>``: a later test run (or
another worktree) with the same definitions and the same venv reuses it.

The generated libraries carry no RPATH, so message classes of a workspace can only be loaded by
a process started with the workspace sourced: :meth:`InterfaceWorkspace.run` and
:meth:`InterfaceWorkspace.popen` start such processes.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEST_DIR = Path(__file__).resolve().parent
INTERFACES = TEST_DIR / 'interfaces'
REPO = TEST_DIR.parents[1]
VENV = REPO / '.venv'
PEERS = TEST_DIR / 'interop_peers.py'
BUILD_TIMEOUT_S = 3600.0    # a first build on a busy two-core machine takes minutes

# workspace name → package directory under test/interfaces/
WORKSPACES = {
    'vision': 'vision_msgs',
    'ros_drivers_audio': 'ros_drivers_audio_common_msgs',
    'mgonzs13_audio': 'mgonzs13_audio_common_msgs',
}
# workspace name → further packages built into it (a node process imports them together)
COMPANIONS = {'vision': ('visualization_msgs',)}


def cache_root() -> Path:
    return Path(os.environ.get('TACO_TEST_INTERFACES_CACHE',
                               Path(tempfile.gettempdir()) / 'taco_ros_test_interfaces'))


def dds_env() -> dict[str, str]:
    """A private ROS domain for this test process and the peers it starts."""
    return {'ROS_DOMAIN_ID': str(10 + os.getpid() % 200),
            'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


@dataclass(frozen=True)
class InterfaceWorkspace:
    """A built workspace holding one interface package."""

    name: str
    package_dir: str
    root: Path

    @property
    def install(self) -> Path:
        return self.root / 'install'

    @functools.cached_property
    def _sourced(self) -> dict[str, str]:
        script = f'source "{self.install / "local_setup.bash"}" && env -0'
        out = subprocess.run(['bash', '-c', script], check=True, capture_output=True,
                             env=dict(os.environ), timeout=120).stdout
        return dict(item.split('=', 1) for item in out.decode().split('\0') if '=' in item)

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment with the workspace sourced, plus ``extra``."""
        return {**self._sourced, **extra}

    def run(self, args: list[str], timeout: float, **extra_env: str) -> subprocess.CompletedProcess:
        """Run ``python args...`` with the workspace sourced; raises with its output on failure."""
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                                env=self.env(**extra_env), timeout=timeout, cwd=REPO)
        if result.returncode != 0:
            raise AssertionError(
                f'{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
        return result

    def popen(self, args: list[str], **extra_env: str) -> subprocess.Popen:
        """Start ``python args...`` with the workspace sourced (stdout/stderr piped, text)."""
        return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(**extra_env),
                                cwd=REPO)

    def type_hash(self, package: str, message: str) -> str:
        """RIHS01 type hash of ``package/msg/message`` as the build generated it."""
        description = json.loads(
            (self.install / package / 'share' / package / 'msg' / f'{message}.json').read_text())
        hashes = {entry['type_name']: entry['hash_string'] for entry in description['type_hashes']}
        return hashes[f'{package}/msg/{message}']


def _packages(name: str) -> list[Path]:
    return [INTERFACES / WORKSPACES[name], *(INTERFACES / extra for extra in COMPANIONS.get(name, ()))]


def _content_hash(packages: list[Path]) -> str:
    """Hash of the package sources and of the tools and dependencies they are built with."""
    digest = hashlib.sha256()
    for package_dir in packages:
        for path in sorted(p for p in package_dir.rglob('*') if p.is_file() and p.suffix != '.md'):
            digest.update(str(path.relative_to(INTERFACES)).encode() + b'\0' + path.read_bytes())
    digest.update(f'{sys.version}\0{VENV.resolve()}\0'.encode())
    for dependency in ('std_msgs', 'geometry_msgs', 'sensor_msgs', 'rosidl_generator_py'):
        xml = VENV / 'share' / dependency / 'package.xml'
        digest.update(xml.read_bytes() if xml.exists() else b'missing')
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_env() -> dict[str, str]:
    """The sourced ROS environment of the running tests (the .venv's wheels on the Kilted lane, the
    /opt/ros stand-in and the workspace on the Jazzy lane), plus the repository's own install/."""
    env = dict(os.environ)
    inherited = [p for p in env.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    own = [str(p) for p in sorted((REPO / 'install').glob('*')) if (p / 'share').is_dir()]
    prefixes = list(dict.fromkeys(([str(VENV)] if VENV.is_dir() else []) + own + inherited))
    env.update(CMAKE_PREFIX_PATH=os.pathsep.join(prefixes), AMENT_PREFIX_PATH=os.pathsep.join(prefixes),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')]))
    return env


def _build(packages: list[Path], root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for package in packages:
        shutil.copytree(package, root / 'src' / package.name)
    command = [sys.executable, '-m', 'colcon', '--log-base', str(root / 'log'), 'build',
               '--base-paths', str(root / 'src'), '--build-base', str(root / 'build'),
               '--install-base', str(root / 'install'), '--event-handlers', 'console_cohesion-',
               '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}',
               '-DBUILD_TESTING=OFF']
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=_build_env(),
                            timeout=BUILD_TIMEOUT_S, cwd=root)
    if result.returncode != 0:
        raise RuntimeError(f'colcon build of {[p.name for p in packages]} failed:\n'
                           f'{result.stdout[-6000:]}\n{result.stderr[-3000:]}')
    (root / 'BUILT').write_text(f'{time.monotonic() - started:.0f} s\n')


@functools.cache
def interface_workspace(name: str) -> InterfaceWorkspace:
    """The built workspace ``name`` (one of WORKSPACES), building it unless cached."""
    packages = _packages(name)
    root = cache_root() / f'{name}-{_content_hash(packages)}'
    with _locked(root.with_name(root.name + '.lock')):
        if not (root / 'BUILT').exists():
            _build(packages, root)
    return InterfaceWorkspace(name, WORKSPACES[name], root)


def build_seconds(workspace: InterfaceWorkspace) -> str:
    """How long the cached build took (for test reports)."""
    return (workspace.root / 'BUILT').read_text().strip()


def run_peer(workspace: InterfaceWorkspace, role: str, config: dict[str, Any],
             timeout: float) -> dict[str, Any]:
    """Run one role of interop_peers.py to completion; its JSON report (last stdout line)."""
    result = workspace.run([str(PEERS), role, json.dumps(config)], timeout, **dds_env())
    return json.loads(result.stdout.strip().splitlines()[-1])


def start_peer(workspace: InterfaceWorkspace, role: str, config: dict[str, Any]) -> subprocess.Popen:
    """Start one role of interop_peers.py in the background (see :func:`finish_peer`)."""
    return workspace.popen([str(PEERS), role, json.dumps(config)], **dds_env())


@contextmanager
def peers(*processes: subprocess.Popen) -> Iterator[None]:
    """Kill whichever of ``processes`` still runs when the block ends (a failed test included)."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def finish_peer(process: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """Wait for a peer started by :func:`start_peer`; its JSON report, or AssertionError."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f'peer did not finish in {timeout} s:\n{out}\n{err}') from None
    if process.returncode != 0:
        raise AssertionError(f'peer failed ({process.returncode}):\n{out}\n{err}')
    return json.loads(out.strip().splitlines()[-1])
