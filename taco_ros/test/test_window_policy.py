"""The window policy: which window runs next with which frame, on the caller's clock (pure Python,
no ROS). A Feed plays a microphone and a camera in stamp order; restarts, stray stamps, gaps and a
busy consumer are played by shifting stamps or holding back the calls for jobs."""

from __future__ import annotations

import numpy as np
import pytest

from taco_ros.core.contract import CLAP_CONTEXT_SEC
from taco_ros.core.windows import (
    RESET_BACKWARD_JUMP,
    RESET_CAMERA_JUMP,
    RESET_FORMAT_CHANGE,
    RESET_LARGE_GAP,
    WindowJob,
    WindowPolicy,
    WindowSettings,
)

RATE = 16000
CHUNK = 512  # 32 ms, the usual microphone block
T0 = 1_700_000_000.25  # epoch-like stamps, as a live ROS clock gives


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Samples whose value encodes their absolute index, so placement can be checked exactly."""
    return ((np.arange(start, start + n) % 1000) / 1000.0).astype(np.float32)


FPS = 30.0


class Feed:
    """Feeds a WindowPolicy a microphone (CHUNK at RATE) and a camera (FPS) in stamp order, on a
    caller's clock equal to the stream time. Frames carry their index; the stamps of either stream
    can be shifted (``audio_shift``, ``camera_shift``) to play restarts and clock errors."""

    def __init__(self, policy: WindowPolicy, t0: float = T0, clock: float = 0.0) -> None:
        self.policy = policy
        self.t0 = t0
        self.clock = clock      # the caller's clock runs this far ahead of the stamps
        self.chunk = 0
        self.frame = 0

    def run(self, until: float, audio: bool = True, camera: bool = True, take: bool = True,
            audio_shift: float = 0.0, camera_shift: float = 0.0) -> list[WindowJob]:
        """Feed both streams up to ``until`` seconds of stream time; with ``take``, ask for the
        newest window after every message and return the jobs."""
        jobs = []
        while True:
            t_audio = self.chunk * CHUNK / RATE if audio else np.inf
            t_frame = self.frame / FPS if camera else np.inf
            t = min(t_audio, t_frame)
            if t >= until - 1e-9:
                return jobs
            stamp, now = self.t0 + t, self.t0 + t + self.clock
            if t_audio <= t_frame:
                self.policy.add_audio(ramp(CHUNK, self.chunk * CHUNK), stamp + audio_shift, RATE,
                                      now=now)
                self.chunk += 1
            else:
                self.policy.add_frame(stamp + camera_shift, self.frame, now=now)
                self.frame += 1
            if take and (job := self.policy.next_job(now)) is not None:
                jobs.append(job)


def settings(**changes: object) -> WindowSettings:
    # frame_wait 0.2 s (the default was until a soak showed 30 Hz raw frames lagging the audio by
    # 0.3 s): the streams below are timed against it.
    return WindowSettings(**{'hop_sec': 1.0, 'window_sec': 1.0, 'frame_wait': 0.2, **changes})


def test_settings_from_node_parameters() -> None:
    values = {'window_sec': 2.0, 'hop_sec': 0.5, 'pair_with': 'centre', 'pair_tolerance': 0.05,
              'frame_wait': 0.3, 'buffer_sec': 12.0, 'stamp_tolerance': 0.01,
              'cold_start_gap': 0.1, 'audio_context': 'history', 'mode': 'full'}
    s = WindowSettings.from_params(values)
    assert (s.window_sec, s.hop_sec, s.pair_with, s.buffer_sec) == (2.0, 0.5, 'centre', 12.0)
    assert s.history_sec == CLAP_CONTEXT_SEC and s.pair_offset == 1.0
    assert WindowSettings.from_params({'audio_context': 'tile'}).history_sec == 0.0
    with pytest.raises(ValueError, match='pair_with'):
        WindowSettings(pair_with='start')
    with pytest.raises(ValueError, match='buffer_sec'):
        WindowSettings(buffer_sec=5.0, history_sec=7.0)


@pytest.mark.parametrize('pair_with,offset', [('end', 0.0), ('centre', 0.5)])
def test_windows_on_the_grid_pair_with_the_nearest_frame(pair_with: str, offset: float) -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(pair_with=pair_with))
    jobs = Feed(policy).run(5.1)
    assert [round(j.end - T0, 6) for j in jobs] == [1.0, 2.0, 3.0, 4.0, 5.0]
    for job in jobs:
        target = job.end - offset
        assert job.frame == round((target - T0) * FPS)
        assert job.frame_stamp == pytest.approx(T0 + job.frame / FPS)
        assert job.window.start == pytest.approx(job.end - 1.0) and job.window.gap_fraction == 0
        np.testing.assert_allclose(job.window.samples, ramp(RATE, round((job.end - T0 - 1) * RATE)))
        assert job.cold_reason is None
    assert not policy.drops


def test_newest_only_drops_busy_windows_and_the_queue_keeps_them_in_order() -> None:
    newest: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.25))
    queued: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.25))
    for policy in (newest, queued):
        Feed(policy).run(3.05, take=False)
    # A consumer that was away for 3 s: newest takes 3.0 and counts 8 passed over (1.0 .. 2.75).
    now = T0 + 3.1
    job = newest.next_job(now)
    assert job.end == pytest.approx(T0 + 3.0) and newest.drops == {'busy': 8}
    ends = []
    while (job := queued.next_job(now, newest_only=False)) is not None:
        ends.append(round(job.end - T0, 6))
        assert abs(job.frame_stamp - job.end) <= 0.5 / FPS + 1e-6   # late windows keep frames
    assert ends == [1.0 + 0.25 * k for k in range(9)] and not queued.drops


def test_queue_backlog_keeps_the_newest_windows() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.25))
    Feed(policy).run(3.05, take=False)
    ends = []
    while (job := policy.next_job(T0 + 3.1, newest_only=False, max_backlog=3)) is not None:
        ends.append(round(job.end - T0, 6))
    assert ends == [2.5, 2.75, 3.0] and policy.drops == {'busy': 6}


def test_a_late_window_keeps_its_frame() -> None:
    """A consumer busy for longer than the old frame age (1.8 s) still finds the frame."""
    policy: WindowPolicy[int] = WindowPolicy(settings(hop_sec=4.0, pair_with='centre'))
    policy.next_job(T0)                             # the newest-window policy from the start
    Feed(policy).run(4.6, take=False)               # 3.6 s of input after the window, no consumer
    job = policy.next_job(T0 + 4.6)
    assert job is not None and job.frame == 15 and not policy.drops


def test_frame_wait_stall_and_end_of_stream() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(frame_wait=0.2, stall_sec=2.0))
    for i in range(28):                      # frames up to 0.9 s, none after the window's end
        policy.add_frame(T0 + i / FPS, i, now=T0)
    for c in range(32):                      # 1.024 s of audio, then the stream stops
        policy.add_audio(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE, RATE, now=T0 + 1.0)
    assert policy.next_job(T0 + 1.5) is None          # a nearer frame may still come
    assert policy.next_job(T0 + 1.5, end_of_stream=True).frame == 27
    policy.reset()
    for i in range(28):
        policy.add_frame(T0 + i / FPS, i, now=T0)
    for c in range(32):
        policy.add_audio(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE, RATE, now=T0 + 1.0)
    assert policy.next_job(T0 + 2.9) is None
    assert policy.next_job(T0 + 3.1).frame == 27      # audio silent for 2.1 s: stalled


def test_late_frames_count_only_frames_the_decided_window_would_have_taken() -> None:
    """Frames in order after a window's frame are not late; a frame nearer than the one the
    window took (decided by frame_wait), or one where it had none, is."""
    policy: WindowPolicy[int] = WindowPolicy(settings())
    Feed(policy).run(2.5)                    # in order: each window waits for its frame
    assert policy.next_job(T0 + 2.5) is None and 'late_frames' not in policy.events
    lagging: WindowPolicy[int] = WindowPolicy(settings(frame_wait=0.2))
    for i in range(30):                      # frames up to 0.967 s
        lagging.add_frame(T0 + i / FPS, i, now=T0)
    for c in range(38):                      # 1.216 s of audio: frame_wait is over
        lagging.add_audio(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE, RATE, now=T0 + 1.2)
    assert lagging.next_job(T0 + 1.2).frame == 29
    lagging.add_frame(T0 + 32 / FPS, 32, now=T0 + 1.2)       # 0.067 s after the end: farther
    assert 'late_frames' not in lagging.events
    lagging.add_frame(T0 + 30 / FPS, 30, now=T0 + 1.2)       # at the end: nearer, late
    assert lagging.events['late_frames'] == 1


def test_no_frame_and_evicted_frame_are_told_apart() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(pair_tolerance=0.02))
    Feed(policy).run(2.25, camera=False, take=False)
    assert policy.next_job(T0 + 2.3) is None and policy.drops == {'no_frame': 1, 'busy': 1}
    capped: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.5), max_frames=10)
    Feed(capped).run(3.05, take=False)
    ends = []
    while (job := capped.next_job(T0 + 3.1, newest_only=False)) is not None:
        ends.append(round(job.end - T0, 6))
    assert ends == [3.0] and capped.drops == {'frame_evicted': 4}


def test_queued_windows_expire_when_their_audio_leaves_the_buffer() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(buffer_sec=3.0, hop_sec=0.5),
                                             max_frames=1000)
    Feed(policy).run(6.05, take=False)
    ends = []
    while (job := policy.next_job(T0 + 6.1, newest_only=False)) is not None:
        ends.append(round(job.end - T0, 6))
        assert job.window.gap_fraction == 0.0
    assert ends == [4.5, 5.0, 5.5, 6.0] and policy.drops == {'expired': 7}


def test_audio_first_bag_loop_restarts_once_on_a_new_grid() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.5))
    feed = Feed(policy)
    feed.run(4.0)
    feed.t0, feed.clock = T0 - 30.0, 30.0            # the bag loops
    jobs = feed.run(5.0, camera=False)               # the microphone notices first ...
    for k in range(3):                               # (old frames still in flight)
        assert not policy.add_frame(T0 + 4.0 + k / FPS, -1, now=T0 + 4.8)
    jobs += feed.run(8.0)                            # ... then the camera
    assert policy.restarts == {RESET_BACKWARD_JUMP: 1}
    notices = policy.take_notices()
    assert len(notices) == 1 and 'time jumped back 30.0 s' in notices[0]
    assert jobs and jobs[0].cold_reason and 'restarted' in jobs[0].cold_reason
    assert all(j.cold_reason is None for j in jobs[1:])
    origin = jobs[0].window.start
    assert origin == pytest.approx(T0 - 26.0)
    assert [round(j.end - origin, 6) for j in jobs] == [1.0 + 0.5 * k for k in range(6)]
    assert all(abs(j.frame_stamp - j.end) <= 0.1 for j in jobs)
    # The window ending at 4.0 s was still waiting for its frame when its audio was cleared.
    assert policy.events['stale_frames'] == 3 and policy.drops == {'restart': 1}


def test_camera_first_bag_loop_loses_no_window_of_the_old_time_line() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.5))
    feed = Feed(policy)
    feed.run(3.8)                                    # both streams up to 3.8 s
    feed.run(4.7, audio=False)                       # the camera runs on to 4.7 s ...
    for i in range(18):                              # ... and loops back to the bag's start
        assert policy.add_frame(T0 - 30.0 + i / FPS, i, now=T0 + 4.7) == (i == 1)
    jobs = feed.run(4.8, camera=False)               # the microphone is still on the old line
    assert [round(j.end - T0, 6) for j in jobs] == [4.0, 4.5]
    assert [j.frame for j in jobs] == [120, 135]
    loop = Feed(policy, t0=T0 - 30.0, clock=34.8)    # now the microphone loops too
    loop.frame = 18
    jobs = loop.run(2.0)
    assert policy.restarts == {RESET_BACKWARD_JUMP: 1}
    notices = policy.take_notices()
    assert len(notices) == 1 and 'camera and audio time jumped back' in notices[0]
    assert jobs[0].end == pytest.approx(T0 - 30.0 + 1.0) and jobs[0].cold_reason
    assert jobs[0].frame == 30 and not policy.drops.get('no_frame')


def test_camera_restart_the_audio_does_not_follow() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    feed = Feed(policy)
    feed.run(2.0)
    feed.run(6.0, camera_shift=-20.0)      # the camera's clock jumped back, the audio's did not
    assert policy.restarts == {RESET_CAMERA_JUMP: 1}
    assert 'camera time jumped back 20.0 s' in ' '.join(policy.take_notices())
    assert policy.drops['no_frame'] >= 1


@pytest.mark.parametrize('shift', [-10.0, -0.8, 30.0])
def test_a_stray_audio_stamp_moves_neither_the_grid_nor_the_windows(shift: float) -> None:
    clean: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.5))
    stray: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.5))
    expected = Feed(clean).run(4.0)
    feed = Feed(stray)
    jobs = feed.run(2.0)
    stray.add_audio(np.ones(CHUNK, np.float32), T0 + 2.0 + shift, RATE, now=T0 + 2.0)
    jobs += feed.run(4.0)
    assert not stray.restarts and stray.events['stray_audio_chunks'] == 1
    assert [j.end for j in jobs] == [j.end for j in expected]
    for job, reference in zip(jobs, expected, strict=True):
        np.testing.assert_array_equal(job.window.samples, reference.window.samples)
        assert job.cold_reason is None
    assert len(stray.take_notices()) == 1


def test_a_stray_frame_in_the_future_restarts_nothing() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    feed = Feed(policy)
    jobs = feed.run(1.5)
    policy.add_frame(T0 + 100.0, -1, now=T0 + 1.5)
    jobs += feed.run(4.1)
    assert not policy.restarts and policy.events['stray_frames'] == 1
    assert [round(j.end - T0, 6) for j in jobs] == [1.0, 2.0, 3.0, 4.0]
    assert all(j.frame == round((j.end - T0) * FPS) and j.cold_reason is None for j in jobs)


def test_repeated_audio_stamps_are_appended_and_duplicates_ignored() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    for i in range(40):
        policy.add_frame(T0 + i / FPS, i, now=T0)
    for c in range(40):
        stamp = T0 + (c - (c == 10)) * CHUNK / RATE     # chunk 10 repeats chunk 9's stamp
        report = policy.add_audio(ramp(CHUNK, c * CHUNK), stamp, RATE, now=T0)
        assert report.repeated_stamp == (c == 10)
        if c == 20:                                 # a duplicate delivery
            assert policy.add_audio(ramp(CHUNK, c * CHUNK), stamp, RATE, now=T0).duplicate
    job = policy.next_job(T0 + 1.3)
    assert job.window.gap_fraction == 0.0 and job.cold_reason is None
    np.testing.assert_allclose(job.window.samples, ramp(RATE))
    assert policy.events == {'repeated_audio_stamps': 1, 'duplicate_audio_chunks': 1}


def test_a_long_gap_keeps_the_grid_phase_and_starts_cold() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(hop_sec=0.5))
    feed = Feed(policy)
    feed.run(2.2)
    feed.chunk += round(7.0 * RATE / CHUNK)       # 7 s without audio (mic unplugged)
    feed.frame += round(7.0 * FPS)
    jobs = feed.run(11.2)
    assert policy.restarts == {RESET_LARGE_GAP: 1}
    first = jobs[0]
    assert first.cold_reason and 'gap' in first.cold_reason
    assert ((first.end - T0) / 0.5) == pytest.approx(round((first.end - T0) / 0.5))
    assert first.window.gap_fraction == 0.0


def test_format_change_restarts_with_the_new_rate() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    feed = Feed(policy)
    feed.run(1.5)
    t = T0 + feed.chunk * CHUNK / RATE
    for i in range(60):
        policy.add_frame(t + i / FPS, i, now=t)
    for c in range(70):
        policy.add_audio(np.full(1536, 0.5, np.float32), t + c * 0.032, 48000, now=t + c * 0.032)
    job = policy.next_job(t + 2.3)
    assert policy.restarts == {RESET_FORMAT_CHANGE: 1}
    assert job.window.sample_rate == 48000 and job.window.start >= t - 1e-6
    assert 'format changed' in job.cold_reason


def test_format_change_together_with_a_loop_starts_a_new_grid() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    feed = Feed(policy)
    feed.run(3.0)
    t = T0 - 20.0                                   # the first chunk after the loop is at 48 kHz
    for i in range(60):
        policy.add_frame(t + i / FPS, i, now=T0 + 3.0)
    for c in range(50):
        policy.add_audio(np.full(1536, 0.5, np.float32), t + c * 0.032, 48000, now=T0 + 3.0)
    job = policy.next_job(T0 + 4.7)
    assert policy.restarts == {RESET_FORMAT_CHANGE: 1}
    assert job is not None and job.end == pytest.approx(t + 1.0)
    assert 'format changed' in job.cold_reason and 'jumped back 23.0 s' in job.cold_reason


def test_audio_gap_in_a_window_forces_a_cold_start() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings(cold_start_gap=0.25))
    for i in range(40):
        policy.add_frame(T0 + i / FPS, i, now=T0)
    for c in range(40):
        if 5 <= c < 15:
            continue                               # 320 ms missing
        policy.add_audio(ramp(CHUNK, c * CHUNK), T0 + c * CHUNK / RATE, RATE, now=T0)
    job = policy.next_job(T0 + 1.3)
    assert job.cold_reason == '0.32 s of the window has no audio'


def test_bad_chunks_change_nothing_in_the_policy() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    Feed(policy).run(0.5)
    end = policy.audio_end
    with pytest.raises(ValueError, match='limit'):
        policy.add_audio(np.zeros(16), end, 10 ** 9, now=T0)
    with pytest.raises(ValueError, match='NaN'):
        policy.add_audio(np.array([np.nan], np.float32), end, RATE, now=T0)
    with pytest.raises(ValueError, match='finite'):
        policy.add_frame(float('inf'), 0, now=T0)
    assert policy.audio_end == end and policy.sample_rate == RATE and not policy.restarts


def test_live_reconfiguration_continues_the_grid() -> None:
    policy: WindowPolicy[int] = WindowPolicy(settings())
    feed = Feed(policy)
    jobs = feed.run(2.05)
    policy.configure(settings(hop_sec=0.5, pair_with='centre'))
    jobs += feed.run(3.15)
    assert [round(j.end - T0, 6) for j in jobs] == [1.0, 2.0, 2.5, 3.0]
    assert jobs[-1].frame == round((3.0 - 0.5) * FPS)
