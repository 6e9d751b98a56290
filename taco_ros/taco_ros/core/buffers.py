"""Timestamped audio ring buffer, window grid and camera-frame store (ROS-free, clock-free).

The building blocks of :class:`taco_ros.core.windows.WindowPolicy`:

* :class:`AudioRingBuffer` places every chunk on one time axis by its stamp (the capture time of its
  first sample). Chunks that arrive late (out of order) are written where they belong; holes are
  zero-filled and remembered, so each window reports how much of it is made up; a jump back in time
  (a looping bag), a long gap or a change of sample rate / channel count starts the buffer afresh.
  Its size is bounded before anything is allocated (:data:`MAX_SAMPLE_RATE`, :data:`MAX_CHANNELS`,
  :data:`MAX_BUFFER_BYTES`).
* :class:`WindowScheduler` keeps the grid of window ends ``origin + window_sec + k * hop_sec`` and
  says which windows the received audio completes.
* :class:`FrameBuffer` keeps frames sorted by stamp and pairs a window with the frame nearest to the
  window's end (or centre), within a tolerance.

Times are seconds on the stream's clock as floats (float64 keeps sub-microsecond resolution for epoch
stamps). Nothing here imports ROS or torch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from taco_ros.core.contract import AudioWindow

T = TypeVar('T')

RESET_BACKWARD_JUMP = 'backward_jump'
RESET_FORMAT_CHANGE = 'format_change'
RESET_LARGE_GAP = 'large_gap'

# Bounds checked before a buffer is allocated: a chunk claiming 1e9 Hz must not allocate gigabytes.
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
MAX_BUFFER_BYTES = 256 * 2 ** 20
# A tiny epsilon absorbs float error when a time lands exactly on a grid point.
EPS = 1e-6


class SizeLimitError(ValueError):
    """An input declares a size over a limit; it is refused before anything is allocated."""


@dataclass
class PushReport:
    """What :meth:`AudioRingBuffer.push` (or :meth:`WindowPolicy.add_audio`) did with one chunk.

    written: samples of the chunk stored in the buffer.
    gap_sec: silence zero-filled between the previous newest sample and this chunk.
    late_sec: how far before the newest sample the chunk started (out-of-order arrival), 0 if not.
    dropped: samples of the chunk discarded because they are older than the buffer holds.
    reset: why the buffer was emptied before storing this chunk (RESET_*), or None.
    held: the chunk jumps in time and is held until the next chunk tells a restart of the stream
        from a stray stamp (WindowPolicy only).
    stray: samples of a held chunk discarded because the stream did not follow it (WindowPolicy).
    repeated_stamp: the chunk repeated the previous chunk's stamp with new samples and was
        appended after it (WindowPolicy).
    duplicate: the chunk repeated the previous chunk exactly (stamp and samples) and was ignored.
    """

    written: int = 0
    gap_sec: float = 0.0
    late_sec: float = 0.0
    dropped: int = 0
    reset: str | None = None
    held: bool = False
    stray: int = 0
    repeated_stamp: bool = False
    duplicate: bool = False

    def merge(self, other: PushReport) -> PushReport:
        """This report followed by ``other`` (two chunks stored by one call)."""
        return PushReport(
            written=self.written + other.written, gap_sec=self.gap_sec + other.gap_sec,
            late_sec=max(self.late_sec, other.late_sec), dropped=self.dropped + other.dropped,
            reset=self.reset or other.reset, held=other.held, stray=self.stray + other.stray,
            repeated_stamp=self.repeated_stamp or other.repeated_stamp,
            duplicate=other.duplicate)


def as_frames(samples: np.ndarray) -> np.ndarray:
    """Return ``samples`` as float32 [n, C] (a 1-D array is one channel)."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise ValueError(f'audio samples must be [n] or [n, channels], got shape {array.shape}')
    return array


def buffer_bytes(capacity_sec: float, sample_rate: int, channels: int) -> int:
    """Bytes an :class:`AudioRingBuffer` of this format allocates (float32 samples + a valid flag)."""
    return max(1, math.ceil(capacity_sec * sample_rate)) * (4 * channels + 1)


def check_format(capacity_sec: float, sample_rate: int, channels: int) -> None:
    """Raise ValueError when a stream format is out of bounds or its buffer would be too large."""
    if int(sample_rate) <= 0:
        raise ValueError(f'sample_rate must be positive, got {sample_rate}')
    if int(sample_rate) > MAX_SAMPLE_RATE:
        raise SizeLimitError(
            f'sample_rate {sample_rate} Hz is above the {MAX_SAMPLE_RATE} Hz limit')
    if not 1 <= channels <= MAX_CHANNELS:
        raise SizeLimitError(f'{channels} audio channels is outside 1..{MAX_CHANNELS}')
    size = buffer_bytes(capacity_sec, int(sample_rate), channels)
    if size > MAX_BUFFER_BYTES:
        raise SizeLimitError(
            f'{capacity_sec:g} s of {channels}-channel audio at {sample_rate} Hz needs '
            f'{size / 2 ** 20:.0f} MiB, more than the {MAX_BUFFER_BYTES // 2 ** 20} MiB limit')


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
    def check(self, frames: np.ndarray, stamp: float, sample_rate: int) -> None:
        """Raise ValueError for a chunk :meth:`push` would refuse (nothing is changed)."""
        check_format(self.capacity_sec, sample_rate, frames.shape[1])
        if not math.isfinite(stamp):
            raise ValueError(f'chunk stamp must be finite, got {stamp}')
        if not np.isfinite(frames).all():
            raise ValueError('audio chunk contains NaN or Inf samples')

    def restart_reason(self, stamp: float, sample_rate: int, channels: int) -> str | None:
        """The RESET_* reason a chunk with this stamp and format would empty the buffer for."""
        if self.sample_rate is None:
            return None
        if int(sample_rate) != self.sample_rate or channels != self.channels:
            return RESET_FORMAT_CHANGE
        offset = stamp - self._time_of(self._head)
        if offset <= -self.backward_jump_sec:
            return RESET_BACKWARD_JUMP
        if offset > self.max_gap_sec:
            return RESET_LARGE_GAP
        return None

    def push(self, samples: np.ndarray, stamp: float, sample_rate: int,
             tolerance: float | None = None, allow_restart: bool = True) -> PushReport:
        """Store one chunk whose first sample was captured at ``stamp``.

        ``tolerance`` overrides the contiguity tolerance for this chunk, without the half-chunk
        cap: for stamps made at receipt time, which jitter more than a chunk but are never out
        of order, a large value keeps the stream contiguous.
        ``allow_restart=False`` (a chunk whose stamp is not trusted) never empties the buffer: a
        chunk far back in time only fills holes it lands on, one far ahead is dropped.
        Raises ValueError for a non-positive or too high rate, a buffer over the size limit, a
        non-finite stamp or non-finite samples; the buffer is unchanged then.
        """
        frames = as_frames(samples)
        self.check(frames, stamp, sample_rate)
        report = PushReport()
        if frames.shape[0] == 0:
            return report
        rate = int(sample_rate)
        reason = self.restart_reason(stamp, rate, frames.shape[1])
        if reason is not None and not allow_restart:
            return self._place_untrusted(frames, stamp, reason, report)
        if reason is not None or self.sample_rate is None:
            self.clear()
            report.reset = reason
            self._start(frames.shape[1], rate, stamp)
            self._write(0, frames, report)
            return report
        offset = stamp - self._time_of(self._head)
        chunk_sec = frames.shape[0] / rate
        if tolerance is None:
            tolerance = min(self.stamp_tolerance, 0.5 * chunk_sec)
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

    def _place_untrusted(self, frames: np.ndarray, stamp: float, reason: str,
                         report: PushReport) -> PushReport:
        if reason != RESET_BACKWARD_JUMP:
            report.dropped = frames.shape[0]
            return report
        index = self._index_of(stamp)
        report.late_sec = self._time_of(self._head) - stamp
        first, end = max(index, self._tail), min(index + frames.shape[0], self._head)
        if end <= first:
            report.dropped = frames.shape[0]
            return report
        positions = np.arange(first, end) % self._data.shape[0]
        holes = ~self._valid[positions]
        self._data[positions[holes]] = frames[first - index:end - index][holes]
        self._valid[positions[holes]] = True
        report.written = int(holes.sum())
        report.dropped = frames.shape[0] - report.written
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
    """The grid of window ends and which windows are due.

    Window ends lie on the grid ``origin + window_sec + k * hop_sec`` (origin: the first sample after
    the last reset). :meth:`due_ends` gives every window the received audio completes and that was
    not handed out yet; :meth:`due` the newest of them with the count of those it passes over, so a
    consumer that fell behind can catch up instead of queueing.
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

    def next_end(self) -> float | None:
        """End of the next window to hand out (None before the grid has an origin)."""
        if self.last_end is not None:
            return self.last_end + self.hop_sec
        return None if self.origin is None else self.origin + self.window_sec

    def due_ends(self, audio_start: float, audio_end: float) -> tuple[float, int] | None:
        """(oldest due window end, number of due windows), None when none is complete.

        ``audio_start`` is the oldest audio available; it becomes the grid origin on first use.
        """
        if self.origin is None:
            self.origin = audio_start
        first = self.next_end()
        if audio_end + EPS < first:
            return None
        return first, math.floor((audio_end + EPS - first) / self.hop_sec) + 1

    def due(self, audio_start: float, audio_end: float) -> tuple[float, int] | None:
        """Newest window end not later than ``audio_end``, with the count of windows skipped."""
        due = self.due_ends(audio_start, audio_end)
        if due is None:
            return None
        first, count = due
        return first + (count - 1) * self.hop_sec, count - 1

    def realign(self, start: float) -> None:
        """Keep the grid but continue with the first window that starts at or after ``start``
        (the audio before it is gone); no-op before the grid has an origin."""
        first = self.next_end()
        if first is None:
            return
        steps = max(0, math.ceil((start + self.window_sec - first - EPS) / self.hop_sec))
        self.last_end = first + (steps - 1) * self.hop_sec

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
    """Frames sorted by stamp, for pairing with audio windows.

    Args:
        max_age_sec: frames older than the newest by more than this are forgotten (None: kept
            until :meth:`prune_before` or the count cap removes them).
        max_frames: hard cap on the frames held (memory bound for large images); the oldest go
            first and ``evicted`` / ``evicted_until`` remember it.
        backward_jump_sec: a frame this much older than the newest empties the buffer (bag loop);
            :meth:`push` returns True then. None leaves jumps to the caller.
    """

    def __init__(
        self, max_age_sec: float | None = 2.0, max_frames: int = 64,
        backward_jump_sec: float | None = 0.5,
    ) -> None:
        if (max_age_sec is not None and max_age_sec <= 0) or max_frames < 1 or (
                backward_jump_sec is not None and backward_jump_sec <= 0):
            raise ValueError(
                'max_age_sec, backward_jump_sec must be positive and max_frames >= 1, got '
                f'{max_age_sec}, {max_frames}, {backward_jump_sec}')
        self.max_age_sec = None if max_age_sec is None else float(max_age_sec)
        self.max_frames = int(max_frames)
        self.backward_jump_sec = None if backward_jump_sec is None else float(backward_jump_sec)
        self._stamps: list[float] = []
        self._items: list[T] = []
        self.evicted = 0
        self.evicted_until: float | None = None

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> float | None:
        return self._stamps[-1] if self._stamps else None

    @property
    def oldest_stamp(self) -> float | None:
        return self._stamps[0] if self._stamps else None

    def clear(self) -> None:
        self._stamps.clear()
        self._items.clear()
        self.evicted_until = None

    def push(self, stamp: float, item: T) -> bool:
        """Store a frame; returns True when a backward jump in time emptied the buffer first."""
        if not math.isfinite(stamp):
            raise ValueError(f'frame stamp must be finite, got {stamp}')
        jumped = False
        newest = self.newest_stamp
        if (self.backward_jump_sec is not None and newest is not None
                and stamp <= newest - self.backward_jump_sec):
            self.clear()
            jumped = True
        # Slightly out-of-order frames are inserted in stamp order (equal stamps: after).
        index = bisect.bisect_right(self._stamps, stamp)
        self._stamps.insert(index, stamp)
        self._items.insert(index, item)
        if self.max_age_sec is not None:
            self.prune_before(self._stamps[-1] - self.max_age_sec)
        while len(self._stamps) > self.max_frames:
            self.evicted += 1
            evicted = self._stamps.pop(0)
            self._items.pop(0)
            self.evicted_until = evicted if self.evicted_until is None else max(
                self.evicted_until, evicted)
        return jumped

    def prune_before(self, stamp: float) -> int:
        """Forget frames stamped before ``stamp``; returns how many."""
        count = bisect.bisect_left(self._stamps, stamp)
        del self._stamps[:count]
        del self._items[:count]
        return count

    def drop_after(self, stamp: float) -> int:
        """Forget frames stamped after ``stamp`` (an abandoned time line); returns how many."""
        index = bisect.bisect_right(self._stamps, stamp)
        count = len(self._stamps) - index
        del self._stamps[index:]
        del self._items[index:]
        return count

    def pair(self, target: float, tolerance: float, final: bool = False) -> Pairing[T]:
        """The frame nearest to ``target`` within ``tolerance``.

        Until a frame stamped at or after ``target`` has arrived, a nearer frame may still come,
        so the answer is 'wait' unless ``final`` (the caller's wait for the camera is over).
        """
        if not self._stamps:
            return Pairing('missing' if final else 'wait')
        if self._stamps[-1] < target and not final:
            return Pairing('wait')
        index = bisect.bisect_left(self._stamps, target)
        candidates = [i for i in (index - 1, index) if 0 <= i < len(self._stamps)]
        best = min(candidates, key=lambda i: abs(self._stamps[i] - target))
        offset = self._stamps[best] - target
        if abs(offset) <= tolerance:
            return Pairing('ok', self._items[best], self._stamps[best], offset)
        return Pairing('missing', None, self._stamps[best], offset)
