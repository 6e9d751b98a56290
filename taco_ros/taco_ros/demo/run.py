"""The demo run: the whole loop on one machine, with pictures at the end (``taco-ros demo``).

1. make the sample bag (synthetic scene: moving shapes; speech, tones and silences), or take --bag;
2. start taco_node (a separate process, as ``ros2 launch`` would) with config/taco.yaml;
3. play the bag into it, re-stamped to the wall clock so latencies are real, and record its outputs;
4. write an overlay GIF (and MP4), a contact sheet PNG and the per-window table into --output-dir.

With model files present the real models run; without them taco_node runs with random weights and
the demo says so on every picture and in the terminal. All traffic stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless already set).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SMALL = {   # CI sizes: a few seconds of a small scene through the toy model configuration
    'duration': 4.0, 'size': '160x120', 'fps': 5.0, 'model_config': 'taco_tiny', 'device': 'cpu',
    'vocabulary': ['speech', 'sine wave', 'beep, bleep', 'music', 'dog', 'silence'],
}
SMALL_INPUT_SIZE = 256   # taco_tiny's frames resized to 256 px instead of 764: CPU keeps up
CPU_RATE = 0.05
DEFAULTS = {'duration': 12.0, 'size': '640x480', 'fps': 15.0, 'model_config': 'taco_convnext_large',
            'device': 'auto', 'vocabulary': None}


@dataclass
class DemoSettings:
    output_dir: Path
    bag: Path | None
    duration: float
    width: int
    height: int
    fps: float
    compressed: bool
    model_config: str
    model_dir: str | None
    device: str
    vocabulary: list[str] | None
    rate: float
    startup_timeout: float
    drain_timeout: float
    input_size: int | None = None     # frame size of a derived taco_tiny config (--small)


def resized_model_config(name: str, input_size: int, directory: Path) -> str:
    """Model config ``name`` with ``input_size``-pixel frames, written as JSON; returns its path."""
    from taco_ros.core.models import load_model_config

    cfg = load_model_config(name)
    cfg['clip']['input_size'] = int(input_size)
    cfg['name'] = f'{cfg["name"]}_{input_size}'
    path = directory / f'{cfg["name"]}.json'
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + '\n')
    return str(path)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    profile = SMALL if args.small else DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return profile[name] if value is None else value

    size = pick('size')
    try:
        width, height = (int(v) for v in str(size).lower().split('x'))
    except ValueError:
        raise ValueError(f'--size must look like 640x480, got {size!r}') from None
    if args.rate is not None and args.rate <= 0:
        raise ValueError(f'--rate must be positive, got {args.rate}')
    model_config = pick('model_config')
    input_size = SMALL_INPUT_SIZE if args.small and args.model_config is None else None
    device = pick('device')
    rate = args.rate
    if rate is None:
        # A full-size window takes ~10-20 s on a 2-core CPU: play slowly rather than skip windows.
        rate = CPU_RATE if _on_cpu(device) and model_config != 'taco_tiny' else 1.0
    return DemoSettings(
        output_dir=Path(args.output_dir), bag=Path(args.bag) if args.bag else None,
        duration=float(pick('duration')), width=width, height=height, fps=float(pick('fps')),
        compressed=args.compressed, model_config=model_config, model_dir=args.model_dir,
        input_size=input_size, device=device, vocabulary=pick('vocabulary'), rate=rate,
        startup_timeout=args.startup_timeout, drain_timeout=args.drain_timeout)


# ------------------------------------------------------------------------------------- weights
def missing_model_files(model_config: str, model_dir: str | None) -> list[str]:
    """File ids of the configuration that are not found on the model search path."""
    from taco_ros.core.model_files import ModelFileNotFound, expand_file_ids, find_model_file
    from taco_ros.core.models import load_model_config

    missing = []
    names = list(load_model_config(model_config).get('files', {}).values())
    for file_id in expand_file_ids(names):   # groups (the GPT-2 directory) → their files
        try:
            find_model_file(file_id, model_dir)
        except ModelFileNotFound:
            missing.append(file_id)
    return missing


def _banner(text: str) -> None:
    line = '!' * min(100, len(text) + 8)
    print(f'\n{line}\n!!! {text} !!!\n{line}\n', flush=True)


# ---------------------------------------------------------------------------------------- node
def taco_node_executable() -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        prefix = Path(get_package_prefix('taco_ros'))
    except PackageNotFoundError:
        raise RuntimeError('taco_ros is not installed in this environment: run `make setup` and '
                           '`source install/setup.bash`') from None
    executable = prefix / 'lib' / 'taco_ros' / 'taco_node'
    if not executable.is_file():
        raise RuntimeError(f'{executable} is missing: rebuild with `make setup`')
    return executable


def taco_node_command(settings: DemoSettings, image_topic: str, audio_topic: str,
                      random_weights: bool) -> list[str]:
    """taco_node with the installed config/taco.yaml, the demo's overrides and the bag's topics."""
    from ament_index_python.packages import get_package_share_directory

    params_file = Path(get_package_share_directory('taco_ros')) / 'config' / 'taco.yaml'
    compressed = image_topic.endswith('/compressed')
    camera = image_topic[:-len('/compressed')] if compressed else image_topic
    overrides = {
        'model_config': settings.model_config, 'device': settings.device,
        'allow_random_weights': 'true' if random_weights else 'false',
        'image_transport': 'compressed' if compressed else 'raw',
        # Replay is lossless here: keep every frame and chunk of the bag.
        'image_qos': 'reliable', 'audio_qos': 'reliable',
    }
    if settings.model_dir:
        overrides['model_dir'] = settings.model_dir
    command = [str(taco_node_executable()), '--ros-args', '--params-file', str(params_file)]
    for name, value in overrides.items():
        command += ['-p', f'{name}:={value}']
    if settings.vocabulary:
        words = ', '.join(json.dumps(w) for w in settings.vocabulary)
        command += ['-p', f'vocabulary:=[{words}]']
    command += ['-r', f'image:={camera}', '-r', f'image/compressed:={camera}/compressed',
                '-r', f'audio:={audio_topic}']
    return command


# ------------------------------------------------------------------------------------ results
def played_frames(bag: Path, image_topic: str, stamps_ns: list[int],
                  wanted: set[int]) -> dict[int, Any]:
    """{played stamp: RGB frame} for the played stamps in ``wanted`` (the bag's frames in order)."""
    from taco_ros import bags

    frames: dict[int, Any] = {}
    per_pass = bags.bag_topics(bag)[image_topic][1]
    for index, message in enumerate(bags.read_messages(bag, [image_topic])):
        for played in stamps_ns[index::per_pass]:
            if played in wanted:
                frames[played] = bags.frame_from_message(message.msg)
    return frames


# ---------------------------------------------------------------------------------------- run
class _Spinner:
    """Spins an executor in a thread until stopped (stopped and joined before shutdown)."""

    def __init__(self, executor: Any):
        self._executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT (what Ctrl-C and ros2 launch send), then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return ''


@dataclass
class DemoRun:
    """What one run produced (paths are inside the output directory)."""

    windows: int
    played_frames: int
    random_weights: bool
    bag: str
    results_bag: str
    contact_sheet: str
    gif: str
    mp4: str | None
    table: str
    median_latency_ms: float | None


def run_demo(settings: DemoSettings) -> DemoRun:
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from taco_ros import bags
    from taco_ros.bags import BagPlayer, BagRecorder, output_topics
    from taco_ros.demo import report as demo_report

    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if settings.input_size:
        settings.model_config = resized_model_config(settings.model_config, settings.input_size, out)
    missing = missing_model_files(settings.model_config, settings.model_dir)
    random_weights = bool(missing)
    if random_weights:
        _banner('RANDOM WEIGHTS: masks are meaningless until you run `taco-ros models fetch`')
        print(f'model files not found for {settings.model_config}: {", ".join(missing)}')

    # 1. the bag
    if settings.bag is None:
        bag = out / 'sample_bag'
        bags.remove_bag(bag)
        config = bags.SceneConfig(width=settings.width, height=settings.height, fps=settings.fps,
                                  duration=settings.duration)
        summary = bags.make_synthetic_bag(bag, config, compressed=settings.compressed)
        print(f'[demo] sample bag: {bag} ({summary.frames} frames, {summary.duration:.1f} s)')
    else:
        bag = settings.bag
    image_topic = bags.find_topic(bag, [bags.IMAGE_TYPE, bags.COMPRESSED_TYPE])
    audio_topic = bags.find_topic(bag, [bags.AUDIO_TYPE])
    if image_topic is None or audio_topic is None:
        raise ValueError(f'{bag} needs a camera topic (Image or CompressedImage) and a '
                         f'taco_msgs/AudioChunk topic; it has {sorted(bags.bag_topics(bag))}')
    scene = bags.read_scene(bag)

    # 2. taco_node
    if _on_cpu(settings.device) and settings.input_size is None:
        print(f'[demo] running on the CPU: a window of the full-size model takes seconds, so the bag '
              f'plays at rate {settings.rate:g} (taco_node skips windows it cannot keep up with; '
              'use a GPU, or --small for the toy model, to go faster)', flush=True)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    command = taco_node_command(settings, image_topic, audio_topic, random_weights)
    node_log = out / 'taco_node.log'
    results = out / 'results_bag'
    bags.remove_bag(results)
    print(f'[demo] starting taco_node ({Path(settings.model_config).stem} on {settings.device}); '
          f'log: {node_log}', flush=True)
    with open(node_log, 'w') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('taco_demo', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = _Spinner(executor)
    recorder = None
    try:
        topics = output_topics('/taco_node', debug_image=False)
        recorder = BagRecorder(node, results, dict(topics))
        player = BagPlayer(node, bag, rate=settings.rate, restamp=True,
                           topics=[image_topic, audio_topic], qos='reliable')
        deadline = time.monotonic() + settings.startup_timeout
        while not player.wait_for_subscribers(1.0, [image_topic, audio_topic]):
            if process.poll() is not None:
                raise RuntimeError(f'taco_node exited ({process.returncode}) while starting:\n'
                                   f'{_tail(node_log)}')
            if time.monotonic() > deadline:
                raise RuntimeError(f'taco_node did not subscribe within {settings.startup_timeout} s')
        time.sleep(0.5)   # let the recorder match taco_node's publishers too
        print(f'[demo] playing {bag} ({player.duration:.1f} s at rate {settings.rate})', flush=True)
        report = player.play()
        objects_topic = '/taco_node/objects'
        expected = max(1, int(player.duration / 1.0) - 1)
        deadline = time.monotonic() + settings.drain_timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline and process.poll() is None:
            count = recorder.counts.get(objects_topic, 0)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= expected and time.monotonic() - last_change > 3.0:
                break
            time.sleep(0.2)
        if process.poll() is not None:
            print(f'[demo] WARNING: taco_node exited with code {process.returncode} during the run; '
                  f'last lines of {node_log}:\n{_tail(node_log)}', flush=True)
    finally:
        spinner.stop()
        if recorder is not None:
            recorder.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
        stop_process(process)

    # 3. pictures and table
    windows = bags.read_windows(results)
    if not windows:
        raise RuntimeError(f'taco_node published no results; see {node_log}:\n{_tail(node_log)}')
    frames = played_frames(bag, image_topic, report.image_stamps_ns, {w.stamp_ns for w in windows})
    shown = [w for w in windows if w.stamp_ns in frames]
    start_ns = report.image_stamps_ns[0] - _first_frame_offset(bag, image_topic)
    if settings.rate != 1.0:
        # Stamps advance at the recorded speed, the wall clock at 1/rate of it: measure latency
        # from the wall time at which each window's audio was complete.
        for window in windows:
            complete_ns = start_ns + (window.audio_end_ns - start_ns) / settings.rate
            window.received_ns = window.audio_end_ns + round(window.received_ns - complete_ns)
    events = scene['events'] if scene else None
    model_name = Path(settings.model_config).stem
    title = (f'taco_ros demo: {model_name} on {settings.device}, '
             f'{len(windows)} windows' + (' (random weights)' if random_weights else ''))
    images = [frames[w.stamp_ns] for w in shown]
    sheet = demo_report.contact_sheet(images, shown, start_ns, random_weights, title, events)
    sheet_path = demo_report.write_png(out / 'contact_sheet.png', sheet)
    animation = demo_report.animation_frames(images, shown, start_ns, random_weights)
    hop = np.median(np.diff([w.stamp_ns for w in shown])) / 1e9 if len(shown) > 1 else 1.0
    gif = demo_report.write_gif(out / 'overlay.gif', animation, hop / settings.rate)
    mp4 = demo_report.write_mp4(out / 'overlay.mp4', animation, settings.rate / hop)
    table = demo_report.window_table(windows, start_ns, events)
    (out / 'windows.txt').write_text(table + '\n')
    latencies = [w.latency_ms for w in windows if w.latency_ms is not None]
    run = DemoRun(
        windows=len(windows), played_frames=len(report.image_stamps_ns),
        random_weights=random_weights, bag=str(bag), results_bag=str(results),
        contact_sheet=str(sheet_path), gif=str(gif), mp4=str(mp4) if mp4 else None,
        table=str(out / 'windows.txt'),
        median_latency_ms=float(np.median(latencies)) if latencies else None)
    (out / 'summary.json').write_text(json.dumps(asdict(run), indent=2) + '\n')

    print('\n' + table + '\n')
    print(f'[demo] {len(windows)} windows from {run.played_frames} frames; median latency '
          f'(audio window end to result) {run.median_latency_ms or float("nan"):.0f} ms')
    for label, path in (('contact sheet', run.contact_sheet), ('overlay GIF', run.gif),
                        ('overlay MP4', run.mp4), ('table', run.table),
                        ('recorded outputs', run.results_bag)):
        if path:
            print(f'[demo] {label:<16} {path}')
    if random_weights:
        _banner('RANDOM WEIGHTS: masks are meaningless until you run `taco-ros models fetch`')
    return run


def _on_cpu(device: str) -> bool:
    if device == 'cpu':
        return True
    if device != 'auto':
        return False
    import torch
    return not torch.cuda.is_available()


def _first_frame_offset(bag: Path, image_topic: str) -> int:
    """ns from the bag's first message to its first camera frame (the time axis of the report)."""
    from rosbags.rosbag2 import Reader

    from taco_ros import bags
    with Reader(bag) as reader:
        start = reader.start_time
    first = next(bags.read_messages(bag, [image_topic]))
    return bags.stamp_ns(first.msg.header.stamp) - start if first else 0
