"""Audio ring buffer, window grid and frame pairing (pure Python, no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from taco_ros.core.windows import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    RESET_BACKWARD_JUMP,
    RESET_FORMAT_CHANGE,
    RESET_LARGE_GAP,
    AudioRingBuffer,
    FrameBuffer,
    WindowScheduler,
)

RATE = 16000
CHUNK = 512  # 32 ms, the usual microphone block
T0 = 1_700_000_000.25  # epoch-like stamps, as a live ROS clock gives


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Samples whose value encodes their absolute index, so placement can be checked exactly."""
    return ((np.arange(start, start + n) % 1000) / 1000.0).astype(np.float32)


def stream(buffer: AudioRingBuffer, chunks: int, first_chunk: int = 0, t0: float = T0) -> None:
    for c in range(first_chunk, first_chunk + chunks):
        buffer.push(ramp(CHUNK, c * CHUNK), t0 + c * CHUNK / RATE, RATE)


def test_contiguous_chunks_form_the_exact_signal() -> None:
    buffer = AudioRingBuffer(capacity_sec=4.0)
    stream(buffer, 40)
    assert buffer.start_time == pytest.approx(T0)
    assert buffer.end_time == pytest.approx(T0 + 40 * CHUNK / RATE)
    window = buffer.window(T0 + 0.25, 1.0)
    assert window.samples.shape == (RATE,)
    assert window.gap_fraction == 0.0
    assert window.start == pytest.approx(T0 + 0.25)
    np.testing.assert_allclose(window.samples, ramp(RATE, int(0.25 * RATE)))


def test_stamp_jitter_is_absorbed() -> None:
    buffer = AudioRingBuffer(stamp_tolerance=0.01)  # 2 x the jitter: the origin is jittered too
    rng = np.random.default_rng(0)
    for c in range(40):
        jitter = rng.uniform(-0.004, 0.004)
        report = buffer.push(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE + jitter, RATE)
        assert report.gap_sec == 0.0 and report.late_sec == 0.0
    window = buffer.window(buffer.start_time, 1.0)
    np.testing.assert_allclose(window.samples, ramp(RATE))


def test_gap_is_zero_filled_and_reported() -> None:
    buffer = AudioRingBuffer()
    stream(buffer, 10)
    report = buffer.push(ramp(CHUNK), T0 + 15 * CHUNK / RATE, RATE)  # chunks 10..14 missing
    assert report.gap_sec == pytest.approx(5 * CHUNK / RATE)
    stream(buffer, 20, first_chunk=16)
    window = buffer.window(T0, 36 * CHUNK / RATE)
    assert window.gap_fraction == pytest.approx(5 / 36, abs=1e-4)
    hole = window.samples[10 * CHUNK:15 * CHUNK]
    assert not hole.any()


def test_out_of_order_chunk_fills_its_hole() -> None:
    buffer = AudioRingBuffer()
    stream(buffer, 10)
    order = [11, 10, 12, 14, 13, 15]
    reports = {}
    for c in order:
        reports[c] = buffer.push(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE, RATE)
    assert reports[11].gap_sec > 0
    assert reports[10].late_sec == pytest.approx(2 * CHUNK / RATE, abs=1e-6)
    assert reports[13].written == CHUNK
    window = buffer.window(T0, 16 * CHUNK / RATE)
    assert window.gap_fraction == 0.0
    np.testing.assert_allclose(window.samples, ramp(16 * CHUNK))


def test_backward_jump_resets() -> None:
    buffer = AudioRingBuffer()
    stream(buffer, 60)
    report = buffer.push(ramp(CHUNK), T0, RATE)  # bag looped back to its start
    assert report.reset == RESET_BACKWARD_JUMP
    assert buffer.start_time == pytest.approx(T0)
    assert buffer.end_time == pytest.approx(T0 + CHUNK / RATE)


def test_large_gap_resets_instead_of_filling() -> None:
    buffer = AudioRingBuffer(max_gap_sec=2.0)
    stream(buffer, 10)
    report = buffer.push(ramp(CHUNK), T0 + 30.0, RATE)
    assert report.reset == RESET_LARGE_GAP
    assert buffer.start_time == pytest.approx(T0 + 30.0)


@pytest.mark.parametrize('new_rate,new_channels', [(48000, 1), (16000, 2)])
def test_format_change_starts_afresh(new_rate: int, new_channels: int) -> None:
    buffer = AudioRingBuffer()
    stream(buffer, 10)
    t = T0 + 10 * CHUNK / RATE
    chunk = np.ones((1536, new_channels), np.float32) * 0.5
    report = buffer.push(chunk, t, new_rate)
    assert report.reset == RESET_FORMAT_CHANGE
    assert buffer.sample_rate == new_rate and buffer.channels == new_channels
    window = buffer.window(t, 1536 / new_rate)
    assert window.sample_rate == new_rate
    expected_shape = (1536,) if new_channels == 1 else (1536, new_channels)
    assert window.samples.shape == expected_shape
    assert np.all(window.samples == 0.5)


def test_capacity_drops_oldest_and_too_old_chunks() -> None:
    buffer = AudioRingBuffer(capacity_sec=1.0, backward_jump_sec=5.0)
    stream(buffer, 100)  # 3.2 s into a 1 s buffer
    assert buffer.end_time - buffer.start_time == pytest.approx(1.0)
    assert buffer.fill == pytest.approx(1.0)
    report = buffer.push(ramp(CHUNK), T0 + 5 * CHUNK / RATE, RATE)  # 3 s late, out of the buffer
    assert report.written == 0 and report.dropped == CHUNK
    window = buffer.window(buffer.start_time, 1.0)
    np.testing.assert_allclose(window.samples, ramp(RATE, 100 * CHUNK - RATE))


def test_window_outside_the_buffer_is_zero_and_counted() -> None:
    buffer = AudioRingBuffer()
    stream(buffer, 16)  # 0.512 s
    window = buffer.window(T0 - 0.488, 1.0)
    assert window.gap_fraction == pytest.approx(0.488, abs=1e-3)
    assert not window.samples[: int(0.488 * RATE) - 1].any()


def test_history_returns_preceding_audio() -> None:
    buffer = AudioRingBuffer(capacity_sec=10.0)
    stream(buffer, 150)  # 4.8 s
    start = T0 + 3.0
    window = buffer.window(start, 1.0, history_sec=7.0)
    assert window.history.shape == (3 * RATE,)   # only 3 s exist before the window
    np.testing.assert_allclose(window.history, ramp(3 * RATE))
    assert buffer.window(start, 1.0).history is None


def test_covers() -> None:
    buffer = AudioRingBuffer()
    assert not buffer.covers(T0)
    stream(buffer, 10)
    assert buffer.covers(T0 + 10 * CHUNK / RATE)
    assert not buffer.covers(T0 + 11 * CHUNK / RATE)


@pytest.mark.parametrize('bad', [
    (np.array([0.1, np.nan], np.float32), T0, RATE, 'NaN'),
    (np.array([0.1, np.inf], np.float32), T0, RATE, 'NaN'),
    (np.zeros(4, np.float32), float('nan'), RATE, 'stamp'),
    (np.zeros(4, np.float32), T0, 0, 'sample_rate'),
    (np.zeros((2, 2, 2), np.float32), T0, RATE, 'shape'),
])
def test_bad_chunks_are_refused_and_leave_the_buffer_alone(bad: tuple) -> None:
    samples, stamp, rate, message = bad
    buffer = AudioRingBuffer()
    stream(buffer, 5)
    end = buffer.end_time
    with pytest.raises(ValueError, match=message):
        buffer.push(samples, stamp, rate)
    assert buffer.end_time == end


def test_zero_length_chunk_is_a_no_op() -> None:
    buffer = AudioRingBuffer()
    report = buffer.push(np.zeros(0, np.float32), T0, RATE)
    assert report.written == 0 and buffer.empty


def test_scheduler_grid_and_skips() -> None:
    scheduler = WindowScheduler(window_sec=1.0, hop_sec=0.5)
    assert scheduler.due(T0, T0 + 0.9) is None
    end, skipped = scheduler.due(T0, T0 + 1.0)
    assert end == pytest.approx(T0 + 1.0) and skipped == 0
    scheduler.mark_done(end)
    assert scheduler.due(T0, T0 + 1.3) is None
    end, skipped = scheduler.due(T0, T0 + 2.7)   # 1.5, 2.0, 2.5 complete: take 2.5, skip 2
    assert end == pytest.approx(T0 + 2.5) and skipped == 2
    scheduler.mark_done(end)
    scheduler.configure(window_sec=2.0, hop_sec=1.0)  # live change continues from the last end
    end, skipped = scheduler.due(T0, T0 + 3.6)
    assert end == pytest.approx(T0 + 3.5) and skipped == 0


def test_scheduler_first_window_can_be_late() -> None:
    scheduler = WindowScheduler(window_sec=1.0, hop_sec=1.0)
    end, skipped = scheduler.due(T0, T0 + 3.2)
    assert end == pytest.approx(T0 + 3.0) and skipped == 2
    scheduler.reset()
    end, _ = scheduler.due(T0 + 10.0, T0 + 11.0)
    assert end == pytest.approx(T0 + 11.0)


def test_scheduler_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match='positive'):
        WindowScheduler(window_sec=0.0)


def test_frame_pairing_nearest_within_tolerance() -> None:
    frames: FrameBuffer[int] = FrameBuffer(max_age_sec=2.0)
    for i in range(60):
        frames.push(T0 + i / 30.0, i)
    pairing = frames.pair(T0 + 1.01, tolerance=0.05)
    assert pairing.status == 'ok' and pairing.item == 30
    assert pairing.offset == pytest.approx(-0.01)
    assert frames.pair(T0 + 3.0, tolerance=0.05).status == 'wait'
    assert frames.pair(T0 + 3.0, tolerance=0.05, final=True).status == 'missing'


def test_frame_buffer_ages_out_and_detects_backward_jump() -> None:
    frames: FrameBuffer[int] = FrameBuffer(max_age_sec=1.0, max_frames=100)
    for i in range(90):
        frames.push(T0 + i / 30.0, i)
    assert frames.newest_stamp - T0 == pytest.approx(89 / 30.0)
    assert len(frames) == 31
    assert frames.push(T0, 0) is True
    assert len(frames) == 1


def test_frame_buffer_sorts_slightly_late_frames() -> None:
    frames: FrameBuffer[str] = FrameBuffer()
    frames.push(T0 + 0.1, 'b')
    frames.push(T0 + 0.0, 'a')
    frames.push(T0 + 0.2, 'c')
    assert frames.pair(T0 + 0.01, tolerance=0.02).item == 'a'
    assert frames.newest_stamp == pytest.approx(T0 + 0.2)


def test_frame_buffer_count_cap() -> None:
    frames: FrameBuffer[int] = FrameBuffer(max_age_sec=100.0, max_frames=4)
    for i in range(10):
        frames.push(T0 + i, i)
    assert len(frames) == 4


def test_tolerance_override_keeps_receipt_stamped_stream_contiguous() -> None:
    buffer = AudioRingBuffer()
    rng = np.random.default_rng(1)
    for c in range(30):
        late = rng.uniform(0.0, 0.06)   # receipt-time stamps: up to two chunks of delay
        report = buffer.push(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE + late, RATE,
                             tolerance=0.1)
        assert report.gap_sec == 0.0 and report.late_sec == 0.0
    np.testing.assert_allclose(buffer.window(buffer.start_time, 0.9).samples,
                               ramp(round(0.9 * RATE)))


# ------------------------------------------------------------------------------ bounds
def test_buffer_size_is_bounded_before_allocation() -> None:
    buffer = AudioRingBuffer(capacity_sec=10.0)
    stream(buffer, 5)
    end = buffer.end_time
    with pytest.raises(ValueError, match='384000 Hz limit'):
        buffer.push(ramp(CHUNK), end, 1_000_000_000)
    with pytest.raises(ValueError, match='channels'):
        buffer.push(np.zeros((4, MAX_CHANNELS + 1), np.float32), end, RATE)
    big = AudioRingBuffer(capacity_sec=120.0)
    with pytest.raises(ValueError, match='MiB'):
        big.push(np.zeros((4, 8), np.float32), T0, MAX_SAMPLE_RATE)
    assert buffer.end_time == end and buffer.sample_rate == RATE and big.empty


def test_untrusted_chunk_only_fills_holes() -> None:
    buffer = AudioRingBuffer()
    stream(buffer, 10)
    buffer.push(ramp(CHUNK, 40 * CHUNK), T0 + 40 * CHUNK / RATE, RATE)   # hole: chunks 10..39
    late = buffer.push(ramp(CHUNK, 11 * CHUNK), T0 + 11 * CHUNK / RATE, RATE, allow_restart=False)
    assert late.reset is None and late.written == CHUNK
    again = buffer.push(np.ones(CHUNK, np.float32), T0 + 11 * CHUNK / RATE, RATE,
                        allow_restart=False)
    assert again.written == 0 and again.dropped == CHUNK     # never overwrites audio it has
    window = buffer.window(T0 + 11 * CHUNK / RATE, CHUNK / RATE)
    np.testing.assert_allclose(window.samples, ramp(CHUNK, 11 * CHUNK))


def test_scheduler_realign_keeps_the_grid_phase() -> None:
    scheduler = WindowScheduler(window_sec=1.0, hop_sec=0.5)
    end, _ = scheduler.due(T0, T0 + 1.0)
    scheduler.mark_done(end)
    scheduler.realign(T0 + 7.3)              # audio resumes at 7.3 s: the first whole window
    assert scheduler.next_end() == pytest.approx(T0 + 8.5)   # starts at 7.5 s, on the grid
