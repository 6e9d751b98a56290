"""bag process (deterministic replay through taco_node's window policy and pipeline) and bag compare.

Every window of a bag matters here (no DDS, bag time): the tests count windows exactly. The models are
the random-weight toy configuration, so only structure and reproducibility are tested, never meaning.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
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

from taco_ros import bags
from taco_ros.bags.results import ObjectView, WindowResult
from taco_ros.cli import main

needs_audio_tools = pytest.mark.skipif(bool(tool_missing('espeak-ng', 'sox')),
                                       reason='needs espeak-ng and sox')
SCENE = bags.SceneConfig(width=160, height=120, fps=5.0, duration=4.0)
START = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
WORDS = ['speech', 'sine wave', 'beep', 'music', 'dog', 'silence']
STRICT = ['--iou-tol', '1', '--confidence-tol', '0']


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope='module', autouse=True)
def _no_user_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Model files are searched nowhere the user keeps them: the random-weight path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv('TACO_MODEL_DIR', raising=False)
        patch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('xdg_cache')))
        yield


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('bag_process')


@pytest.fixture(scope='module')
def overrides(workdir: Path) -> dict:
    from node_fixtures import small_model_config

    # solver_max_steps bounds the time of a window on a busy machine; it changes no structure.
    return {'model_config': str(small_model_config(workdir / 'models')), 'device': 'cpu',
            'allow_random_weights': True, 'solver_max_steps': 40, 'vocabulary': WORDS}


def _cli_params(overrides: dict) -> list[str]:
    args = []
    for name, value in overrides.items():
        text = ('[' + ', '.join(f'"{w}"' for w in value) + ']' if isinstance(value, list)
                else str(value).lower() if isinstance(value, bool) else str(value))
        args += ['-p', f'{name}:={text}']
    return args


@pytest.fixture(scope='module')
def scene_bag(workdir: Path) -> Path:
    if tool_missing('espeak-ng', 'sox'):
        pytest.skip('needs espeak-ng and sox')
    bags.make_synthetic_bag(workdir / 'scene', SCENE, start_ns=START)
    return workdir / 'scene'


@pytest.fixture(scope='module')
def first_result(workdir: Path, scene_bag: Path, overrides: dict) -> Path:
    out = workdir / 'result_1'
    code = main(['bag', 'process', str(scene_bag), '--out', str(out), '--no-progress',
                 '--debug-image', '--pictures', str(workdir / 'pictures'), *_cli_params(overrides)])
    assert code == 0
    return out


@pytest.fixture(scope='module')
def processor(overrides: dict) -> Iterator[bags.process.BagProcessor]:
    """One loaded pipeline for the tests that process several bags."""
    values, _ = bags.node_parameters(None, overrides)
    loaded = bags.process.BagProcessor(values)
    loaded.load()
    yield loaded
    loaded.close()


# -- process: structure and determinism ------------------------------------------------------------
@needs_audio_tools
def test_every_window_is_processed_with_the_nodes_outputs(first_result: Path, scene_bag: Path,
                                                          workdir: Path) -> None:
    topics = bags.bag_topics(first_result)
    assert topics == {'/taco_node/mask': (bags.OUTPUT_TOPICS['mask'], 4),
                      '/taco_node/objects': (bags.OUTPUT_TOPICS['objects'], 4),
                      '/taco_node/audio_activation': (bags.OUTPUT_TOPICS['audio_activation'], 4),
                      '/taco_node/debug_image': (bags.OUTPUT_TOPICS['debug_image'], 4),
                      '/taco_node/label_info': (bags.OUTPUT_TOPICS['label_info'], 1)}
    windows = bags.read_windows(first_result)
    # Windows end at 1, 2, 3 and 4 s; each is paired with the frame at its end (5 fps).
    assert [w.audio_end_ns - START for w in windows] == pytest.approx(
        [1 * SECOND, 2 * SECOND, 3 * SECOND, 4 * SECOND], abs=1_000)
    assert [w.stamp_ns - START for w in windows] == [SECOND, 2 * SECOND, 3 * SECOND, 4 * SECOND]
    for window in windows:
        assert window.audio_end_ns - window.audio_start_ns == pytest.approx(SECOND, abs=1_000)
        assert window.mask.shape == (120, 160)
        assert window.factor_index is not None and window.activation.size > 0
    assert bags.read_vocabulary(first_result) == [WORDS]
    # Outputs are logged in bag time, never before their window's audio was complete.
    for message in bags.read_messages(first_result, ['/taco_node/objects']):
        assert message.log_ns >= bags.stamp_ns(message.msg.audio_end)
    debug = next(bags.read_messages(first_result, ['/taco_node/debug_image'])).msg
    assert (debug.width, debug.height, debug.encoding) == (160, 120, 'rgb8')
    # --pictures: the demo's pictures of the result bag.
    table = (workdir / 'pictures' / 'windows.txt').read_text().splitlines()
    assert [row.split()[0] for row in table[2:]] == ['1.00', '2.00', '3.00', '4.00']
    assert (workdir / 'pictures' / 'contact_sheet.png').stat().st_size > 1000


@needs_audio_tools
def test_processing_twice_gives_identical_results(first_result: Path, scene_bag: Path,
                                                  workdir: Path, overrides: dict,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    second = workdir / 'result_2'
    assert main(['bag', 'process', str(scene_bag), '--out', str(second), '--no-progress',
                 *_cli_params(overrides)]) == 0
    capsys.readouterr()
    assert main(['bag', 'compare', str(first_result), str(second), *STRICT]) == 0
    assert 'SAME: 4 windows' in capsys.readouterr().out
    # Bit for bit: the masks, activations and every field of every window.
    a, b = bags.read_windows(first_result), bags.read_windows(second)
    for wa, wb in zip(a, b, strict=True):
        assert np.array_equal(wa.mask, wb.mask) and np.array_equal(wa.activation, wb.activation)
        assert (wa.confidence, wa.steps, wa.cold_start, wa.objects) == (
            wb.confidence, wb.steps, wb.cold_start, wb.objects)


@needs_audio_tools
def test_mcap_input_and_output_give_the_same_results(first_result: Path, workdir: Path,
                                                     processor: bags.process.BagProcessor) -> None:
    source = workdir / 'scene_mcap'
    bags.make_synthetic_bag(source, SCENE, start_ns=START, storage='mcap')
    out = workdir / 'result_mcap'
    report = processor.run(source, out)
    assert report.windows == 4 and report.failed == 0 and report.frames == 21
    assert 'storage_identifier: mcap' in (out / 'metadata.yaml').read_text()
    comparison = bags.compare_bags(first_result, out, bags.Tolerances(min_iou=1.0, confidence=0.0))
    assert comparison.ok, bags.format_comparison(comparison)


@needs_audio_tools
def test_compressed_frames_and_unstamped_multiarray_audio(workdir: Path,
                                                          processor: bags.process.BagProcessor
                                                          ) -> None:
    """CompressedImage + std_msgs/Int16MultiArray (no stamps: stamped at log time minus duration,
    as the node stamps them at receipt) give the results of the same scene with stamped chunks."""
    from rosbags.rosbag2 import Writer

    compressed = workdir / 'scene_jpeg'
    bags.make_synthetic_bag(compressed, SCENE, start_ns=START, compressed=True)
    multiarray = workdir / 'scene_jpeg_multiarray'
    store = bags.typestore()
    array_type = 'std_msgs/msg/Int16MultiArray'
    Array = store.types[array_type]
    Layout = store.types['std_msgs/msg/MultiArrayLayout']
    image_topic = bags.IMAGE_TOPIC + '/compressed'
    with Writer(multiarray, version=9) as writer:
        image = writer.add_connection(image_topic, bags.COMPRESSED_TYPE, typestore=store)
        audio = writer.add_connection('/mic', array_type, typestore=store)
        for message in bags.read_messages(compressed):
            if message.topic == image_topic:
                writer.write(image, message.log_ns, message.raw)
            else:
                samples = bags.samples_from_message(message.msg)[:, 0]
                msg = Array(layout=Layout(dim=[], data_offset=0), data=samples)
                writer.write(audio, message.log_ns, store.serialize_cdr(msg, array_type))
    results = []
    for source in (compressed, multiarray):
        report = processor.run(source, workdir / f'result_{source.name}')
        assert report.windows == 4 and report.failed == 0
        results.append(report)
    assert results[1].audio_topic == '/mic'
    assert results[1].problems['unstamped_audio'] == results[0].audio_chunks == 125
    comparison = bags.compare_bags(results[0].output_bag, results[1].output_bag)
    assert comparison.ok, bags.format_comparison(comparison)


# -- compare ---------------------------------------------------------------------------------------
def _rewrite(source: Path, target: Path, change: object) -> None:
    """Copy a result bag, passing each deserialized message through ``change(topic, index, msg)``
    (index: the message's position on its topic)."""
    from rosbags.rosbag2 import Writer

    store = bags.typestore()
    counts: dict[str, int] = {}
    with Writer(target, version=9) as writer:
        connections = {}
        for topic, (msgtype, _) in bags.bag_topics(source).items():
            connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for message in bags.read_messages(source):
            index = counts.get(message.topic, 0)
            counts[message.topic] = index + 1
            msg = change(message.topic, index, message.msg)
            if msg is not None:
                writer.write(connections[message.topic], message.log_ns,
                             store.serialize_cdr(msg, message.msgtype))


@needs_audio_tools
def test_compare_detects_a_changed_result(first_result: Path, workdir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def flip_decision(topic: str, index: int, msg: object) -> object:
        if topic.endswith('/objects') and index == 2:
            msg.sounding = not msg.sounding
        return msg

    def shift_mask(topic: str, index: int, msg: object) -> object:
        if topic.endswith('/mask') and index == 1:
            pixels = np.array(msg.data).reshape(msg.height, msg.step)
            pixels[:] = 0
            pixels[:60, :80] = 1          # a quarter of the frame, where there was nothing
            msg.data = pixels.reshape(-1)
        return msg

    def nudge_confidence(topic: str, index: int, msg: object) -> object:
        if topic.endswith('/objects'):
            msg.confidence = float(msg.confidence) + 0.004
        return msg

    def drop_window(topic: str, index: int, msg: object) -> object:
        return None if topic.endswith('/objects') and index == 3 else msg

    def change_k_star(topic: str, index: int, msg: object) -> object:
        if topic.endswith('/audio_activation') and index == 0:
            msg.factor_index = (int(msg.factor_index) + 1) % 256
        return msg

    expected = {'decision': (flip_decision, 'sounding'), 'mask': (shift_mask, 'mask IoU 0.0000'),
                'missing': (drop_window, 'only in A'), 'k_star': (change_k_star, 'k* ')}
    for name, (change, reason) in expected.items():
        copy = workdir / f'changed_{name}'
        _rewrite(first_result, copy, change)
        capsys.readouterr()
        assert main(['bag', 'compare', str(first_result), str(copy)]) == 1, name
        text = capsys.readouterr().out
        assert reason in text and 'DIFFERENT: 1 of 4 windows' in text, text
    # A change inside the tolerance passes; beyond it, it does not.
    nudged = workdir / 'changed_confidence'
    _rewrite(first_result, nudged, nudge_confidence)
    assert main(['bag', 'compare', str(first_result), str(nudged)]) == 0
    assert main(['bag', 'compare', str(first_result), str(nudged), '--confidence-tol', '0.001']) == 1


def _window(end_s: int, labels: list[str], mask_value: int = 1, confidence: float = 0.5
            ) -> WindowResult:
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :5] = mask_value
    return WindowResult(
        stamp_ns=end_s * SECOND, audio_start_ns=(end_s - 1) * SECOND, audio_end_ns=end_s * SECOND,
        sounding=bool(labels), confidence=confidence, steps=10, cold_start=False, mode='full',
        objects=[ObjectView(i + 1, w, 0.3, 0.5, (0, 0, 5, 5)) for i, w in enumerate(labels)],
        mask=mask, factor_index=1)


def test_compare_results_rules() -> None:
    base = [_window(1, ['dog']), _window(2, [])]
    assert bags.compare_results(base, [_window(1, ['dog']), _window(2, [])]).ok
    # Mask values may differ (object order); the foreground counts.
    assert bags.compare_results(base, [_window(1, ['dog'], mask_value=2), _window(2, [])]).ok
    renamed = bags.compare_results(base, [_window(1, ['cat']), _window(2, [])])
    assert [r.problems for r in renamed.differences] == [["labels ['dog'] != ['cat']"]]
    assert not bags.compare_results([], []).ok          # nothing to compare is not a pass
    assert 'neither bag' in bags.format_comparison(bags.compare_results([], []))
    smaller = _window(1, ['dog'])
    smaller.mask[:, :] = 0
    smaller.mask[:5, :4] = 1                            # IoU 20/25 = 0.8
    row = bags.compare_results(base, [smaller, _window(2, [])],
                               bags.Tolerances(min_iou=0.75)).windows[0]
    assert row.ok and row.iou == pytest.approx(0.8)
    assert not bags.compare_results(base, [smaller, _window(2, [])]).ok
    assert bags.compare.mask_iou(None, None) == 1.0
    with pytest.raises(ValueError, match='IoU'):
        bags.Tolerances(min_iou=1.5)


# -- parameters and bad input ----------------------------------------------------------------------
def test_params_file_entries_apply_like_rcl(tmp_path: Path) -> None:
    path = tmp_path / 'taco.yaml'
    path.write_text(
        '/**:\n  ros__parameters:\n    hop_sec: 0.5\n    use_sim_time: true\n'
        'taco_node:\n  ros__parameters:\n    mask_threshold: 0.3\n    typo_param: 1\n'
        '/robot:\n  taco_node:\n    ros__parameters:\n      hop_sec: 2.0\n'
        '/robot/*:\n  ros__parameters:\n    top_k: 3\n')
    plain, notes = bags.node_parameters(path)
    assert (plain['hop_sec'], plain['mask_threshold'], plain['top_k']) == (0.5, 0.3, 5)
    assert notes == ['typo_param: not a taco_node parameter, ignored']
    robot, _ = bags.node_parameters(path, {'device': 'cpu'}, node_name='/robot/taco_node')
    assert (robot['hop_sec'], robot['mask_threshold'], robot['top_k']) == (2.0, 0.5, 3)
    assert robot['device'] == 'cpu' and robot['window_sec'] == 1.0
    with pytest.raises(ValueError, match=r'mask_threshold has type int.*\n.*mode'):
        bags.node_parameters(None, {'mask_threshold': 1, 'mode': 'fast'})
    with pytest.raises(ValueError, match='buffer_sec'):
        bags.node_parameters(None, {'audio_context': 'history', 'buffer_sec': 5.0})
    installed, _ = bags.node_parameters(bags.default_params_file())
    from taco_ros import params
    assert installed == params.defaults()


def test_replay_builds_the_pipeline_config_the_node_builds() -> None:
    from types import SimpleNamespace

    from taco_ros.node_parameters import NodeParameters

    for overrides in ({}, {'solver_max_steps': 12, 'vocabulary': ['a', 'b'], 'anchors': '/x.st',
                           'mode': 'coarse', 'model_dir': '/m', 'seed': 7, 'resize': 'letterbox',
                           'silence_rms': 0.0, 'audio_context': 'history', 'buffer_sec': 12.0}):
        values, _ = bags.node_parameters(None, overrides)
        node = SimpleNamespace(_p=values, _pipeline_options=NodeParameters._pipeline_options)
        assert bags.node_params.pipeline_config(values, keep_text_encoders=True) == \
            NodeParameters.pipeline_config(node)


def test_bad_bags_are_refused_before_the_models_load(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    frames = [(i * 0.2, np.zeros((8, 8, 3), np.uint8)) for i in range(5)]
    bags.write_bag(tmp_path / 'in', frames, np.zeros(8000, np.int16), 8000)
    values, _ = bags.node_parameters(None, {'device': 'cpu'})
    with pytest.raises(ValueError, match='no topic /nothing'):
        bags.process_bag(tmp_path / 'in', tmp_path / 'out', values, audio_topic='/nothing')
    with pytest.raises(ValueError, match='is not an audio type'):
        bags.process_bag(tmp_path / 'in', tmp_path / 'out', values,
                         audio_topic=bags.IMAGE_TOPIC)
    with pytest.raises(ValueError, match='audio_msg_type'):
        bags.process_bag(tmp_path / 'in', tmp_path / 'out', {**values,
                                                             'audio_msg_type': 'float32_multiarray'})
    with pytest.raises(FileExistsError):
        bags.process_bag(tmp_path / 'in', tmp_path / 'in', values)
    assert not (tmp_path / 'out').exists()
    # On the command line bad input is exit code 2 (a difference is 1) with a one-line reason.
    assert main(['bag', 'process', str(tmp_path / 'in'), '--out', str(tmp_path / 'in')]) == 2
    assert main(['bag', 'process', str(tmp_path / 'in'), '--out', str(tmp_path / 'o'),
                 '-p', 'hop_sec:=1']) == 2
    assert main(['bag', 'compare', str(tmp_path / 'missing'), str(tmp_path / 'in')]) == 2
    assert 'does not exist' in capsys.readouterr().err


# -- a bag recorded from a live node ---------------------------------------------------------------
@pytest.mark.ros
@needs_audio_tools
@pytest.mark.skipif(not (LIB_DIR / 'taco_node').is_file(), reason='taco_node is not installed')
def test_bag_recorded_from_a_live_node_is_processed_deterministically(
        workdir: Path, scene_bag: Path, overrides: dict,
        processor: bags.process.BagProcessor) -> None:
    """Play the scene into taco_node, record its inputs as they arrived (re-stamped, wall-clock log
    times) with its outputs; processing that recording twice gives the same results, with a window
    for every window the live node published."""
    command = [str(LIB_DIR / 'taco_node'), '--ros-args',
               '--params-file', str(SHARE_DIR / 'config' / 'taco.yaml'),
               '-p', 'image_qos:=reliable', '-p', 'audio_qos:=reliable',
               *_cli_params(overrides), '-r', 'image:=/camera/image_raw', '-r', 'audio:=/audio']
    env = dict(os.environ, **isolate_dds())
    node_process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    recording = workdir / 'live_recording'
    topics = {bags.IMAGE_TOPIC: None, bags.AUDIO_TOPIC: None,
              **bags.output_topics(debug_image=False, diagnostics=False)}
    try:
        with ros_session('process_recorder') as (_, node, executor):
            recorder = bags.BagRecorder(node, recording, dict(topics))
            player = bags.BagPlayer(node, scene_bag, restamp=True, qos='reliable')

            def ready() -> bool:
                assert node_process.poll() is None, node_process.stdout.read()
                return player.wait_for_subscribers(0.1) and len(recorder.subscribed()) == len(topics)
            assert spin_until(executor, ready, 180), 'taco_node did not come up'
            spin_until(executor, lambda: False, 0.5)
            thread = threading.Thread(target=player.play)
            thread.start()
            spin_until(executor, lambda: not thread.is_alive(), 60)
            thread.join(timeout=5)
            settled = {'count': -1, 'since': time.monotonic()}

            def drained() -> bool:
                count = recorder.counts['/taco_node/objects']
                if count != settled['count']:
                    settled.update(count=count, since=time.monotonic())
                return time.monotonic() - settled['since'] > 5.0
            spin_until(executor, drained, 120)
            recorder.close()
    finally:
        stop_process(node_process)
    assert bags.bag_topics(recording)[bags.IMAGE_TOPIC][1] == 21

    first = processor.run(recording, workdir / 'live_replay_1')
    second = processor.run(recording, workdir / 'live_replay_2')
    assert first.windows == second.windows == 4 and first.failed == 0
    comparison = bags.compare_bags(first.output_bag, second.output_bag,
                                   bags.Tolerances(min_iou=1.0, confidence=0.0))
    assert comparison.ok, bags.format_comparison(comparison)
    live = bags.read_windows(recording)
    replayed = {(w.stamp_ns, round(w.audio_end_ns / 1e6)) for w in bags.read_windows(
        first.output_bag)}
    assert live, 'the live node published nothing'
    assert {(w.stamp_ns, round(w.audio_end_ns / 1e6)) for w in live} <= replayed
