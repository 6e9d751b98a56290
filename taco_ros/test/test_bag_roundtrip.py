"""Bag round trip through the real node: make a bag → play it (twice, re-stamped) into taco_node →
record its outputs → read them back with rosbags.

Checked: one result per window (objects, mask and activation share each header), every header is a
played camera frame (the one nearest the window end), and no window that the audio and camera
cover is missing in either pass of the loop. taco_node runs as its own process with the random-
weight toy model configuration, so only structure and timing are tested, never the outputs' meaning.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bringup_fixtures import (
    LIB_DIR,
    SHARE_DIR,
    isolate_dds,
    ros_session,
    spin_until,
    stop_process,
    tool_missing,
)

pytestmark = [pytest.mark.ros,
              pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')),
                                 reason='needs espeak-ng and sox'),
              pytest.mark.skipif(not (LIB_DIR / 'taco_node').is_file(),
                                 reason='taco_node is not installed')]

WINDOW_NS = 1_000_000_000
FPS = 5.0
PAIR_TOLERANCE_NS = 100_000_000       # taco_node's pair_tolerance default (0.1 s)
WORDS = ['speech', 'sine wave', 'beep', 'music', 'dog', 'silence']


def _start_node(tmp_path: Path, model_config: Path) -> subprocess.Popen:
    words = ', '.join(f'"{w}"' for w in WORDS)
    command = [str(LIB_DIR / 'taco_node'), '--ros-args',
               '--params-file', str(SHARE_DIR / 'config' / 'taco.yaml'),
               '-p', f'model_config:={model_config}', '-p', 'allow_random_weights:=true',
               '-p', 'device:=cpu', '-p', 'image_qos:=reliable', '-p', 'audio_qos:=reliable',
               '-p', f'vocabulary:=[{words}]',
               # Lock-step: every due window is processed in order, however busy the machine is
               # (the live default drops the windows it cannot reach in time).
               '-p', 'window_queue:=16',
               '-r', 'image:=/camera/image_raw', '-r', 'audio:=/audio']
    env = dict(os.environ, **isolate_dds(), XDG_CACHE_HOME=str(tmp_path / 'cache'))
    env.pop('TACO_MODEL_DIR', None)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_bag_round_trip_through_taco_node(tmp_path: Path) -> None:
    from node_fixtures import small_model_config

    from taco_ros import bags
    from taco_ros.bags import BagPlayer, BagRecorder, output_topics

    config = bags.SceneConfig(width=160, height=120, fps=FPS, duration=4.0)
    source = tmp_path / 'scene'
    made = bags.make_synthetic_bag(source, config, block_size=512)
    node_process = _start_node(tmp_path, small_model_config(tmp_path / 'models'))
    results = tmp_path / 'results'
    topics = {t: m for t, m in output_topics('/taco_node', debug_image=False).items()
              if not t.endswith('diagnostics')}
    try:
        with ros_session('roundtrip_driver') as (_, node, executor):
            recorder = BagRecorder(node, results, dict(topics))
            span_s = (made.end_ns + 1 - made.start_ns) / 1e9
            # A whole-second period keeps the node's 1 s window grid aligned in both passes.
            player = BagPlayer(node, source, loops=2, restamp=True, qos='reliable',
                               loop_gap=math.ceil(span_s) + 1 - span_s)

            def node_ready() -> bool:
                assert node_process.poll() is None, node_process.stdout.read()
                return player.wait_for_subscribers(0.1) and len(recorder.subscribed()) >= 3
            assert spin_until(executor, node_ready, 120), 'taco_node did not come up'
            spin_until(executor, lambda: False, 0.5)
            outcome: dict = {}
            thread = threading.Thread(target=lambda: outcome.setdefault('report', player.play()))
            thread.start()
            spin_until(executor, lambda: not thread.is_alive(), 60)
            thread.join(timeout=5)
            # Drain: the last window is published about a second after its audio ends.
            settled = {'count': -1, 'since': time.monotonic()}

            def drained() -> bool:
                count = recorder.counts['/taco_node/objects']
                if count != settled['count']:
                    settled.update(count=count, since=time.monotonic())
                return time.monotonic() - settled['since'] > 4.0
            spin_until(executor, drained, 60)
            recorder.close()
    finally:
        stop_process(node_process)
    log = node_process.stdout.read()
    report = outcome['report']
    assert report.loops == 2 and report.published['/camera/image_raw'] == 2 * made.frames

    # Read back with rosbags alone.
    by_topic: dict[str, dict[int, object]] = {}
    for message in bags.read_messages(results):
        stamp = bags.stamp_ns(message.msg.header.stamp)
        assert stamp not in by_topic.setdefault(message.topic, {}), f'duplicate on {message.topic}'
        by_topic[message.topic][stamp] = message.msg
    objects = by_topic['/taco_node/objects']
    assert objects, f'no results recorded; taco_node said:\n{log}'
    # One result per window: the mask and the activation of each window carry its header.
    assert set(by_topic['/taco_node/mask']) == set(objects)
    assert set(by_topic['/taco_node/audio_activation']) == set(objects)
    assert len(by_topic['/taco_node/label_info']) == 1

    played = np.array(report.image_stamps_ns)
    ends = []
    for stamp, msg in objects.items():
        start, end = bags.stamp_ns(msg.audio_start), bags.stamp_ns(msg.audio_end)
        assert end - start == WINDOW_NS
        assert msg.header.frame_id == 'camera'
        # The header is the played frame nearest the window end (pair_with: end).
        assert stamp in set(played.tolist())
        assert stamp == played[np.argmin(np.abs(played - end))]
        mask = by_topic['/taco_node/mask'][stamp]
        assert (mask.width, mask.height, mask.encoding) == (160, 120, 'mono8')
        ends.append(end)
    assert len({round(e / 1e6) for e in ends}) == len(ends), 'two results for one window'

    # Nothing missing: every window whose audio lies inside one pass and that has a frame within
    # the pairing tolerance of its end has a result, in both passes.
    first_audio = played[0]           # the scene's first frame and first sample share a stamp
    period = played[made.frames] - played[0]
    audio_span = made.audio_chunks * 512 * 1_000_000_000 // config.sample_rate
    expected = []
    for k in range(2):
        origin = first_audio + k * period
        for end in range(origin + WINDOW_NS, origin + audio_span + 1, WINDOW_NS):
            if np.abs(played - end).min() <= PAIR_TOLERANCE_NS:
                expected.append(end)
    assert len(expected) == 2 * 4           # windows ending at 1, 2, 3, 4 s of each 4 s pass
    # taco_node keeps times as float seconds: its stamps are within a microsecond of the grid.
    missing = [e for e in expected if np.abs(np.array(ends) - e).min() > 1_000]
    assert not missing, (f'windows without a result (s after start): '
                         f'{[(m - first_audio) / 1e9 for m in missing]}; got '
                         f'{sorted((e - first_audio) / 1e9 for e in ends)}\n{log[-3000:]}')
