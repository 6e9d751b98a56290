"""The demo: its report pieces on made-up windows, its settings, and the whole `taco-ros demo --small`
run end to end, both ways: bag → bag process (every window on bag time) → GIF, MP4, contact sheet,
table; and --live: bag → taco_node process over DDS → recorded outputs → the same pictures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bringup_fixtures import INSTALL, LIB_DIR, isolate_dds, tool_missing

from taco_ros.demo import report as demo_report
from taco_ros.demo.report import ObjectView, WindowResult
from taco_ros.overlay import colour_of

START = 1_000_000_000_000


def _window(second: int, label: str | None, latency_ms: float = 250.0) -> WindowResult:
    mask = np.zeros((60, 80), np.uint8)
    objects = []
    if label:
        mask[10:30, 20:50] = 1
        objects = [ObjectView(1, label, 0.31, 0.8, (20, 10, 30, 20))]
    end = START + second * 1_000_000_000
    return WindowResult(stamp_ns=end, audio_start_ns=end - 1_000_000_000, audio_end_ns=end,
                        sounding=bool(label), confidence=0.8 if label else 0.1, steps=40 + second,
                        cold_start=second == 1, mode='full', objects=objects,
                        received_ns=end + int(latency_ms * 1e6), mask=mask,
                        activation=np.linspace(0, 1, 8, dtype=np.float32))


WINDOWS = [_window(1, 'speech'), _window(2, None), _window(3, 'dog', 400.0)]
FRAMES = [np.full((60, 80, 3), 90 + 40 * i, np.uint8) for i in range(3)]
EVENTS = [{'kind': 'speech', 'start': 0.2, 'end': 1.5, 'source': 'red ball'},
          {'kind': 'tone', 'start': 2.5, 'end': 3.0, 'source': 'blue box'}]


def test_window_table_lists_every_window() -> None:
    table = demo_report.window_table(WINDOWS, START, EVENTS)
    lines = table.splitlines()
    assert lines[0].split() == ['time', 's', 'label', 'conf', 'steps', 'cold', 'latency', 'ms',
                                'true', 'sound']
    assert len(lines) == 2 + len(WINDOWS)
    assert lines[2].split() == ['1.00', 'speech', '0.80', '41', 'yes', '250', 'speech']
    assert lines[3].split() == ['2.00', '(nothing)', '0.10', '42', '250', 'speech']
    assert lines[4].split() == ['3.00', 'dog', '0.80', '43', '400', 'tone']
    assert demo_report.sound_at(EVENTS, 1.6, 2.4) == '-'


def test_window_with_several_objects_lists_each_label() -> None:
    window = _window(4, 'sine wave')
    window.objects.append(ObjectView(2, 'beep, bleep', 0.28, 0.6, (50, 30, 20, 20)))
    events = [{'kind': 'tone', 'start': 2.5, 'end': 4.5, 'source': 'blue box'},
              {'kind': 'beeps', 'start': 3.2, 'end': 5.0, 'source': 'yellow triangle'}]
    row = demo_report.window_table([window], START, events).splitlines()[2]
    assert 'sine wave + beep, bleep' in row and row.endswith('tone+beeps')
    assert 'sine wave + beep, bleep' in demo_report.window_caption(window, START)


def test_overlay_draws_the_mask_in_its_colour_and_scales() -> None:
    frame = np.full((200, 300, 3), 90, np.uint8)
    window = _window(1, 'speech')
    window.mask = np.zeros((200, 300), np.uint8)
    window.mask[60:110, 100:200] = 1
    window.objects[0].bbox = (100, 60, 100, 50)
    image = demo_report.overlay(frame, window, random_weights=False)
    assert image.shape == frame.shape
    tint = np.array(colour_of(1))
    assert np.abs(image[90, 150].astype(int) - (frame[90, 150] + tint) / 2).max() <= 1
    assert np.array_equal(image[130, 280], frame[130, 280])      # outside: untouched
    big = demo_report.overlay(frame, window, random_weights=False, width=600)
    assert big.shape == (400, 600, 3)
    assert np.array_equal(big[180, 300], image[90, 150])          # the mask scaled with the frame


def test_contact_sheet_and_animation_carry_the_random_weights_banner(tmp_path: Path) -> None:
    plain = demo_report.contact_sheet(FRAMES, WINDOWS, START, False, 'title', None, columns=2,
                                      tile_width=160)
    marked = demo_report.contact_sheet(FRAMES, WINDOWS, START, True, 'title', EVENTS, columns=2,
                                       tile_width=160)
    assert plain.shape[1] == marked.shape[1] == 2 * 160
    banner_rows = marked[28:56]
    assert (banner_rows[..., 0].astype(int) - banner_rows[..., 2]).mean() > 80   # a red bar
    assert marked.shape[0] > plain.shape[0]
    frames = demo_report.animation_frames(FRAMES, WINDOWS, START, True, width=200)
    assert len(frames) == 3 and {f.shape for f in frames} == {frames[0].shape}
    gif = demo_report.write_gif(tmp_path / 'a.gif', frames, 1.0)
    from PIL import Image
    with Image.open(gif) as picture:
        assert picture.n_frames == 3 and picture.info['duration'] == 1000
    png = demo_report.write_png(tmp_path / 'sheet.png', marked)
    with Image.open(png) as picture:
        assert picture.size == (marked.shape[1], marked.shape[0])
    with pytest.raises(ValueError):
        demo_report.contact_sheet(FRAMES[:2], WINDOWS, START, False, 't')


def test_demo_defaults_are_the_user_sizes_and_small_is_for_ci() -> None:
    from taco_ros.cli import build_parser
    from taco_ros.demo.run import node_overrides, settings_from_args

    parser = build_parser()
    user = settings_from_args(parser.parse_args(['demo']))
    assert (user.width, user.height, user.fps, user.duration) == (640, 480, 15.0, 12.0)
    assert user.model_config == 'taco_convnext_large' and user.vocabulary is None
    small = settings_from_args(parser.parse_args(['demo', '--small', '--fps', '4']))
    assert small.model_config == 'taco_tiny' and small.input_size == 256
    assert small.fps == 4.0 and small.width == 160 and small.device == 'cpu'
    # The scene has two sources at once: the demo asks the node for up to 3 objects per window.
    assert user.max_objects == small.max_objects == 3
    assert node_overrides(small, random_weights=True)['max_objects'] == 3
    one = settings_from_args(parser.parse_args(['demo', '--max-objects', '1']))
    assert node_overrides(one, random_weights=False)['max_objects'] == 1
    with pytest.raises(ValueError, match='--size'):
        settings_from_args(argparse.Namespace(**{**vars(parser.parse_args(['demo'])),
                                                 'size': '640'}))


@pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')), reason='needs espeak-ng and sox')
def test_demo_processes_every_window_at_ci_size(tmp_path: Path) -> None:
    out = tmp_path / 'demo'
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
    env.pop('TACO_MODEL_DIR', None)      # no weights anywhere: the random-weight path
    result = subprocess.run(
        ['bash', '-c', f'source {INSTALL}/setup.bash && taco-ros demo --small --output-dir {out}'],
        env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    assert text.count('masks are meaningless until you run `taco-ros models fetch`') == 2
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['mode'] == 'process' and summary['random_weights'] is True
    # Every window of the 4 s scene, however slow this machine is: windows end at 1, 2, 3, 4 s.
    assert summary['windows'] == 4 and summary['frames'] == 21
    assert summary['median_latency_ms'] is None
    assert summary['windows_per_second'] == pytest.approx(4 / summary['seconds'])
    assert f"processed in {summary['seconds']:.1f} s" in text
    table = (out / 'windows.txt').read_text().splitlines()
    assert [row.split()[0] for row in table[2:]] == ['1.00', '2.00', '3.00', '4.00']
    assert '\n'.join(table) in text
    from PIL import Image
    with Image.open(out / 'overlay.gif') as gif:
        assert gif.n_frames == 4
    with Image.open(out / 'contact_sheet.png') as sheet:
        assert sheet.size[0] >= 640
    from taco_ros import bags
    recorded = bags.bag_topics(out / 'results_bag')
    assert recorded['/taco_node/objects'][1] == 4 and recorded['/taco_node/label_info'][1] == 1


@pytest.mark.ros
@pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')), reason='needs espeak-ng and sox')
@pytest.mark.skipif(not (LIB_DIR / 'taco_node').is_file(), reason='taco_node is not installed')
def test_live_demo_runs_end_to_end_at_ci_size(tmp_path: Path) -> None:
    out = tmp_path / 'demo'
    env = dict(os.environ, **isolate_dds(), XDG_CACHE_HOME=str(tmp_path / 'cache'))
    env.pop('TACO_MODEL_DIR', None)      # no weights anywhere: the random-weight path
    result = subprocess.run(
        ['bash', '-c', f'source {INSTALL}/setup.bash && taco-ros demo --small --live --output-dir {out}'],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    assert text.count('masks are meaningless until you run `taco-ros models fetch`') == 2

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['random_weights'] is True and summary['mode'] == 'live'
    assert summary['windows'] >= 3 and summary['frames'] == 21      # 0 .. 4 s at 5 fps
    table = (out / 'windows.txt').read_text().splitlines()
    assert len(table) == 2 + summary['windows']
    assert table[2].split()[0] == '1.00'             # first window ends 1 s into the scene
    for row in table[2:]:
        assert float(row.split()[0]) == pytest.approx(round(float(row.split()[0])))
    assert table[0].split()[-2:] == ['true', 'sound']
    assert '\n'.join(table) in text                  # printed in the terminal too

    from PIL import Image
    with Image.open(out / 'contact_sheet.png') as sheet:
        assert sheet.size[0] >= 640
    with Image.open(out / 'overlay.gif') as gif:
        assert gif.n_frames == summary['windows']
    if summary['mp4']:
        assert Path(summary['mp4']).stat().st_size > 1000
    from taco_ros import bags
    recorded = bags.bag_topics(out / 'results_bag')
    assert recorded['/taco_node/objects'][1] == summary['windows']
    assert recorded['/taco_node/label_info'][1] == 1
    assert bags.bag_topics(out / 'sample_bag')['/camera/image_raw'][1] == 21
