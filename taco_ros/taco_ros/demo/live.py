"""The live demo (``taco-ros demo --live``): taco_node as its own process (as ``ros2 launch`` would
start it), the bag played into it over DDS re-stamped to the wall clock so latencies are real, and
its outputs recorded. Windows the node cannot keep up with are skipped, as on a robot; the default
demo (:mod:`taco_ros.demo.run`) processes every window instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taco_ros import bags
from taco_ros.bags.results import WindowResult
from taco_ros.dds_profile import inherited_profile, profile_environment, shipped_profile
from taco_ros.demo.pictures import first_frame_offset, played_frames


def taco_node_executable() -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        prefix = Path(get_package_prefix('taco_ros'))
    except PackageNotFoundError:
        raise RuntimeError('taco_ros is not installed in this environment: run `make setup` and '
                           '`source install/setup.bash`') from None
    executable = prefix / 'lib' / 'taco_ros' / 'taco_node'
    if not executable.is_file():
        raise RuntimeError(f'{executable} is missing: rebuild with `make setup`')
    return executable


def _ros_value(value: Any) -> str:
    """A parameter value as ``-p name:=value`` text (YAML)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, list):
        return '[' + ', '.join(json.dumps(str(v)) for v in value) + ']'
    return str(value)


def taco_node_command(overrides: dict[str, Any], image_topic: str, audio_topic: str) -> list[str]:
    """taco_node with the installed config/taco.yaml, ``overrides`` and the bag's topics."""
    from taco_ros.bags.node_params import default_params_file

    compressed = image_topic.endswith('/compressed')
    camera = image_topic[:-len('/compressed')] if compressed else image_topic
    overrides = {
        **overrides, 'image_transport': 'compressed' if compressed else 'raw',
        # Replay is lossless here: keep every frame and chunk of the bag, and process every due
        # window in order (lock-step) instead of only the newest one, however slow the machine.
        'image_qos': 'reliable', 'audio_qos': 'reliable', 'window_queue': 16,
    }
    command = [str(taco_node_executable()), '--ros-args', '--params-file',
               str(default_params_file())]
    for name, value in overrides.items():
        if value not in (None, [], ''):
            command += ['-p', f'{name}:={_ros_value(value)}']
    command += ['-r', f'image:={camera}', '-r', f'image/compressed:={camera}/compressed',
                '-r', f'audio:={audio_topic}']
    return command


class _Spinner:
    """Spins an executor in a thread until stopped (stopped and joined before shutdown)."""

    def __init__(self, executor: Any):
        self._executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT (what Ctrl-C and ros2 launch send), then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return ''


@dataclass
class LiveRun:
    windows: list[WindowResult]     # latencies measured against the played time line
    frames: dict[int, Any]          # played stamp → RGB frame, for the windows' stamps
    start_ns: int                   # played time of the bag's start
    played_frames: int
    seconds: float                  # wall time from the first message played to the last result


@dataclass
class LiveOptions:
    rate: float
    startup_timeout: float
    drain_timeout: float
    domain_id: int | None = None


def run_live(bag: Path, results: Path, image_topic: str, audio_topic: str,
             overrides: dict[str, Any], options: LiveOptions, log_path: Path) -> LiveRun:
    """Play ``bag`` into a taco_node process and record its outputs into ``results``."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    if options.domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(options.domain_id)
    if not inherited_profile(os.environ):   # raw frames between two processes, as the launch file does
        os.environ.update(profile_environment(shipped_profile(), os.environ))
    bags.remove_bag(results)
    with open(log_path, 'w') as log:
        process = subprocess.Popen(taco_node_command(overrides, image_topic, audio_topic),
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        report, seconds = _play_and_record(bag, results, image_topic, audio_topic, options,
                                           process, log_path)
    finally:
        stop_process(process)
    windows = bags.read_windows(results)
    if not windows:
        raise RuntimeError(f'taco_node published no results; see {log_path}:\n{_tail(log_path)}')
    start_ns = report.image_stamps_ns[0] - first_frame_offset(bag, image_topic)
    if options.rate != 1.0:
        # Stamps advance at the recorded speed, the wall clock at 1/rate of it: measure latency
        # from the wall time at which each window's audio was complete.
        for window in windows:
            complete_ns = start_ns + (window.audio_end_ns - start_ns) / options.rate
            window.received_ns = window.audio_end_ns + round(window.received_ns - complete_ns)
    frames = played_frames(bag, image_topic, report.image_stamps_ns, {w.stamp_ns for w in windows})
    return LiveRun(windows, frames, start_ns, len(report.image_stamps_ns), seconds)


def _play_and_record(bag: Path, results: Path, image_topic: str, audio_topic: str,
                     options: LiveOptions, process: subprocess.Popen,
                     log_path: Path) -> tuple[bags.PlayReport, float]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('taco_demo', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = _Spinner(executor)
    recorder = None
    try:
        recorder = bags.BagRecorder(node, results, dict(bags.output_topics(debug_image=False)))
        player = bags.BagPlayer(node, bag, rate=options.rate, restamp=True,
                                topics=[image_topic, audio_topic], qos='reliable')
        deadline = time.monotonic() + options.startup_timeout
        while not player.wait_for_subscribers(1.0, [image_topic, audio_topic]):
            if process.poll() is not None:
                raise RuntimeError(f'taco_node exited ({process.returncode}) while starting:\n'
                                   f'{_tail(log_path)}')
            if time.monotonic() > deadline:
                raise RuntimeError(f'taco_node did not subscribe within {options.startup_timeout} s')
        time.sleep(0.5)   # let the recorder match taco_node's publishers too
        print(f'[demo] playing {bag} ({player.duration:.1f} s at rate {options.rate})', flush=True)
        started = time.monotonic()
        report = player.play()
        _drain(recorder, process, max(1, int(player.duration) - 1), options.drain_timeout)
        seconds = time.monotonic() - started
        if process.poll() is not None:
            print(f'[demo] WARNING: taco_node exited with code {process.returncode} during the run; '
                  f'last lines of {log_path}:\n{_tail(log_path)}', flush=True)
    finally:
        spinner.stop()
        if recorder is not None:
            recorder.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
    return report, seconds


def _drain(recorder: bags.BagRecorder, process: subprocess.Popen, expected: int,
           timeout: float) -> None:
    """Wait for the last results: until ``expected`` arrived and none came for 3 s, or timeout."""
    objects_topic = bags.NODE_NAME + '/objects'
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline and process.poll() is None:
        count = recorder.counts.get(objects_topic, 0)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        if count >= expected and time.monotonic() - last_change > 3.0:
            break
        time.sleep(0.2)
