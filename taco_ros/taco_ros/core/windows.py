"""Which audio window runs next and with which camera frame: the window/pairing policy (ROS-free).

The node receives audio as a stream of small stamped chunks (typically 32 ms) and camera frames at
~30 Hz; TACO factorises one audio window (``window_sec``, 1 s by default) against one frame.
:class:`WindowPolicy` turns the two streams into :class:`WindowJob` s. It never reads a clock: every
call takes the caller's ``now`` (wall time in the node, bag time in an offline replay), used only
for durations (how long the audio has been silent), so the same code runs live and offline.

* Windows end on a grid ``origin + window_sec + k * hop_sec``. ``next_job(newest_only=True)`` hands
  out the newest complete window and counts the ones passed over as dropped ('busy');
  ``newest_only=False`` hands out every window in order (lock-step replay), optionally keeping at
  most ``max_backlog`` of them.
* Each window is paired with the frame nearest its end (or centre, ``pair_with``) within
  ``pair_tolerance``. While no frame at or after that time has arrived the window waits, until the
  audio has run ``frame_wait`` past it, the audio has stalled for ``stall_sec`` (end of a bag) or the
  caller says ``end_of_stream``. Frames are kept as long as a pending window may still need them.
* Input restarts: a chunk or frame that jumps in time is held until the next one shows whether the
  stream really restarted (a looping bag: restart once, new grid, cold start) or the stamp was a
  stray (it is dropped or fills a hole; the grid does not move). When the camera loops before the
  audio, the new frames wait aside until the audio follows, so the old time line loses no window.
* Every window not handed out is counted in ``drops`` under its cause: 'busy' (passed over),
  'no_frame' (no frame within tolerance), 'frame_evicted' (its frame was pushed out by the frame
  cap), 'expired' (its audio left the ring buffer while queued), 'restart' (its audio was cleared by
  a stream restart).

Not thread-safe: the node calls it under one lock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import numpy as np

from taco_ros.core.buffers import (
    EPS,
    MAX_BUFFER_BYTES,
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    RESET_BACKWARD_JUMP,
    RESET_FORMAT_CHANGE,
    RESET_LARGE_GAP,
    AudioRingBuffer,
    FrameBuffer,
    Pairing,
    PushReport,
    SizeLimitError,
    WindowScheduler,
    as_frames,
    check_format,
)
from taco_ros.core.contract import CLAP_CONTEXT_SEC, PAIR_WITH, AudioWindow

__all__ = [
    'EPS', 'MAX_BUFFER_BYTES', 'MAX_CHANNELS', 'MAX_SAMPLE_RATE', 'RESET_BACKWARD_JUMP',
    'RESET_CAMERA_JUMP', 'RESET_FORMAT_CHANGE', 'RESET_LARGE_GAP', 'AudioRingBuffer', 'AudioWindow',
    'FrameBuffer', 'Pairing', 'PushReport', 'SizeLimitError', 'WindowJob', 'WindowPolicy', 'WindowScheduler',
    'WindowSettings', 'as_frames', 'check_format',
]

T = TypeVar('T')

RESET_CAMERA_JUMP = 'camera_jump'
# Seconds without a new audio chunk after which the stream counts as stopped (end of a bag): the
# last window is then paired with the frames already received instead of waiting forever.
STALL_SEC = 2.0
# A frame this much older than the newest frame (or this much newer) is held until the next frame
# shows whether the camera's time really jumped. Backwards is short (a bag loop is never shorter);
# forwards is long, so a slow or paused camera is not mistaken for a jump.
FRAME_BACKWARD_JUMP_SEC = 0.5
FRAME_FORWARD_JUMP_SEC = 5.0
# Frames held at most (per time line); raw 640x480 rgb8 frames are 0.9 MB each.
MAX_FRAMES = 256
# The same notice (a stray stamp, a repeated stamp) is not repeated within this many seconds.
NOTICE_INTERVAL_SEC = 10.0


@dataclass(frozen=True)
class WindowSettings:
    """How windows are cut and paired (the node's window parameters).

    history_sec: audio before the window handed along for the 'history' CLAP context (0: none).
    stall_sec: audio silent this long (caller's clock) = end of stream: pair without waiting.
    """

    window_sec: float = 1.0
    hop_sec: float = 1.0
    pair_with: str = 'end'
    pair_tolerance: float = 0.1
    # Raw 30 Hz frames through Fast DDS' default shared memory arrived up to 0.3 s after the
    # audio of the same time on a busy machine (bench_soak.py).
    frame_wait: float = 0.5
    buffer_sec: float = 10.0
    stamp_tolerance: float = 0.02
    cold_start_gap: float = 0.25
    history_sec: float = 0.0
    stall_sec: float = STALL_SEC

    def __post_init__(self) -> None:
        reason = self.problem()
        if reason:
            raise ValueError(reason)

    def problem(self) -> str | None:
        """Why these settings are unusable (None when they are usable)."""
        if self.pair_with not in PAIR_WITH:
            return f'pair_with={self.pair_with!r} is not one of {", ".join(PAIR_WITH)}'
        for name in ('window_sec', 'hop_sec', 'buffer_sec', 'stall_sec'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                return f'{name} must be positive, got {value}'
        for name in ('pair_tolerance', 'frame_wait', 'stamp_tolerance', 'cold_start_gap',
                     'history_sec'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                return f'{name} must be >= 0, got {value}'
        if self.buffer_sec < self.window_sec + self.history_sec:
            return (f'buffer_sec ({self.buffer_sec}) must hold window_sec + history_sec '
                    f'({self.window_sec + self.history_sec})')
        return None

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> WindowSettings:
        """Settings from taco_node parameter values (missing names keep their defaults);
        ``audio_context: history`` asks for CLAP's 7 s of past audio."""
        known = {f.name for f in fields(cls)} - {'history_sec'}
        chosen: dict[str, Any] = {name: values[name] for name in known if name in values}
        for name, value in chosen.items():
            if name != 'pair_with':
                chosen[name] = float(value)
        history = values.get('audio_context', 'tile') == 'history'
        return cls(**chosen, history_sec=CLAP_CONTEXT_SEC if history else 0.0)

    @property
    def pair_offset(self) -> float:
        """Pairing time = window end minus this."""
        return self.window_sec / 2 if self.pair_with == 'centre' else 0.0


@dataclass
class WindowJob(Generic[T]):
    """One window ready for inference, with its frame.

    cold_reason: why the solver must start cold (inputs restarted, audio missing in the window),
    None to continue warm.
    """

    end: float
    window: AudioWindow
    frame: T
    frame_stamp: float
    cold_reason: str | None = None


@dataclass
class _HeldChunk:
    frames: np.ndarray
    stamp: float
    sample_rate: int
    tolerance: float | None

    @property
    def end(self) -> float:
        return self.stamp + self.frames.shape[0] / self.sample_rate


def _follows(held: _HeldChunk, stamp: float, buffer_end: float) -> bool:
    """True when a chunk at ``stamp`` continues the held chunk's time line, not the buffer's."""
    return abs(stamp - held.end) < abs(stamp - buffer_end)


def _would_have_paired(stamp: float, target: float | None, offset: float | None,
                       tolerance: float) -> bool:
    """True when a frame at ``stamp`` is nearer to ``target`` than the frame paired with it
    (``offset`` from it; None: there was none) and within ``tolerance``."""
    if target is None or abs(stamp - target) > tolerance:
        return False
    return offset is None or abs(stamp - target) < abs(offset)


def _due_count(audio: AudioRingBuffer, scheduler: WindowScheduler) -> int:
    """Complete windows not handed out yet (lost if the audio is cleared now)."""
    if audio.empty:
        return 0
    due = scheduler.due_ends(audio.start_time, audio.end_time)
    return 0 if due is None else due[1]


class PolicyReport:
    """What a window policy counts and tells: window drops by cause, stream restarts by reason,
    input oddities that cost no window, and one-line notices for the log."""

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()      # windows not handed out, by cause
        self.restarts: Counter[str] = Counter()   # stream restarts, by RESET_* reason
        self.events: Counter[str] = Counter()     # input oddities that cost no window
        self._notices: list[str] = []
        self._noticed: dict[str, float] = {}
        self._cold_reason: str | None = None

    def take_notices(self) -> list[str]:
        """Readable one-line reports of restarts and stray stamps since the last call."""
        notices, self._notices = self._notices, []
        return notices

    def _notify(self, key: str, text: str, now: float | None) -> None:
        """Add a notice unless the same kind was given less than NOTICE_INTERVAL_SEC ago."""
        last = self._noticed.get(key)
        if now is not None and last is not None and now - last < NOTICE_INTERVAL_SEC:
            return
        self._noticed[key] = now if now is not None else 0.0
        self._notices.append(text)

    def _restart(self, reason: str, text: str) -> None:
        """A stream restarted: count it, tell it once, and start the next window cold."""
        self.restarts[reason] += 1
        self._cold_reason = f'inputs restarted: {text}'
        self._notices.append(f'inputs restarted: {text}')


class WindowPolicy(PolicyReport, Generic[T]):
    """Audio windows and their camera frames, on the caller's clock (see the module docstring).

    ``T`` is whatever the caller stores per frame (the node: the ROS message, decoded only when
    paired). Read-only state for diagnostics: :attr:`fill`, :attr:`sample_rate`,
    :attr:`frames_held`, :attr:`drops`, :attr:`restarts`, :attr:`events`.
    """

    def __init__(self, settings: WindowSettings | None = None, *,
                 max_frames: int = MAX_FRAMES) -> None:
        super().__init__()
        self.settings = settings or WindowSettings()
        self.max_frames = int(max_frames)
        # The prune bound follows the last next_job call; until then keep what a queue would need.
        self._newest_only = False
        self._backlog: int | None = None
        self._clear(None)

    # -- configuration and state ----------------------------------------------------------------
    def configure(self, settings: WindowSettings) -> None:
        """Apply new settings; windows continue on the grid (a new buffer length restarts)."""
        rebuild = settings.buffer_sec != self.settings.buffer_sec
        self.settings = settings
        if rebuild:
            self._clear('the audio buffer length changed')
            return
        self.scheduler.configure(settings.window_sec, settings.hop_sec)
        self.audio.stamp_tolerance = settings.stamp_tolerance

    def reset(self, reason: str | None = None) -> None:
        """Forget all inputs and the grid; ``reason`` becomes the next job's cold_reason."""
        self._clear(reason)

    def _clear(self, reason: str | None) -> None:
        s = self.settings
        self.audio = AudioRingBuffer(capacity_sec=s.buffer_sec, stamp_tolerance=s.stamp_tolerance)
        self.frames: FrameBuffer[T] = self._frame_buffer()
        self.scheduler = WindowScheduler(s.window_sec, s.hop_sec)
        self._incoming: FrameBuffer[T] | None = None   # frames of a camera time line the audio
        self._incoming_since = 0.0                     # has not followed yet
        self._incoming_jump = 0.0
        self._held_chunk: _HeldChunk | None = None
        self._held_frame: tuple[float, T] | None = None
        self._camera_time: float | None = None     # newest stamp of the camera's time line
        self._stale_after: float | None = None     # frames after this belong to an abandoned
        self._stale_since = 0.0                    # time line (the audio looped first)
        self._last_target: float | None = None     # pairing time of the last decided window
        self._last_offset: float | None = None     # its frame's offset (None: no frame)
        self._last_chunk: tuple[float, np.ndarray] | None = None
        self._last_audio_now: float | None = None
        self._cold_reason = reason

    def _frame_buffer(self) -> FrameBuffer[T]:
        return FrameBuffer(max_age_sec=None, max_frames=self.max_frames, backward_jump_sec=None)

    @property
    def fill(self) -> float:
        """Fraction of the audio ring buffer holding audio."""
        return self.audio.fill

    @property
    def sample_rate(self) -> int | None:
        return self.audio.sample_rate

    @property
    def frames_held(self) -> int:
        """Frames held for pairing (including those of a camera restart waiting for the audio)."""
        return len(self.frames) + (len(self._incoming) if self._incoming is not None else 0)

    @property
    def audio_end(self) -> float | None:
        """Capture time one past the newest audio sample held."""
        return self.audio.end_time

    # -- audio ------------------------------------------------------------------------------------
    def add_audio(self, samples: np.ndarray, stamp: float, sample_rate: int, *, now: float,
                  tolerance: float | None = None) -> PushReport:
        """Store one chunk whose first sample was captured at ``stamp``.

        Raises ValueError (nothing changed) for a bad chunk: non-finite samples or stamp, or a
        format out of bounds (rate, channels, buffer size).
        """
        frames = as_frames(samples)
        self.audio.check(frames, stamp, sample_rate)
        if frames.shape[0] == 0:
            return PushReport()
        self._last_audio_now = now
        report = PushReport()
        held, self._held_chunk = self._held_chunk, None
        if held is not None:
            if _follows(held, stamp, self.audio.end_time):
                report = self._restart_audio(held, now)
            else:
                report = self._place_stray(held, now)
        chunk = _HeldChunk(frames, float(stamp), int(sample_rate), tolerance)
        reason = self.audio.restart_reason(chunk.stamp, chunk.sample_rate, frames.shape[1])
        if reason in (RESET_BACKWARD_JUMP, RESET_LARGE_GAP) and report.reset is None:
            self._held_chunk = chunk
            return report.merge(PushReport(held=True))
        if reason == RESET_FORMAT_CHANGE:
            report = report.merge(self._restart_audio(chunk, now))
        else:
            report = report.merge(self._push(chunk, now))
        self._last_chunk = (chunk.stamp, frames)
        self._prune_frames()
        return report

    def _push(self, chunk: _HeldChunk, now: float) -> PushReport:
        tolerance = chunk.tolerance
        repeated = False
        if self._last_chunk is not None and chunk.stamp == self._last_chunk[0]:
            if np.array_equal(chunk.frames, self._last_chunk[1]):
                self.events['duplicate_audio_chunks'] += 1
                return PushReport(duplicate=True)
            # A stamp that did not advance: the samples follow the previous chunk.
            self.events['repeated_audio_stamps'] += 1
            self._notify('repeated', 'audio chunks repeat the previous stamp; appending them '
                         'after it (the publisher does not advance its stamps)', now)
            tolerance, repeated = math.inf, True
        report = self.audio.push(chunk.frames, chunk.stamp, chunk.sample_rate, tolerance)
        report.repeated_stamp = repeated
        return report

    def _place_stray(self, held: _HeldChunk, now: float) -> PushReport:
        """The stream did not follow a held chunk: its stamp was a stray. Fill holes it lands on."""
        shift = held.stamp - self.audio.end_time
        report = self.audio.push(held.frames, held.stamp, held.sample_rate, held.tolerance,
                                 allow_restart=False)
        report.stray = report.dropped
        report.dropped = 0
        self.events['stray_audio_chunks'] += 1
        self._notify('stray_audio', f'ignored an audio chunk stamped {shift:+.2f} s from the '
                     'stream (a stray stamp; the stream continues)', now)
        return report

    def _restart_audio(self, chunk: _HeldChunk, now: float) -> PushReport:
        """The audio restarted at ``chunk``: store it, then fix the grid and the frames."""
        audio = self.audio
        old_end = audio.end_time
        old_format = f'{audio.sample_rate} Hz x {audio.channels}'
        lost = _due_count(self.audio, self.scheduler)
        report = audio.push(chunk.frames, chunk.stamp, chunk.sample_rate, chunk.tolerance)
        if report.reset is None:      # cannot happen: these chunks always restart the buffer
            return report
        if lost:
            self.drops['restart'] += lost
        if chunk.stamp <= old_end - audio.backward_jump_sec:
            text = f'time jumped back {old_end - chunk.stamp:.1f} s'
            self._new_time_line(chunk.stamp, now)
            if self._incoming is not None:
                self.frames, self._incoming = self._incoming, None
                text = f'camera and audio {text}'
        else:   # the same time line: the grid goes on where the audio resumes
            self.scheduler.realign(chunk.stamp)
            text = f'audio resumed after a {chunk.stamp - old_end:.1f} s gap'
        if report.reset == RESET_FORMAT_CHANGE:
            text = (f'audio format changed from {old_format} to {chunk.sample_rate} Hz x '
                    f'{chunk.frames.shape[1]}' + (f'; {text}' if 'jumped' in text else ''))
        self._restart(report.reset, text)
        return report

    def _new_time_line(self, stamp: float, now: float) -> None:
        """The audio jumped back to ``stamp``: a new grid; frames of the old time line go."""
        self.scheduler.reset()
        if self._incoming is not None:
            return      # the camera is there already (its frames wait aside)
        # The camera has not looped yet: its frames still to come from the old time line are
        # dropped until it does.
        self._stale_after = stamp + FRAME_BACKWARD_JUMP_SEC
        self._stale_since = now
        self.frames.drop_after(self._stale_after)
        self._camera_time = None

    # -- frames -----------------------------------------------------------------------------------
    def add_frame(self, stamp: float, item: T, *, now: float) -> bool:
        """Store a camera frame; True when the camera's time jumped back (its inputs restarted)."""
        if not math.isfinite(stamp):
            raise ValueError(f'frame stamp must be finite, got {stamp}')
        stamp = float(stamp)
        if self._stale_after is not None:
            if stamp > self._stale_after and now - self._stale_since <= self.settings.stall_sec:
                self.events['stale_frames'] += 1
                return False
            self._stale_after = None
        held, self._held_frame = self._held_frame, None
        jumped = False
        if held is not None:
            newest = self._camera_time
            if newest is None or abs(stamp - held[0]) < abs(stamp - newest):
                jumped = newest is not None and held[0] < newest
                if jumped:
                    self._camera_jump(held[0], now)
                self._store_frame(*held)
            else:
                self.events['stray_frames'] += 1
                self._notify('stray_frame', f'ignored a camera frame stamped '
                             f'{held[0] - newest:+.2f} s from the stream (a stray stamp)', now)
        newest = self._camera_time
        if newest is not None and (stamp <= newest - FRAME_BACKWARD_JUMP_SEC
                                   or stamp > newest + FRAME_FORWARD_JUMP_SEC):
            self._held_frame = (stamp, item)
            return jumped
        self._store_frame(stamp, item)
        return jumped

    def _camera_jump(self, stamp: float, now: float) -> None:
        jump = self._camera_time - stamp
        self._camera_time = None
        if self._incoming is not None:      # the new time line jumped again
            self._incoming.clear()
            return
        audio_end = self.audio.end_time
        if audio_end is not None and audio_end - stamp > FRAME_BACKWARD_JUMP_SEC:
            # The audio is still on the old time line: its pending windows keep their frames,
            # the new frames wait aside until the audio follows.
            self._incoming = self._frame_buffer()
            self._incoming_since = now
            self._incoming_jump = jump
            return
        self.frames.drop_after(stamp + FRAME_BACKWARD_JUMP_SEC)
        self._restart(RESET_CAMERA_JUMP, f'camera time jumped back {jump:.1f} s')

    def _store_frame(self, stamp: float, item: T) -> None:
        self._camera_time = stamp if self._camera_time is None else max(self._camera_time, stamp)
        if self._incoming is not None:
            self._incoming.push(stamp, item)
            return
        bound = self._frame_bound()
        if bound is not None and stamp < bound:
            # Needed by no window still to come; late if the last window, decided without it,
            # would have taken it (a nearer frame, or one where there was none).
            if _would_have_paired(stamp, self._last_target, self._last_offset,
                                  self.settings.pair_tolerance):
                self.events['late_frames'] += 1
            return
        self.frames.push(stamp, item)
        self._prune_frames()

    def _promote_incoming(self, now: float) -> None:
        """The camera restarted but the audio did not follow: take the new frames anyway."""
        incoming = self._incoming
        if incoming is None:
            return
        followed = self.audio.empty or (incoming.newest_stamp is not None and abs(
            self.audio.end_time - incoming.newest_stamp) < FRAME_BACKWARD_JUMP_SEC)
        if not followed and now - self._incoming_since <= self.settings.stall_sec:
            return
        self.frames, self._incoming = incoming, None
        self._restart(RESET_CAMERA_JUMP, f'camera time jumped back {self._incoming_jump:.1f} s '
                      '(the audio did not)')

    def _frame_bound(self) -> float | None:
        """Frames stamped before this can pair with no window still to come."""
        s = self.settings
        bounds = []
        newest = self.frames.newest_stamp
        if newest is not None:
            bounds.append(newest - (s.buffer_sec + s.window_sec + s.pair_tolerance))
        end = None
        if not self.audio.empty:
            due = self.scheduler.due_ends(self.audio.start_time, self.audio.end_time)
            if due is None:
                end = self.scheduler.next_end()
            else:
                first, count = due
                keep = 1 if self._newest_only else (self._backlog or count)
                end = first + max(0, count - keep) * s.hop_sec
        if end is not None:
            bounds.append(end - s.pair_offset - s.pair_tolerance)
        return max(bounds) if bounds else None

    def _prune_frames(self) -> None:
        bound = self._frame_bound()
        if bound is not None:
            self.frames.prune_before(bound)

    # -- windows ----------------------------------------------------------------------------------
    def next_job(self, now: float, *, newest_only: bool = True, end_of_stream: bool = False,
                 max_backlog: int | None = None) -> WindowJob[T] | None:
        """The next window to process with its frame, or None (nothing due, or waiting for a frame).

        newest_only: the newest complete window; older ones are dropped as 'busy'. False: every
            window in order; with ``max_backlog`` only the newest that many are kept.
        end_of_stream: no more input will come: pair with the frames there are, no waiting.
        """
        self._newest_only = newest_only
        self._backlog = max_backlog if max_backlog and max_backlog > 0 else None
        if end_of_stream and self._held_frame is not None:
            self._store_frame(*self._held_frame)
            self._held_frame = None
        self._promote_incoming(now)
        while True:
            picked = self._pick(newest_only)
            if picked is None:
                return None
            end, passed_over = picked
            pairing = self._pairing(end, now, end_of_stream)
            if pairing.status == 'wait':
                return None
            if passed_over:
                self.drops['busy'] += passed_over
            self.scheduler.mark_done(end)
            self._last_target = end - self.settings.pair_offset
            self._last_offset = pairing.offset if pairing.status == 'ok' else None
            if pairing.status == 'ok':
                return self._job(end, pairing)
            evicted = self.frames.evicted_until
            lost_to_cap = evicted is not None and evicted >= (
                end - self.settings.pair_offset - self.settings.pair_tolerance)
            self.drops['frame_evicted' if lost_to_cap else 'no_frame'] += 1

    def _pick(self, newest_only: bool) -> tuple[float, int] | None:
        """(end of the window to try, windows before it that will be passed over)."""
        if self.audio.empty:
            return None
        s = self.settings
        due = self.scheduler.due_ends(self.audio.start_time, self.audio.end_time)
        if due is None:
            return None
        first, count = due
        if newest_only:
            return first + (count - 1) * s.hop_sec, count - 1
        oldest_start = self.audio.start_time - EPS
        expired = min(count, max(0, math.ceil(
            (oldest_start - (first - s.window_sec)) / s.hop_sec)))
        if expired:     # their audio left the buffer while they were queued
            self.drops['expired'] += expired
            self.scheduler.mark_done(first + (expired - 1) * s.hop_sec)
            if expired == count:
                return None
            first, count = first + expired * s.hop_sec, count - expired
        skip = count - self._backlog if self._backlog and count > self._backlog else 0
        return first + skip * s.hop_sec, skip

    def _pairing(self, end: float, now: float, end_of_stream: bool) -> Pairing[T]:
        s = self.settings
        target = end - s.pair_offset
        stalled = self._last_audio_now is not None and now - self._last_audio_now > s.stall_sec
        final = end_of_stream or stalled or self.audio.end_time - target >= s.frame_wait
        return self.frames.pair(target, s.pair_tolerance, final)

    def _job(self, end: float, pairing: Pairing[T]) -> WindowJob[T]:
        s = self.settings
        window = self.audio.window(end - s.window_sec, s.window_sec, history_sec=s.history_sec)
        cold, self._cold_reason = self._cold_reason, None
        gap = window.gap_fraction * window.duration
        if cold is None and gap > 0 and gap >= s.cold_start_gap:
            cold = f'{gap:.2f} s of the window has no audio'
        self._prune_frames()
        return WindowJob(end, window, pairing.item, float(pairing.stamp), cold)
