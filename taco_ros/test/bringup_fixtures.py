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

# Where things are, and the launch-file helpers (importable from here as before).
from launch_fixtures import (
    INSTALL as INSTALL,
)
from launch_fixtures import (
    LAUNCH_FILE as LAUNCH_FILE,
)
from launch_fixtures import (
    LIB_DIR as LIB_DIR,
)
from launch_fixtures import (
    REPO as REPO,
)
from launch_fixtures import (
    SHARE_DIR as SHARE_DIR,
)
from launch_fixtures import (
    LaunchResolver as LaunchResolver,
)
from launch_fixtures import (
    load_launch_description as load_launch_description,
)

# The tests stop node processes the way the demo does (SIGINT, then SIGKILL).
from taco_ros.demo.live import stop_process as stop_process

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
