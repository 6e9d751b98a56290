"""taco_node's health on /diagnostics: rate meters, counters and the two DiagnosticStatus builders.

The node keeps a :class:`NodeStats` (thread-safe: input callbacks and the inference thread both
count) and once per ``diagnostics_period`` turns it, with a :class:`PolicyState` snapshot of its
window policy, into two statuses named after the node's fully qualified name:
``<fqn>: inputs`` (rates, buffer, bad or refused messages, input restarts) and
``<fqn>: inference`` (windows, drops by cause, latency, per-stage times, device, GPU memory).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from taco_ros.core.contract import TacoResult

# Input problems (counted by NodeStats.problem) that turn the inputs status to WARN.
INPUT_PROBLEMS = ('bad_images', 'zero_stamp_images', 'oversized_images', 'bad_audio',
                  'empty_audio', 'oversized_audio', 'refused_audio', 'bad_depth', 'oversized_depth',
                  'unusable_depth')
# Counters shown in the inputs status, in this order.
INPUT_COUNTERS = ('images_received', 'audio_messages_received', *INPUT_PROBLEMS,
                  'refused_audio_chunks', 'held_audio_dropped', 'audio_format_changes',
                  'unstamped_audio', 'audio_gaps', 'audio_gap_ms', 'late_audio_chunks',
                  'dropped_audio_samples', 'stray_audio_samples', 'unpaired_camera_info',
                  'depth_images_received', 'windows_without_depth', 'objects_without_position')
# Input delays reported over this many newest messages (5 s of a 30 Hz camera).
DELAY_SAMPLES = 150
# Window drop causes (WindowPolicy.drops) in the order they are reported.
DROP_CAUSES = ('busy', 'no_frame', 'frame_evicted', 'expired', 'restart', 'unusable_frame')


class RateMeter:
    """Events (or amounts) per second over a sliding horizon."""

    def __init__(self, horizon: float = 5.0) -> None:
        self.horizon = horizon
        self._events: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float, amount: float = 1.0) -> None:
        with self._lock:
            self._events.append((now, amount))
            self._trim(now)

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            return sum(amount for _, amount in self._events) / self.horizon

    def last(self) -> float | None:
        with self._lock:
            return self._events[-1][0] if self._events else None

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.horizon:
            self._events.popleft()


class NodeStats:
    """Counters and recent measurements of one node (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.image_rate = RateMeter()
        self.audio_rate = RateMeter()
        self.audio_seconds = RateMeter()
        self.window_rate = RateMeter()
        self.latency: deque[float] = deque(maxlen=50)
        # Receipt minus capture time of the newest inputs, seconds (deque appends are atomic).
        self.image_delay: deque[float] = deque(maxlen=DELAY_SAMPLES)
        self.audio_delay: deque[float] = deque(maxlen=DELAY_SAMPLES)
        self.stages: deque[dict[str, float]] = deque(maxlen=50)
        self.steps: deque[int] = deque(maxlen=50)
        self.last_error = ''
        self.last_input_problem = ''
        self.last_notice = ''
        self._reported: Counter[str] = Counter()

    def add(self, key: str, amount: float = 1) -> None:
        with self.lock:
            self.counts[key] += amount

    def problem(self, key: str, message: str) -> None:
        """Count an input problem and remember its message for the status."""
        with self.lock:
            self.counts[key] += 1
            self.last_input_problem = message

    def window_done(self, latency: float, result: TacoResult, now: float) -> None:
        with self.lock:
            self.counts['windows'] += 1
            self.counts['silent_windows'] += int(not result.sounding)
            self.counts['solver_backoffs'] += result.solver_backoffs
            self.latency.append(latency)
            self.stages.append(dict(result.timings))
            self.steps.append(int(result.steps))
        self.window_rate.tick(now)

    def since_last_report(self, drops: Mapping[str, int]) -> Counter[str]:
        """Increments of the counters and the window drops since the previous call."""
        with self.lock:
            current = Counter(self.counts)
            current.update({f'drop_{k}': v for k, v in drops.items()})
            delta = Counter({k: v - self._reported.get(k, 0) for k, v in current.items()})
            self._reported = current
        return delta

    def clear_measurements(self) -> None:
        """Forget recent windows (cleanup): counters stay, per-window records go."""
        with self.lock:
            self.latency.clear()
            self.image_delay.clear()
            self.audio_delay.clear()
            self.stages.clear()
            self.steps.clear()


@dataclass
class PolicyState:
    """What the diagnostics read from the window policy, copied under the node's input lock."""

    fill: float = 0.0
    sample_rate: int | None = None
    frames_held: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)


@dataclass
class NodeView:
    """The node's side of a report: identity, state and the thresholds in use."""

    name: str               # fully qualified name
    lifecycle: str
    parameters: Mapping[str, Any]
    audio_kind: str | None
    device: str = ''
    random_weights: bool = False
    gpu_memory: dict[str, str] = field(default_factory=dict)
    raw_audio: str = ''         # ros-drivers audio: the format in use or 'waiting for audio_info'
    optional_off: str = ''      # optional outputs this environment cannot publish, and why


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def _counter_text(counter: Mapping[str, int]) -> str:
    return ', '.join(f'{k}: {v}' for k, v in sorted(counter.items())) or '0'


def _delay_values(kind: str, delays: deque[float]) -> dict[str, str]:
    """Mean and max of an input's recent delays (receipt minus capture), in ms."""
    recent = list(delays)
    return {f'{kind} delay mean (ms)': f'{_mean(recent) * 1e3:.0f}' if recent else '',
            f'{kind} delay max (ms)': f'{max(recent) * 1e3:.0f}' if recent else ''}


def inputs_status(node: NodeView, stats: NodeStats, policy: PolicyState, delta: Counter[str],
                  now: float) -> DiagnosticStatus:
    """``<fqn>: inputs``: rates, buffer, refused and odd messages, input restarts."""
    values = {
        'image rate (Hz)': f'{stats.image_rate.rate(now):.1f}',
        'audio chunk rate (Hz)': f'{stats.audio_rate.rate(now):.1f}',
        'audio seconds per second': f'{stats.audio_seconds.rate(now):.2f}',
        'audio sample rate': str(policy.sample_rate or 0),
        'audio message type': str(node.audio_kind or node.parameters['audio_msg_type']),
        'audio format': node.raw_audio,
        'audio buffer fill': f'{policy.fill:.2f}',
        'frames held': str(policy.frames_held),
        **_delay_values('image', stats.image_delay),
        **_delay_values('audio', stats.audio_delay),
    }
    with stats.lock:
        counts = Counter(stats.counts)
        last_problem, last_notice = stats.last_input_problem, stats.last_notice
    for key in INPUT_COUNTERS:
        values[key.replace('_', ' ')] = f'{counts.get(key, 0):g}'
    for key, count in sorted(policy.events.items()):
        values[key.replace('_', ' ')] = str(count)
    values['input restarts'] = _counter_text(policy.restarts)
    values['last input notice'] = last_notice
    level, message = DiagnosticStatus.OK, 'inputs ok'
    if node.lifecycle == 'active':
        timeout = node.parameters['input_timeout']
        silent = [name for name, meter in (('image', stats.image_rate), ('audio', stats.audio_rate))
                  if meter.last() is None or now - meter.last() > timeout]
        if silent:
            level = DiagnosticStatus.WARN
            message = f'no {" and no ".join(silent)} input for {timeout:g} s'
        if node.raw_audio.startswith('waiting for audio_info'):
            level, message = DiagnosticStatus.WARN, node.raw_audio
    problems = sum(delta.get(k, 0) for k in INPUT_PROBLEMS)
    if problems:
        level = DiagnosticStatus.WARN
        message = f'{problems:g} bad input message(s): {last_problem}'
    return DiagnosticStatus(
        level=level, name=f'{node.name}: inputs', message=message, hardware_id=node.name,
        values=[KeyValue(key=k, value=v) for k, v in values.items()])


def inference_status(node: NodeView, stats: NodeStats, policy: PolicyState, delta: Counter[str],
                     now: float) -> DiagnosticStatus:
    """``<fqn>: inference``: windows, drops by cause, latency, stage times, device, memory."""
    p = node.parameters
    with stats.lock:
        latency, stages, steps = list(stats.latency), list(stats.stages), list(stats.steps)
        counts = Counter(stats.counts)
        last_error = stats.last_error
    values = {
        'state': node.lifecycle,
        'device': node.device,
        'model config': str(p['model_config']),
        'mode': str(p['mode']),
        'random weights': str(node.random_weights),
        'window queue': str(p['window_queue']),
        'windows processed': str(counts.get('windows', 0)),
        'window rate (Hz)': f'{stats.window_rate.rate(now):.2f}',
        'silent windows': str(counts.get('silent_windows', 0)),
        'optional outputs off': node.optional_off,
        'skipped detections': f'{counts.get("skipped_detections", 0):g}',
    }
    for cause in DROP_CAUSES:
        values[f'dropped windows ({cause.replace("_", " ")})'] = str(policy.drops.get(cause, 0))
    values.update({
        'forced cold starts': f'{counts.get("forced_cold_starts", 0):g}',
        'solver step back-offs': f'{counts.get("solver_backoffs", 0):g}',
        'errors': f'{counts.get("errors", 0):g}',
        'last error': last_error,
        'window latency last (ms)': f'{latency[-1] * 1e3:.0f}' if latency else '',
        'window latency mean (ms)': f'{_mean(latency) * 1e3:.0f}' if latency else '',
        'window latency max (ms)': f'{max(latency) * 1e3:.0f}' if latency else '',
        'solver steps mean': f'{_mean(steps):.1f}' if steps else '',
    })
    for stage in sorted({k for timing in stages for k in timing}):
        values[f'{stage} mean (ms)'] = f'{_mean(t.get(stage, 0.0) for t in stages):.1f}'
    values.update(node.gpu_memory)
    level, message = _inference_level(node, delta, latency[-1] if latency else 0.0, last_error)
    return DiagnosticStatus(
        level=level, name=f'{node.name}: inference', message=message, hardware_id=node.device,
        values=[KeyValue(key=k, value=v) for k, v in values.items()])


def _inference_level(node: NodeView, delta: Counter[str], last_latency: float,
                     last_error: str) -> tuple[bytes, str]:
    p = node.parameters
    if node.lifecycle != 'active':
        return DiagnosticStatus.OK, node.lifecycle
    if delta.get('errors', 0):
        return DiagnosticStatus.ERROR, f'window failed: {last_error}'
    if last_latency > p['latency_error']:
        return DiagnosticStatus.ERROR, f'window latency {last_latency:.2f} s'
    if last_latency > p['latency_warn']:
        return DiagnosticStatus.WARN, f'window latency {last_latency:.2f} s'
    dropped = {cause: delta.get(f'drop_{cause}', 0) for cause in DROP_CAUSES}
    if any(dropped.values()):
        text = ', '.join(f'{count} {cause.replace("_", " ")}'
                         for cause, count in dropped.items() if count)
        return DiagnosticStatus.WARN, f'dropped windows: {text}'
    if node.random_weights:
        return DiagnosticStatus.WARN, 'RANDOM WEIGHTS: outputs are meaningless'
    return DiagnosticStatus.OK, 'ok'


def gpu_memory(device: Any) -> dict[str, str]:
    """Allocated and reserved CUDA memory of ``device`` (empty off CUDA)."""
    if device is None or getattr(device, 'type', None) != 'cuda':
        return {}
    import torch

    allocated = torch.cuda.memory_allocated(device) / 2 ** 20
    reserved = torch.cuda.memory_reserved(device) / 2 ** 20
    return {'GPU memory allocated (MiB)': f'{allocated:.0f}',
            'GPU memory reserved (MiB)': f'{reserved:.0f}'}
