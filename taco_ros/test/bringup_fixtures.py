"""Helpers for the robot bring-up tests: an isolated DDS domain, bounded spinning, a file-backed ALSA mic."""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# The tests stop node processes the way the demo does (SIGINT, then SIGKILL).
from taco_ros.demo.live import stop_process as stop_process

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / 'install'
LIB_DIR = INSTALL / 'taco_ros' / 'lib' / 'taco_ros'
SHARE_DIR = INSTALL / 'taco_ros' / 'share' / 'taco_ros'
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)   # Linux


def isolate_dds() -> dict[str, str]:
    """Give this test process its own ROS domain (parallel test runs must not hear each other).

    Sets the variables in os.environ (for rclpy in this process) and returns them for subprocesses.
    """
    values = {'ROS_DOMAIN_ID': str(1 + os.getpid() % 99),
              'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    os.environ.update(values)
    return values


@contextmanager
def ros_session(name: str) -> Iterator[tuple[Any, Any, Any]]:
    """(context, node, executor) in a private rclpy context, shut down on exit."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    isolate_dds()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield context, node, executor
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()


def spin_until(executor: Any, done: Callable[[], bool], timeout: float) -> bool:
    """Spin until ``done()`` or the timeout; returns done()."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return done()




def speech_samples(text: str, sample_rate: int, workdir: Path) -> np.ndarray:
    """int16 mono speech of ``text`` from espeak-ng, resampled by sox."""
    wav = workdir / 'speech.wav'
    raw = workdir / 'speech.raw'
    subprocess.run(['espeak-ng', '-w', str(wav), text], check=True, capture_output=True)
    subprocess.run(['sox', '-D', str(wav), '-r', str(sample_rate), '-c', '1', '-b', '16',
                    '-e', 'signed-integer', '-t', 'raw', str(raw)], check=True, capture_output=True)
    return np.fromfile(raw, dtype='<i2')


class FileBackedMic:
    """A capture device that goes through the real ALSA → PortAudio → sounddevice stack.

    ALSA's ``file`` PCM plugin (wrapped in ``plug`` for a fixed rate/format/channels, ``null`` slave)
    reads its capture samples from ``infile`` (platform.md, "Audio"). A plain file is read as fast as the
    reader asks, so ``infile`` is a FIFO fed by a thread at the real sample rate: the device runs in real
    time like a microphone. The writer writes whole blocks (the ALSA period) so reads are never short.
    Sound is queued with :meth:`play`; silence is written in between.
    """

    DEVICE_NAME = 'tacofile'

    def __init__(self, workdir: Path, sample_rate: int, block_size: int):
        self.home = workdir / 'home'
        self.home.mkdir(parents=True, exist_ok=True)
        self.fifo = workdir / 'mic.fifo'
        os.mkfifo(self.fifo)
        # Held read-write so that opening the device never blocks and never sees end-of-file.
        self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        # A pipe of a few blocks: while nobody captures, silence is dropped as a real device drops it,
        # instead of piling up seconds of backlog that a new stream would read in one burst.
        page = 4096
        fcntl.fcntl(self._fd, F_SETPIPE_SZ, max(page, -(-2 * block_size * 2 // page) * page))
        self.dropped_blocks = 0
        self.sample_rate = sample_rate
        self.block_size = block_size
        self._pending: list[list[Any]] = []   # [samples, next position]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stalled = threading.Event()      # set: the device delivers nothing (a hung USB mic)
        self.play_started_ns: list[int] = []   # capture time (wall ns) of the first sample of each play()
        self._thread = threading.Thread(target=self._write_loop, daemon=True)

    def asoundrc(self) -> str:
        return f'''pcm.{self.DEVICE_NAME} {{
    type plug
    slave {{
        pcm {{
            type file
            file "/dev/null"
            infile "{self.fifo}"
            format "raw"
            slave.pcm "null"
        }}
        format S16_LE
        rate {self.sample_rate}
        channels 1
    }}
}}
'''

    def install(self) -> None:
        """Make the device visible to processes that use ``env()`` (a new PortAudio scan)."""
        (self.home / '.asoundrc').write_text(self.asoundrc())

    def env(self) -> dict[str, str]:
        return {'HOME': str(self.home)}

    def start(self) -> None:
        self._thread.start()

    def play(self, samples: np.ndarray) -> None:
        """Queue int16 samples; they are written after what is already queued."""
        with self._lock:
            self._pending.append([np.asarray(samples, dtype='<i2'), 0])

    def idle(self) -> bool:
        with self._lock:
            return not self._pending

    def _next_block(self) -> tuple[bytes, bool]:
        """The next block to write, and whether it carries queued sound."""
        block = np.zeros(self.block_size, dtype='<i2')
        filled = 0
        with self._lock:
            playing = bool(self._pending)
            while self._pending and filled < self.block_size:
                samples, position = self._pending[0]
                if position == 0:
                    # A real microphone captured this block during the period before it is written.
                    lead_ns = (self.block_size - filled) * 1_000_000_000 // self.sample_rate
                    self.play_started_ns.append(time.time_ns() - lead_ns)
                take = min(self.block_size - filled, samples.size - position)
                block[filled:filled + take] = samples[position:position + take]
                filled += take
                if position + take < samples.size:
                    self._pending[0][1] = position + take
                else:
                    self._pending.pop(0)
        return block.tobytes(), playing

    def _write_loop(self) -> None:
        period = self.block_size / self.sample_rate
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            delay = start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.stalled.is_set():
                k += 1
                continue
            data, playing = self._next_block()
            k += 1
            try:
                os.write(self._fd, data)    # <= PIPE_BUF: all or nothing
            except BlockingIOError:
                if not playing:
                    self.dropped_blocks += 1
                    continue
                # Queued sound is never dropped: wait for the reader (the tests check every sample).
                while not self._stop.is_set():
                    if select.select([], [self._fd], [], 0.1)[1]:
                        try:
                            os.write(self._fd, data)
                            break
                        except BlockingIOError:
                            continue

    def close(self) -> None:
        """Stop writing. Only after every reader has exited: a reader blocked on the FIFO cannot close."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        os.close(self._fd)


def tool_missing(*names: str) -> str | None:
    missing = [n for n in names if shutil.which(n) is None]
    return f'needs {", ".join(missing)}' if missing else None


# ------------------------------------------------------------------------------ launch file
LAUNCH_FILE = REPO / 'taco_ros' / 'launch' / 'taco.launch.py'

# What the launch file may use, module by module. launch/launch_ros are not installable here
# (platform.md), so the file is executed against recording stand-ins of exactly these names.
LAUNCH_API = {
    'launch': ['LaunchDescription'],
    'launch.actions': ['DeclareLaunchArgument'],
    'launch.conditions': ['IfCondition', 'UnlessCondition'],
    'launch.substitutions': ['LaunchConfiguration', 'PathJoinSubstitution', 'TextSubstitution'],
    'launch_ros.actions': ['Node', 'LifecycleNode'],
    'launch_ros.parameter_descriptions': ['ParameterValue'],
    'launch_ros.substitutions': ['FindPackageShare'],
}


class Recorded:
    """A stand-in launch entity: remembers its constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f'{type(self).__name__}{self.args}{self.kwargs}'


def _stand_in_module(name: str, members: list[str]) -> Any:
    import types
    module = types.ModuleType(name)
    for member in members:
        setattr(module, member, type(member, (Recorded,), {}))
    return module


def load_launch_description(path: Path = LAUNCH_FILE) -> Any:
    """Run ``generate_launch_description()`` of a launch file against the stand-ins.

    A name outside LAUNCH_API fails the import, which keeps the file to the declarative subset.
    """
    import importlib.util
    import sys

    saved = {name: sys.modules.get(name) for name in LAUNCH_API}
    try:
        for name, members in LAUNCH_API.items():
            sys.modules[name] = _stand_in_module(name, members)
        spec = importlib.util.spec_from_file_location('taco_launch_under_test', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


class LaunchResolver:
    """Evaluates stand-in substitutions the way ``ros2 launch`` would, for given argument values."""

    def __init__(self, description: Any, overrides: dict[str, str] | None = None,
                 share_dirs: dict[str, Path] | None = None) -> None:
        self.entities = list(description.args[0])
        self.declared = {e.args[0]: e.kwargs.get('default_value') for e in self.entities
                         if type(e).__name__ == 'DeclareLaunchArgument'}
        self.overrides = overrides or {}
        self.share_dirs = share_dirs or {'taco_ros': SHARE_DIR}
        self.used: set[str] = set()

    def nodes(self) -> list[Any]:
        return [e for e in self.entities if type(e).__name__ in ('Node', 'LifecycleNode')]

    def value(self, item: Any) -> Any:
        kind = type(item).__name__
        if isinstance(item, str):
            return item
        if isinstance(item, (list, tuple)):
            return ''.join(str(self.value(part)) for part in item)
        if kind == 'LaunchConfiguration':
            name = item.args[0]
            self.used.add(name)
            if name in self.overrides:
                return self.overrides[name]
            if name not in self.declared:
                raise KeyError(f'launch argument {name!r} is used but not declared')
            return self.value(self.declared[name])
        if kind == 'TextSubstitution':
            return item.kwargs.get('text', item.args[0] if item.args else '')
        if kind == 'PathJoinSubstitution':
            return os.path.join(*[str(self.value(part)) for part in item.args[0]])
        if kind == 'FindPackageShare':
            package = item.args[0]
            if package not in self.share_dirs:
                raise KeyError(f'share directory of {package!r} unknown here')
            return str(self.share_dirs[package])
        if kind == 'ParameterValue':
            return self.typed(self.value(item.args[0]), item.kwargs.get('value_type'))
        if kind in ('IfCondition', 'UnlessCondition'):
            truth = str(self.value(item.args[0])).strip().lower() in ('true', '1')
            return truth if kind == 'IfCondition' else not truth
        if isinstance(item, (bool, int, float)):
            return item
        raise TypeError(f'cannot evaluate {item!r}')

    @staticmethod
    def typed(text: Any, value_type: Any) -> Any:
        """launch_ros' conversion: YAML rules unless a value_type is given."""
        import yaml
        if value_type is str:
            return str(text)
        if value_type is bool:
            parsed = yaml.safe_load(str(text))
            if not isinstance(parsed, bool):
                raise ValueError(f'{text!r} is not a bool')
            return parsed
        return yaml.safe_load(str(text)) if isinstance(text, str) else text

    def enabled(self, node: Any) -> bool:
        condition = node.kwargs.get('condition')
        return True if condition is None else bool(self.value(condition))

    def parameters(self, node: Any) -> tuple[list[str], dict[str, Any]]:
        """(parameter files, {name: value}) of a node; later entries win, as in launch_ros."""
        files, values = [], {}
        for entry in node.kwargs.get('parameters', []):
            if isinstance(entry, dict):
                for key, raw in entry.items():
                    value = self.value(raw)
                    plain = type(raw).__name__ == 'LaunchConfiguration'
                    values[key] = self.typed(value, None) if plain else value
            else:
                files.append(str(self.value(entry)))
        return files, values

    def remappings(self, node: Any) -> dict[str, str]:
        return {str(self.value(a)): str(self.value(b)) for a, b in node.kwargs.get('remappings', [])}

    def command(self, node: Any, lib_dir: Path = LIB_DIR) -> list[str]:
        """The command line ``ros2 launch`` runs for a node (parameters passed as -p here)."""
        files, values = self.parameters(node)
        name = self.value(node.kwargs['name'])
        namespace = str(self.value(node.kwargs.get('namespace', '')))
        args = [str(lib_dir / node.kwargs['executable']), '--ros-args', '-r', f'__node:={name}']
        if namespace:
            args += ['-r', f'__ns:=/{namespace.strip("/")}']
        for file in files:
            args += ['--params-file', file]
        for key, value in values.items():
            text = ('true' if value else 'false') if isinstance(value, bool) else str(value)
            args += ['-p', f'{key}:={text}' if text != '' else f'{key}:=""']
        for source, target in self.remappings(node).items():
            args += ['-r', f'{source}:={target}']
        return args
