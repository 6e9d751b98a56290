"""Timestamped audio ring buffer, window cutting and camera-frame pairing (ROS-free).

The node receives audio as a stream of small stamped chunks (typically 32 ms) and camera frames at
~30 Hz. TACO factorises one audio window (``window_sec``, 1 s by default) against one frame, so this
module turns the stream into windows:

* :class:`AudioRingBuffer` places every chunk on one time axis by its stamp (the capture time of its
  first sample). Chunks that arrive late (out of order) are written where they belong; holes are
  zero-filled and remembered, so each window reports how much of it is made up; a jump back in time
  (a looping bag) or a change of sample rate / channel count starts the buffer afresh.
* :class:`WindowScheduler` decides which window is due: windows end on a grid
  ``origin + window_sec + k * hop_sec``, and when the consumer was busy only the newest complete
  window is handed out, the ones passed over are counted as dropped.
* :class:`FrameBuffer` keeps the last frames by stamp and pairs a window with the frame nearest to
  the window's end (or centre), within a tolerance.

Times are seconds on the ROS clock as floats (float64 keeps sub-microsecond resolution for epoch
stamps). Nothing here imports ROS or torch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from taco_ros.core.contract import AudioWindow

T = TypeVar('T')

RESET_BACKWARD_JUMP = 'backward_jump'
RESET_FORMAT_CHANGE = 'format_change'
RESET_LARGE_GAP = 'large_gap'


@dataclass
class PushReport:
    """What :meth:`AudioRingBuffer.push` did with one chunk.

    written: samples of the chunk stored in the buffer.
    gap_sec: silence zero-filled between the previous newest sample and this chunk.
    late_sec: how far before the newest sample the chunk started (out-of-order arrival), 0 if not.
    dropped: samples of the chunk discarded because they are older than the buffer holds.
    reset: why the buffer was emptied before storing this chunk (RESET_*), or None.
    """

    written: int = 0
    gap_sec: float = 0.0
    late_sec: float = 0.0
    dropped: int = 0
    reset: str | None = None


def as_frames(samples: np.ndarray) -> np.ndarray:
    """Return ``samples`` as float32 [n, C] (a 1-D array is one channel)."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise ValueError(f'audio samples must be [n] or [n, channels], got shape {array.shape}')
    return array


class AudioRingBuffer:
    """Fixed-capacity audio store indexed by capture time.

    Sample ``i`` (an absolute counter since the last reset) was captured at
    ``origin + i / sample_rate``; the buffer keeps the newest ``capacity_sec`` of it.

    Args:
        capacity_sec: seconds kept (window + history + slack).
        stamp_tolerance: a chunk whose stamp is within this of the newest sample's end is appended
            contiguously, absorbing clock jitter (capped at half a chunk so a single out-of-order
            chunk is still recognised).
        backward_jump_sec: a chunk starting this much before the newest sample is taken as a
            restart of time (bag loop, clock reset) and empties the buffer.
        max_gap_sec: a hole longer than this is not zero-filled; the buffer starts afresh.
    """

    def __init__(
        self,
        capacity_sec: float = 10.0,
        stamp_tolerance: float = 0.02,
        backward_jump_sec: float = 0.5,
        max_gap_sec: float = 5.0,
    ) -> None:
        if capacity_sec <= 0:
            raise ValueError(f'capacity_sec must be positive, got {capacity_sec}')
        if stamp_tolerance < 0 or backward_jump_sec <= 0 or max_gap_sec <= 0:
            raise ValueError(
                'stamp_tolerance must be >= 0 and backward_jump_sec, max_gap_sec > 0, got '
                f'{stamp_tolerance}, {backward_jump_sec}, {max_gap_sec}')
        self.capacity_sec = float(capacity_sec)
        self.stamp_tolerance = float(stamp_tolerance)
        self.backward_jump_sec = float(backward_jump_sec)
        self.max_gap_sec = float(max_gap_sec)
        self.sample_rate: int | None = None
        self.channels: int | None = None
        self._data = np.zeros((0, 1), np.float32)
        self._valid = np.zeros(0, bool)
        self._origin = 0.0
        self._head = 0      # absolute index one past the newest stored sample
        self._tail = 0      # absolute index of the oldest sample still held

    # -- state --------------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return self.sample_rate is None or self._head == self._tail

    @property
    def start_time(self) -> float | None:
        """Capture time of the oldest sample held, None when empty."""
        return None if self.empty else self._time_of(self._tail)

    @property
    def end_time(self) -> float | None:
        """Capture time one past the newest sample held, None when empty."""
        return None if self.empty else self._time_of(self._head)

    @property
    def fill(self) -> float:
        """Fraction of the capacity holding audio (zero-filled holes included)."""
        if self.empty:
            return 0.0
        return (self._head - self._tail) / self._data.shape[0]

    def clear(self) -> None:
        """Forget all audio and the stream format."""
        self.sample_rate = None
        self.channels = None
        self._data = np.zeros((0, 1), np.float32)
        self._valid = np.zeros(0, bool)
        self._head = self._tail = 0

    # -- writing ------------------------------------------------------------------------------
    def push(self, samples: np.ndarray, stamp: float, sample_rate: int,
             tolerance: float | None = None) -> PushReport:
        """Store one chunk whose first sample was captured at ``stamp``.

        ``tolerance`` overrides the contiguity tolerance for this chunk, without the half-chunk
        cap: for stamps made at receipt time, which jitter more than a chunk but are never out
        of order, a large value keeps the stream contiguous.
        Raises ValueError for a non-positive rate, a non-finite stamp or non-finite samples; the
        buffer is unchanged then.
        """
        frames = as_frames(samples)
        if int(sample_rate) <= 0:
            raise ValueError(f'sample_rate must be positive, got {sample_rate}')
        if not math.isfinite(stamp):
            raise ValueError(f'chunk stamp must be finite, got {stamp}')
        if not np.isfinite(frames).all():
            raise ValueError('audio chunk contains NaN or Inf samples')
        report = PushReport()
        if frames.shape[0] == 0:
            return report
        rate = int(sample_rate)
        if self.sample_rate is not None and (
                rate != self.sample_rate or frames.shape[1] != self.channels):
            self.clear()
            report.reset = RESET_FORMAT_CHANGE
        if self.sample_rate is None:
            self._start(frames.shape[1], rate, stamp)
            self._write(0, frames, report)
            return report

        head_time = self._time_of(self._head)
        offset = stamp - head_time
        chunk_sec = frames.shape[0] / rate
        if tolerance is None:
            tolerance = min(self.stamp_tolerance, 0.5 * chunk_sec)
        if offset <= -self.backward_jump_sec:
            report.reset = RESET_BACKWARD_JUMP
        elif offset > self.max_gap_sec:
            report.reset = RESET_LARGE_GAP
        if report.reset is not None:
            self._start(frames.shape[1], rate, stamp)
            self._write(0, frames, report)
            return report
        if abs(offset) <= tolerance:
            index = self._head
        else:
            index = self._head + round(offset * rate)
            if offset > 0:
                report.gap_sec = offset
            else:
                report.late_sec = -offset
        self._write(index, frames, report)
        return report

    def _start(self, channels: int, rate: int, stamp: float) -> None:
        capacity = max(1, math.ceil(self.capacity_sec * rate))
        self.sample_rate = rate
        self.channels = channels
        self._data = np.zeros((capacity, channels), np.float32)
        self._valid = np.zeros(capacity, bool)
        self._origin = float(stamp)
        self._head = self._tail = 0

    def _write(self, index: int, frames: np.ndarray, report: PushReport) -> None:
        capacity = self._data.shape[0]
        end = index + frames.shape[0]
        if end > self._head:
            # New samples past the head: everything between the head and `index` is a hole.
            self._clear_range(max(self._head, end - capacity), end)
            self._head = end
            self._tail = max(self._tail, self._head - capacity)
        first = max(index, self._tail)
        if first >= end:
            report.dropped = frames.shape[0]
            return
        report.dropped = first - index
        part = frames[first - index:]
        positions = np.arange(first, end) % capacity
        self._data[positions] = part
        self._valid[positions] = True
        report.written = part.shape[0]

    def _clear_range(self, first: int, end: int) -> None:
        if end <= first:
            return
        positions = np.arange(first, end) % self._data.shape[0]
        self._data[positions] = 0.0
        self._valid[positions] = False

    # -- reading ------------------------------------------------------------------------------
    def _time_of(self, index: int) -> float:
        return self._origin + index / float(self.sample_rate)

    def _index_of(self, time: float) -> int:
        return round((time - self._origin) * self.sample_rate)

    def covers(self, end: float) -> bool:
        """True when audio up to ``end`` has arrived (the newest sample reaches it)."""
        return not self.empty and self._index_of(end) <= self._head

    def window(self, start: float, duration: float, history_sec: float = 0.0) -> AudioWindow:
        """Cut ``duration`` seconds starting at ``start``.

        Parts not covered by received audio (before the oldest sample held, after the newest,
        or holes) are zeros and count in ``gap_fraction``. ``history`` holds up to
        ``history_sec`` of the audio just before the window (None when history_sec is 0).
        """
        if self.empty:
            raise ValueError('the audio buffer is empty')
        if duration <= 0:
            raise ValueError(f'window duration must be positive, got {duration}')
        first = self._index_of(start)
        count = max(1, round(duration * self.sample_rate))
        samples, valid = self._read(first, count)
        history = None
        if history_sec > 0:
            length = min(round(history_sec * self.sample_rate), max(0, first - self._tail))
            history, _ = self._read(first - length, length)
            history = _squeeze_mono(history)
        return AudioWindow(
            samples=_squeeze_mono(samples),
            sample_rate=int(self.sample_rate),
            start=self._time_of(first),
            history=history,
            gap_fraction=float(1.0 - valid.mean()),
        )

    def _read(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        samples = np.zeros((count, self.channels), np.float32)
        valid = np.zeros(count, bool)
        lo, hi = max(first, self._tail), min(first + count, self._head)
        if hi > lo:
            positions = np.arange(lo, hi) % self._data.shape[0]
            samples[lo - first:hi - first] = self._data[positions]
            valid[lo - first:hi - first] = self._valid[positions]
        return samples, valid


def _squeeze_mono(frames: np.ndarray) -> np.ndarray:
    return frames[:, 0].copy() if frames.shape[1] == 1 else frames


class WindowScheduler:
    """Which audio window is due next.

    Window ends lie on the grid ``origin + window_sec + k * hop_sec`` (origin: the first sample after
    the last reset). :meth:`due` returns the newest window that the received audio completes and
    that is newer than the last one handed out; windows it passes over are reported as skipped so
    a consumer that fell behind catches up instead of queueing.
    """

    def __init__(self, window_sec: float = 1.0, hop_sec: float = 1.0) -> None:
        self.window_sec = 1.0
        self.hop_sec = 1.0
        self.configure(window_sec, hop_sec)
        self.origin: float | None = None
        self.last_end: float | None = None

    def configure(self, window_sec: float, hop_sec: float) -> None:
        """Change the window length and hop; the next window continues from the last one."""
        if window_sec <= 0 or hop_sec <= 0:
            raise ValueError(f'window_sec and hop_sec must be positive, got {window_sec}, {hop_sec}')
        self.window_sec = float(window_sec)
        self.hop_sec = float(hop_sec)

    def reset(self, origin: float | None = None) -> None:
        """Start a new grid at ``origin`` (None: at the next audio seen)."""
        self.origin = origin
        self.last_end = None

    def due(self, audio_start: float, audio_end: float) -> tuple[float, int] | None:
        """Newest window end not later than ``audio_end``, with the count of windows skipped.

        ``audio_start`` is the oldest audio available; it becomes the grid origin on first use.
        Returns None when no new window is complete.
        """
        if self.origin is None:
            self.origin = audio_start
        # A tiny epsilon absorbs float error when audio_end lands exactly on a grid point.
        eps = 1e-6
        if self.last_end is None:
            first_end = self.origin + self.window_sec
            if audio_end + eps < first_end:
                return None
            steps = math.floor((audio_end + eps - first_end) / self.hop_sec)
            return first_end + steps * self.hop_sec, steps
        steps = math.floor((audio_end + eps - self.last_end) / self.hop_sec)
        if steps < 1:
            return None
        return self.last_end + steps * self.hop_sec, steps - 1

    def mark_done(self, end: float) -> None:
        """Record that the window ending at ``end`` was taken (processed or dropped)."""
        self.last_end = end


@dataclass
class Pairing(Generic[T]):
    """Result of :meth:`FrameBuffer.pair`.

    status: 'ok' (item is the nearest frame within tolerance), 'wait' (no frame at or after the
    target yet: a nearer one may still come), 'missing' (no frame within tolerance).
    """

    status: str
    item: T | None = None
    stamp: float | None = None
    offset: float | None = None     # frame stamp minus target time


class FrameBuffer(Generic[T]):
    """The most recent frames by stamp, for pairing with audio windows.

    Args:
        max_age_sec: frames older than the newest by more than this are forgotten.
        max_frames: hard cap on the frames held (memory bound for large images).
        backward_jump_sec: a frame this much older than the newest empties the buffer
            (bag loop); :meth:`push` returns True then.
    """

    def __init__(
        self, max_age_sec: float = 2.0, max_frames: int = 64, backward_jump_sec: float = 0.5,
    ) -> None:
        if max_age_sec <= 0 or max_frames < 1 or backward_jump_sec <= 0:
            raise ValueError(
                'max_age_sec, backward_jump_sec must be positive and max_frames >= 1, got '
                f'{max_age_sec}, {max_frames}, {backward_jump_sec}')
        self.max_age_sec = float(max_age_sec)
        self.backward_jump_sec = float(backward_jump_sec)
        self._frames: deque[tuple[float, T]] = deque(maxlen=int(max_frames))

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def newest_stamp(self) -> float | None:
        return self._frames[-1][0] if self._frames else None

    def clear(self) -> None:
        self._frames.clear()

    def push(self, stamp: float, item: T) -> bool:
        """Store a frame; returns True when a backward jump in time emptied the buffer first."""
        if not math.isfinite(stamp):
            raise ValueError(f'frame stamp must be finite, got {stamp}')
        jumped = False
        newest = self.newest_stamp
        if newest is not None and stamp <= newest - self.backward_jump_sec:
            self._frames.clear()
            jumped = True
        if self._frames and stamp < self._frames[-1][0]:
            # Slightly out of order: keep the deque sorted by stamp.
            items = sorted([*self._frames, (stamp, item)], key=lambda pair: pair[0])
            self._frames.clear()
            self._frames.extend(items)
        else:
            self._frames.append((stamp, item))
        limit = self._frames[-1][0] - self.max_age_sec
        while self._frames and self._frames[0][0] < limit:
            self._frames.popleft()
        return jumped

    def pair(self, target: float, tolerance: float, final: bool = False) -> Pairing[T]:
        """The frame nearest to ``target`` within ``tolerance``.

        Until a frame stamped at or after ``target`` has arrived, a nearer frame may still come,
        so the answer is 'wait' unless ``final`` (the caller's wait for the camera is over).
        """
        if not self._frames:
            return Pairing('missing' if final else 'wait')
        if self._frames[-1][0] < target and not final:
            return Pairing('wait')
        best_stamp, best_item = min(self._frames, key=lambda pair: abs(pair[0] - target))
        offset = best_stamp - target
        if abs(offset) <= tolerance:
            return Pairing('ok', best_item, best_stamp, offset)
        return Pairing('missing', None, best_stamp, offset)
