#!/usr/bin/env python3
"""Soak of taco_node live: a real-time 30 Hz 640x480 camera and a 16 kHz microphone for minutes.

taco_node runs as its own process as ``ros2 run`` starts it (the installed executable, config/taco.yaml,
``-p`` overrides: taco_tiny at --input-size px, random weights, --device), under its own name, topics
and ROS domain. This process publishes from its own rclpy node 640x480 rgb8 Images at 30 Hz and
AudioChunks of 512 s16 samples at 16 kHz (a tone in noise), reliable, stamped with the wall clock at
their nominal capture times, and records ~/objects and /diagnostics.

Steady phase (--minutes): windows due (the audio streamed, on the node's window grid), published,
their share against the 99 % target, drops by cause (the node's /diagnostics), latency (receipt of
~/objects minus the window's audio end), the frames and chunks the node took against those sent and
the largest input delays it reported, the node's VmRSS and its growth; then where windows were
lost (their times, late sends of the bench itself, the node's warnings). Cycle phase (--cycles N,
after the steady one; --minutes 0: only this): with the stream running, N times deactivate +
activate through the lifecycle services, --cycle-sec active each; the RSS after each cycle.

The load average is printed with the numbers: on a shared machine they move with it. Random
weights: every number is a cost, none is a result. Needs `source install/setup.bash`.

Usage: python bench/bench_soak.py [--minutes 10] [--cycles N] [--cycle-sec 10] [--input-size 128]
       [--device cpu] [--param name:=value ...] [--domain-id N] [--dds-profile XML] [--log FILE]
"""

from __future__ import annotations

import argparse
import array
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from taco_ros.dds_profile import PROFILE_VARIABLES, inherited_profile, profile_environment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'taco_ros'))
sys.path.insert(0, str(REPO / 'taco_ros' / 'test'))

WIDTH, HEIGHT, FPS = 640, 480, 30.0
RATE, CHUNK = 16000, 512
TARGET_SHARE = 0.99
FRAME_VARIANTS = 4          # distinct frames sent in turn
AUDIO_LOOP_CHUNKS = 125     # 4 s of audio sent in a loop
LATE_SEND_SEC = 0.1         # a send this late means the bench itself fell behind
SAMPLE_SEC, PROGRESS_SEC = 2.0, 30.0    # RSS sampling and progress line periods
DRAIN_QUIET_SEC, DRAIN_MAX_SEC = 3.0, 30.0  # stream stopped: no new window for 3 s = drained
INACTIVE_SEC = 1.0          # inactive time per lifecycle cycle
# Longer than the audio buffer's largest zero-filled hole (5 s): the node restarts its inputs
# between phases instead of filling the pause with windows that have no frame.
PAUSE_BETWEEN_PHASES = 6.0
SERVICE_TIMEOUT, STARTUP_TIMEOUT = 120.0, 300.0
TRANSITION_DEACTIVATE, TRANSITION_ACTIVATE = 4, 3   # lifecycle_msgs/Transition ids
MAX_LISTED = 20             # missing windows, late sends and node warnings listed per phase
LOG_LINE = re.compile(r'^\[(WARN|ERROR)\] \[(\d+\.\d+)\] \[[^\]]*\]: (.*)$')
SHOWN_PARAMETERS = ('window_sec', 'hop_sec', 'pair_with', 'pair_tolerance', 'frame_wait',
                    'window_queue', 'image_qos', 'audio_qos', 'image_qos_depth', 'audio_qos_depth')
INPUT_COUNTERS = ('late frames', 'stale frames', 'stray frames', 'audio gaps',
                  'late audio chunks', 'dropped audio samples', 'stray audio samples',
                  'bad images', 'bad audio', 'input restarts')


# ----------------------------------------------------------------------------------- the stream
class CameraMicStream:
    """Frames at FPS and audio chunks at RATE published in real time from a thread, each stamped
    with the wall clock at its nominal capture time; the messages are built once, only the stamps
    change."""

    def __init__(self, node: Any, image_topic: str, audio_topic: str) -> None:
        from node_fixtures import audio_chunk_msg, make_frame, tone
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from taco_msgs.msg import AudioChunk

        reliable = ReliabilityPolicy.RELIABLE
        self.image_pub = node.create_publisher(Image, image_topic, QoSProfile(
            depth=10, reliability=reliable))
        self.audio_pub = node.create_publisher(AudioChunk, audio_topic, QoSProfile(
            depth=50, reliability=reliable))
        self.images = []
        for seed in range(FRAME_VARIANTS):
            msg = Image(height=HEIGHT, width=WIDTH, encoding='rgb8', step=WIDTH * 3)
            msg.header.frame_id = 'camera'
            # An array.array is taken as it is; bytes would be checked byte by byte.
            msg.data = array.array('B', make_frame((HEIGHT, WIDTH), seed).tobytes())
            self.images.append(msg)
        loop = tone(AUDIO_LOOP_CHUNKS * CHUNK, 0, RATE)
        self.chunks = [audio_chunk_msg(loop[i * CHUNK:(i + 1) * CHUNK], 0.0, RATE)
                       for i in range(AUDIO_LOOP_CHUNKS)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_ns = 0                  # wall-clock stamp of the first message

    def start(self) -> None:
        self.frames_sent = self.chunks_sent = self.late_sends = 0
        self.max_lag = 0.0                 # latest send after its nominal time, seconds
        self.late_at: list[float] = []     # stream seconds of the first late sends
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from builtin_interfaces.msg import Time

        self.start_ns = time.time_ns()
        start = time.monotonic()
        while not self._stop.is_set():
            next_chunk, next_frame = self.chunks_sent * CHUNK / RATE, self.frames_sent / FPS
            due = min(next_chunk, next_frame)
            wait = due - (time.monotonic() - start)
            if wait > 0:
                self._stop.wait(wait)
                continue
            stamp_ns = self.start_ns + round(due * 1e9)
            stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
            if next_chunk <= next_frame:
                msg = self.chunks[self.chunks_sent % AUDIO_LOOP_CHUNKS]
                msg.header.stamp = stamp
                self.audio_pub.publish(msg)
                self.chunks_sent += 1
            else:
                msg = self.images[self.frames_sent % FRAME_VARIANTS]
                msg.header.stamp = stamp
                self.image_pub.publish(msg)
                self.frames_sent += 1
            self.max_lag = max(self.max_lag, -wait)
            if -wait > LATE_SEND_SEC:
                self.late_sends += 1
                if len(self.late_at) < MAX_LISTED:
                    self.late_at.append(due)


# ----------------------------------------------------------------------------------- the node
class NodeProcess:
    """taco_node as its own process, with its log in a file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, 'w') as log:
            self.process = subprocess.Popen(command, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def rss_mib(self) -> float:
        """VmRSS of the node process (0 once it has exited)."""
        try:
            with open(f'/proc/{self.pid}/status', encoding='ascii') as status:
                for line in status:
                    if line.startswith('VmRSS:'):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def log_lines(self) -> list[str]:
        return (self.log_path.read_text(errors='replace').splitlines()
                if self.log_path.is_file() else [])

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = '\n'.join(self.log_lines()[-20:])
            raise RuntimeError(f'taco_node exited with code {self.process.returncode}:\n{tail}')

    def warnings(self, t0: float, t1: float) -> list[tuple[float, str]]:
        """WARN/ERROR lines between wall times t0 and t1: (seconds after t0, text)."""
        found = []
        for line in self.log_lines():
            match = LOG_LINE.match(line)
            if match and t0 <= float(match[2]) <= t1 and 'RANDOM WEIGHTS' not in match[3]:
                found.append((float(match[2]) - t0, f'{match[1]} {match[3]}'))
        return found


class Window(NamedTuple):
    received: float     # wall clock when ~/objects arrived, s
    end: float          # the window's audio end stamp, s


class OutputRecorder:
    """The node's ~/objects (receipt time and window end) and its newest /diagnostics values."""

    def __init__(self, node: Any, node_name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from taco_msgs.msg import SoundingObjectArray

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.fqn = f'/{node_name}'
        self.lock = threading.Lock()
        self.windows: list[Window] = []
        self.status: dict[str, dict[str, str]] = {'inference': {}, 'inputs': {}}
        self.diagnostics_at = 0.0      # monotonic receipt of this node's newest status
        self.delay_max: dict[str, float] = {}   # largest input delay the node reported, ms
        self.objects_sub = node.create_subscription(
            SoundingObjectArray, f'{self.fqn}/objects', self._on_objects, reliable)
        self.diagnostics_sub = node.create_subscription(
            DiagnosticArray, '/diagnostics', self._on_diagnostics, reliable)

    def _on_objects(self, msg: Any) -> None:
        end = msg.audio_end.sec + msg.audio_end.nanosec * 1e-9
        with self.lock:
            self.windows.append(Window(time.time(), end))

    def _on_diagnostics(self, msg: Any) -> None:
        with self.lock:
            for status in msg.status:
                name, _, kind = status.name.rpartition(': ')
                if name == self.fqn and kind in self.status:
                    self.status[kind] = values = {kv.key: kv.value for kv in status.values}
                    self.diagnostics_at = time.monotonic()
                    for input_kind in ('image', 'audio'):
                        if value := values.get(f'{input_kind} delay max (ms)'):
                            self.delay_max[input_kind] = max(
                                float(value), self.delay_max.get(input_kind, -math.inf))

    def windows_since(self, index: int) -> list[Window]:
        with self.lock:
            return list(self.windows[index:])

    def snapshot(self) -> tuple[dict[str, str], dict[str, str], float]:
        with self.lock:
            return dict(self.status['inference']), dict(self.status['inputs']), self.diagnostics_at


# ----------------------------------------------------------------------------------- results
@dataclass
class PhaseResult:
    name: str
    stream: dict[str, Any] = field(default_factory=dict)   # what the bench sent
    due: int | None = None
    windows: list[Window] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)    # node counters during the phase
    received: Counter[str] = field(default_factory=Counter)  # messages the node took, by kind
    delay_max: dict[str, float] = field(default_factory=dict)  # node's input delays, ms, by kind
    inputs: dict[str, str] = field(default_factory=dict)    # the node's inputs status at the end
    rss: list[float] = field(default_factory=list)          # MiB, sampled
    rss_first_window: float | None = None
    cycles: list[tuple[int, float, int]] = field(default_factory=list)  # cycle, MiB, windows
    load: list[tuple[float, ...]] = field(default_factory=list)        # at start and end
    missing: list[float] = field(default_factory=list)     # stream s of unpublished window ends
    warnings: list[tuple[float, str]] = field(default_factory=list)   # node log, stream s


def drop_keys() -> dict[str, str]:
    """{cause: /diagnostics key} for every window drop cause the node reports."""
    from taco_ros.diagnostics import DROP_CAUSES

    return {cause: f'dropped windows ({cause.replace("_", " ")})' for cause in DROP_CAUSES}


def node_counts(inference: dict[str, str]) -> Counter[str]:
    """The counters of an inference status: processed, errors, cold starts, drops by cause."""
    keys = {'processed': 'windows processed', 'errors': 'errors',
            'forced cold starts': 'forced cold starts', **drop_keys()}
    return Counter({name: int(float(inference.get(key) or 0)) for name, key in keys.items()})


def received_counts(inputs: dict[str, str]) -> Counter[str]:
    """Frames and audio chunks the node's callbacks took (its inputs status, whole life)."""
    keys = {'frames': 'images received', 'chunks': 'audio messages received'}
    return Counter({name: int(float(inputs.get(key) or 0)) for name, key in keys.items()})


def due_windows(seconds: float, window_sec: float, hop_sec: float) -> int:
    """Windows on the grid ``window_sec + k * hop_sec`` that end within ``seconds`` of audio."""
    if seconds + 1e-9 < window_sec:
        return 0
    return math.floor((seconds - window_sec) / hop_sec + 1e-9) + 1


def missing_windows(ends: list[float], due: int, window_sec: float, hop_sec: float) -> list[float]:
    """Due window ends not among the published ``ends`` (both in s after the first sample)."""
    published = {round(end * 1e3) for end in ends}
    grid = (window_sec + k * hop_sec for k in range(due))
    return [end for end in grid if not any(round(end * 1e3) + d in published for d in (-1, 0, 1))]


# ----------------------------------------------------------------------------------- the run
class SoakBench:
    """The node process and the bench's rclpy node (stream, recorder, the node's lifecycle and
    parameter services), spun in a thread."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        import rclpy
        from lifecycle_msgs.srv import ChangeState
        from node_fixtures import small_model_config
        from rcl_interfaces.srv import GetParameters
        from rclpy.executors import SingleThreadedExecutor

        from taco_ros.demo.live import taco_node_command

        tag = f'soak_{os.getpid()}'
        self.node_name, self.args = f'taco_{tag}', args
        image_topic, audio_topic = f'/{tag}/camera/image_raw', f'/{tag}/mic/audio'
        self.model = str(small_model_config(work, args.input_size)) if args.input_size \
            else 'taco_tiny'
        command = taco_node_command({'model_config': self.model, 'allow_random_weights': True,
                                     'device': args.device}, image_topic, audio_topic)
        command += ['-r', f'__node:={self.node_name}']
        for text in args.param:
            command += ['-p', text]
        dds = {'ROS_DOMAIN_ID': str(args.domain_id), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
        if args.dds_profile:
            dds.update(profile_environment(Path(args.dds_profile).resolve(), os.environ))
        os.environ.update(dds)
        self.process = NodeProcess(command, dict(os.environ, **dds),
                                   Path(args.log) if args.log else work / 'taco_node.log')
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f'{tag}_bench', context=self.context)
        self.stream = CameraMicStream(self.node, image_topic, audio_topic)
        self.recorder = OutputRecorder(self.node, self.node_name)
        self.change_state = self.node.create_client(ChangeState, f'/{self.node_name}/change_state')
        self.get_parameters = self.node.create_client(GetParameters,
                                                      f'/{self.node_name}/get_parameters')
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()

    def close(self) -> None:
        from taco_ros.demo.live import stop_process

        try:
            stop_process(self.process.process)
        finally:
            self.executor.shutdown(timeout_sec=1.0)
            self._spinner.join(timeout=5)
            self.node.destroy_node()
            self.context.try_shutdown()

    def wait_ready(self) -> None:
        """Until the node subscribes to the stream and its ~/objects reaches the recorder; then
        read the node's window and QoS parameters."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        stream, recorder = self.stream, self.recorder
        while not (stream.image_pub.get_subscription_count() and recorder.objects_sub.
                   get_publisher_count() and stream.audio_pub.get_subscription_count()):
            self.process.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f'taco_node did not connect within {STARTUP_TIMEOUT} s:\n'
                                   + '\n'.join(self.process.log_lines()[-20:]))
            time.sleep(0.2)
        time.sleep(0.5)
        self.parameters = self._read_parameters(SHOWN_PARAMETERS)

    def _call(self, client: Any, request: Any) -> Any:
        """A service call answered while the spinner thread spins."""
        deadline = time.monotonic() + SERVICE_TIMEOUT
        if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT):
            raise RuntimeError(f'service {client.srv_name} did not appear')
        future = client.call_async(request)
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f'{client.srv_name} did not answer in {SERVICE_TIMEOUT} s')
            time.sleep(0.01)
        return future.result()

    def _transition(self, transition_id: int) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        if not self._call(self.change_state, request).success:
            raise RuntimeError(f'lifecycle transition {transition_id} failed (see the node log)')

    def _read_parameters(self, names: tuple[str, ...]) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters

        reply = self._call(self.get_parameters, GetParameters.Request(names=list(names)))
        fields = {1: 'bool_value', 2: 'integer_value', 3: 'double_value', 4: 'string_value'}
        return {name: getattr(value, fields.get(value.type, 'string_value'))
                for name, value in zip(names, reply.values, strict=True)}

    def _wait(self, seconds: float, every: Callable[[], None] | None = None) -> None:
        """Sleep in SAMPLE_SEC steps, calling ``every`` after each; fail if the node exits."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(SAMPLE_SEC, left))
            self.process.check()
            if every is not None:
                every()

    def _drain(self) -> None:
        """After the stream stops: until no window came for DRAIN_QUIET_SEC, then until a fresh
        /diagnostics status (the counters after the last window)."""
        deadline = time.monotonic() + DRAIN_MAX_SEC
        count, changed = len(self.recorder.windows), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - changed < DRAIN_QUIET_SEC:
            time.sleep(0.2)
            if len(self.recorder.windows) != count:
                count, changed = len(self.recorder.windows), time.monotonic()
        quiet = time.monotonic()
        while time.monotonic() < deadline and self.recorder.snapshot()[2] <= quiet:
            time.sleep(0.2)

    def _phase(self, name: str, body: Callable[[PhaseResult, int, float], None]) -> PhaseResult:
        """Stream while ``body(result, first window index, start)`` runs; then drain and count."""
        result = PhaseResult(name, load=[os.getloadavg()])
        index, before = len(self.recorder.windows), node_counts(self.recorder.snapshot()[0])
        received_before = received_counts(self.recorder.snapshot()[1])
        self.recorder.delay_max.clear()
        stream = self.stream
        stream.start()
        try:
            body(result, index, time.monotonic())
        finally:
            stream.stop()
        self._drain()
        inference, result.inputs, _ = self.recorder.snapshot()
        result.counts = node_counts(inference)
        result.counts.subtract(before)
        result.received = received_counts(result.inputs)
        result.received.subtract(received_before)
        result.delay_max = dict(self.recorder.delay_max)
        result.windows = self.recorder.windows_since(index)
        result.load.append(os.getloadavg())
        seconds = stream.chunks_sent * CHUNK / RATE
        result.stream = {'seconds': seconds, 'frames': stream.frames_sent,
                         'chunks': stream.chunks_sent, 'max_lag': stream.max_lag,
                         'late': stream.late_sends, 'late_at': list(stream.late_at)}
        t0 = stream.start_ns * 1e-9
        result.warnings = self.process.warnings(t0, time.time())
        if name == 'steady':
            window_sec, hop_sec = (float(self.parameters[k]) for k in ('window_sec', 'hop_sec'))
            result.due = due_windows(seconds, window_sec, hop_sec)
            result.missing = missing_windows([w.end - t0 for w in result.windows], result.due,
                                             window_sec, hop_sec)
        return result

    def steady(self, minutes: float) -> PhaseResult:
        def body(result: PhaseResult, index: int, started: float) -> None:
            def sample() -> None:
                result.rss.append(rss := self.process.rss_mib())
                windows = len(self.recorder.windows) - index
                if result.rss_first_window is None and windows:
                    result.rss_first_window = rss
                if len(result.rss) % round(PROGRESS_SEC / SAMPLE_SEC) == 0:
                    print(f'# {time.monotonic() - started:5.0f} s: {windows} windows, RSS '
                          f'{rss:.0f} MiB, load {os.getloadavg()[0]:.1f}', flush=True)

            sample()
            self._wait(minutes * 60.0, sample)

        return self._phase('steady', body)

    def cycle(self, cycles: int, active_sec: float) -> PhaseResult:
        def span(result: PhaseResult, index: int, cycle: int) -> None:
            since = time.time()
            self._wait(active_sec)
            windows = sum(w.received >= since for w in self.recorder.windows_since(index))
            result.rss.append(rss := self.process.rss_mib())
            result.cycles.append((cycle, rss, windows))
            print(f'# cycle {cycle}: RSS {rss:.1f} MiB, {windows} windows, load '
                  f'{os.getloadavg()[0]:.1f}', flush=True)

        def body(result: PhaseResult, index: int, started: float) -> None:
            span(result, index, 0)
            for cycle in range(1, cycles + 1):
                self._transition(TRANSITION_DEACTIVATE)
                time.sleep(INACTIVE_SEC)
                self._transition(TRANSITION_ACTIVATE)
                span(result, index, cycle)

        return self._phase('cycles', body)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[PhaseResult]]:
    """Start the node, run the phases the arguments ask for, stop the node; returns the node's
    window and QoS parameters and the phases' results."""
    with tempfile.TemporaryDirectory(prefix='bench_soak_') as tmp:
        bench = SoakBench(args, Path(tmp))
        try:
            print(f'# taco_node {bench.node_name} (pid {bench.process.pid}), domain '
                  f'{args.domain_id}, log {bench.process.log_path}; waiting for it', flush=True)
            bench.wait_ready()
            print(f'# node ready, RSS {bench.process.rss_mib():.0f} MiB', flush=True)
            phases = []
            if args.minutes > 0:
                phases.append(bench.steady(args.minutes))
            if args.cycles > 0:
                if phases:
                    time.sleep(PAUSE_BETWEEN_PHASES)
                phases.append(bench.cycle(args.cycles, args.cycle_sec))
        finally:
            bench.close()
    return bench.parameters, phases


# ----------------------------------------------------------------------------------- printing
def _table(rows: list[tuple[str, Any]]) -> None:
    print('\n| measure | value |\n|---|---|')
    for name, value in rows:
        print(f'| {name} | {value} |')


def _times(values: list[float]) -> str:
    more = len(values) - MAX_LISTED
    return ', '.join(f'{v:.2f}' for v in values[:MAX_LISTED]) + (f' (+{more})' if more > 0 else '')


def _common_rows(phase: PhaseResult) -> list[tuple[str, Any]]:
    """Stream, drops by cause and latency rows of either phase."""
    s, counts = phase.stream, phase.counts
    rows = [('audio streamed (s)', f'{s["seconds"]:.1f}'),
            ('frames / audio chunks sent', f'{s["frames"]} / {s["chunks"]}'),
            ('frames / audio chunks the node took (lost on the way)',
             f'{phase.received["frames"]} / {phase.received["chunks"]} '
             f'({s["frames"] - phase.received["frames"]} / '
             f'{s["chunks"] - phase.received["chunks"]})'),
            ('largest delay at the node, frame / audio chunk (ms; receipt - capture)',
             ' / '.join(f'{phase.delay_max[k]:.0f}' if k in phase.delay_max else '-'
                        for k in ('image', 'audio'))),
            (f'bench send lag max (ms) / sends > {LATE_SEND_SEC * 1e3:.0f} ms late',
             f'{s["max_lag"] * 1e3:.0f} / {s["late"]}'),
            ('windows published (~/objects received)', len(phase.windows)),
            ('windows processed (node /diagnostics)', counts['processed'])]
    for cause in drop_keys():
        target = f' (target 0: {"met" if counts[cause] == 0 else "NOT met"})' \
            if cause == 'no_frame' and phase.due is not None else ''
        rows.append((f'dropped ({cause.replace("_", " ")})', f'{counts[cause]}{target}'))
    rows.append(('window errors / forced cold starts',
                 f'{counts["errors"]} / {counts["forced cold starts"]}'))
    latency = np.array([w.received - w.end for w in phase.windows]) * 1e3
    rows.append(('latency mean / p95 / max (ms)', f'{latency.mean():.0f} / '
                 f'{np.percentile(latency, 95):.0f} / {latency.max():.0f}'
                 if latency.size else 'no window'))
    return rows


def _notes(phase: PhaseResult) -> None:
    """Where the losses were: input counters, unpublished windows, late sends, node warnings."""
    shown = [f'{k} {phase.inputs[k]}' for k in INPUT_COUNTERS
             if phase.inputs.get(k, '0') not in ('0', '')]
    print('node input counters (whole life, nonzero): ' + (', '.join(shown) or 'none'))
    if phase.missing:
        print(f'unpublished windows, end at (s into the stream): {_times(phase.missing)}')
    if phase.stream['late_at']:
        print(f'bench sends > {LATE_SEND_SEC * 1e3:.0f} ms late at (s into the stream): '
              f'{_times(phase.stream["late_at"])}')
    for seconds, text in phase.warnings[:MAX_LISTED]:
        print(f'node log at {seconds:.2f} s: {text}')


def _load_line(phase: PhaseResult) -> str:
    start, end = (' '.join(f'{v:.2f}' for v in load) for load in phase.load)
    return f'load average (1/5/15 min): start {start}, end {end}; {os.cpu_count()} CPUs'


def print_steady(phase: PhaseResult) -> None:
    due, published = phase.due or 0, len(phase.windows)
    dropped = sum(phase.counts[cause] for cause in drop_keys())
    share = published / due if due else float('nan')
    rss, first = phase.rss, phase.rss_first_window
    rows = _common_rows(phase)
    rows[5:5] = [('windows due (grid over the audio streamed)', due)]
    rows += [('share published', f'{100 * share:.1f} %'),
            ('unaccounted (due - published - dropped - errors)',
             due - published - dropped - phase.counts['errors']),
            ('node RSS stream start / first window / end / max (MiB)',
             f'{rss[0]:.1f} / {first or 0:.1f} / {rss[-1]:.1f} / {max(rss):.1f}'),
            ('RSS growth stream start → end', f'{100 * (rss[-1] - rss[0]) / rss[0]:+.2f} %')]
    if first:
        rows.append(('RSS growth first window → end', f'{100 * (rss[-1] - first) / first:+.2f} %'))
    print(f'\n### steady: {phase.stream["seconds"] / 60:.1f} min\n{_load_line(phase)}')
    _table(rows)
    _notes(phase)
    verdict = 'met' if share >= TARGET_SHARE and phase.counts['no_frame'] == 0 else 'NOT met'
    print(f'published/due = {published}/{due} = {share:.4f} against the target '
          f'{TARGET_SHARE:.2f} with no window dropped for lack of a frame: {verdict}')


def print_cycles(phase: PhaseResult) -> None:
    print(f'\n### lifecycle cycles: {len(phase.cycles) - 1} x (deactivate, activate), stream '
          f'running\n{_load_line(phase)}')
    _table(_common_rows(phase))
    print('\n| cycle | RSS (MiB) | Δ previous (MiB) | windows in the active span |\n|---|---|---|---|')
    for i, (cycle, rss, windows) in enumerate(phase.cycles):
        delta = f'{rss - phase.cycles[i - 1][1]:+.1f}' if i else ''
        print(f'| {cycle} | {rss:.1f} | {delta} | {windows} |')
    _notes(phase)
    rss = [mib for _, mib, _ in phase.cycles]
    if len(rss) >= 3:     # from cycle 1 on: the first activation's allocations are not growth
        print(f'RSS after cycle 1 → after cycle {len(rss) - 1}: {rss[1]:.1f} → {rss[-1]:.1f} MiB, '
              f'{(rss[-1] - rss[1]) / (len(rss) - 2):+.2f} MiB per cycle')


def print_report(args: argparse.Namespace, parameters: dict[str, Any],
                 phases: list[PhaseResult]) -> None:
    model = f'taco_tiny_{args.input_size}' if args.input_size else 'taco_tiny'
    print(f'\n## taco_node soak: {WIDTH}x{HEIGHT} rgb8 Image @ {FPS:g} Hz + AudioChunk s16 '
          f'{CHUNK} @ {RATE} Hz, reliable; model {model} (random weights), device {args.device}')
    print('node parameters: ' + ', '.join(f'{k} {v}' for k, v in parameters.items()))
    print(f'Fast DDS profile (both processes): '
          f'{inherited_profile(os.environ) or "none (the default 512 KB shared-memory segment)"}')
    for phase in phases:
        (print_steady if phase.name == 'steady' else print_cycles)(phase)
    print('random weights: costs only, nothing here is a result')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=10.0,
                        help='steady streaming time (0: none, only --cycles)')
    parser.add_argument('--cycles', type=int, default=0,
                        help='lifecycle cycles (deactivate + activate) after the steady phase')
    parser.add_argument('--cycle-sec', type=float, default=10.0, help='active time per cycle')
    parser.add_argument('--input-size', type=int, default=128,
                        help='CLIP input size of taco_tiny, px (0: as packaged)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='another taco_node parameter (repeatable)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: one derived from this process id)')
    parser.add_argument('--dds-profile', default=None, metavar='XML',
                        help='Fast DDS profile for the bench and the node, e.g. '
                        'taco_ros/config/fastdds_large_data.xml (default: the environment\'s '
                        f'{PROFILE_VARIABLES[0]}, if any)')
    parser.add_argument('--log', default=None, help="taco_node's log file (default: temporary)")
    args = parser.parse_args(argv)
    if min(args.minutes, args.cycles) < 0 or args.minutes == args.cycles == 0 \
            or args.cycle_sec <= 0:
        parser.error('--minutes and --cycles must be >= 0, not both 0; --cycle-sec > 0')
    if args.domain_id is None:
        from node_fixtures import unique_domain_id

        args.domain_id = unique_domain_id()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_report(args, *run(args))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
