"""The demo run (``taco-ros demo``): the whole loop on one machine, with pictures at the end.

1. make the sample bag (synthetic scene: moving shapes; speech, tones and silences), or take --bag;
2. run TACO on it with taco_node's parameters (installed config/taco.yaml plus the demo's choices):
   by default ``bag process`` (every window on bag time, no DDS: the same result on any machine,
   however fast), with --live a taco_node process fed over DDS (:mod:`taco_ros.demo.live`);
3. write an overlay GIF (and MP4), a contact sheet PNG and the per-window table into --output-dir.

With model files present the real models run; without them the demo runs with random weights and
says so on every picture and in the terminal.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from taco_ros import bags
from taco_ros.bags.results import WindowResult

SMALL = {   # CI sizes: a few seconds of a small scene through the toy model configuration
    'duration': 4.0, 'size': '160x120', 'fps': 5.0, 'model_config': 'taco_tiny', 'device': 'cpu',
    'vocabulary': ['speech', 'sine wave', 'beep, bleep', 'music', 'dog', 'silence'],
}
SMALL_INPUT_SIZE = 256   # taco_tiny's frames resized to 256 px instead of 764: CPU keeps up
CPU_RATE = 0.05
DEMO_MAX_OBJECTS = 3   # the scene has two sources at once; the node's default stays 1 (TACO)
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
    rate: float                       # --live only: playback speed
    startup_timeout: float            # --live only
    drain_timeout: float              # --live only
    input_size: int | None = None     # frame size of a derived taco_tiny config (--small)
    live: bool = False
    domain_id: int | None = None      # --live only
    max_objects: int = DEMO_MAX_OBJECTS


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
        # Live on a 2-core CPU a full-size window takes ~10-20 s: play slowly rather than skip.
        rate = CPU_RATE if args.live and _on_cpu(device) and model_config != 'taco_tiny' else 1.0
    return DemoSettings(
        output_dir=Path(args.output_dir), bag=Path(args.bag) if args.bag else None,
        duration=float(pick('duration')), width=width, height=height, fps=float(pick('fps')),
        compressed=args.compressed, model_config=model_config, model_dir=args.model_dir,
        input_size=input_size, device=device, vocabulary=pick('vocabulary'), rate=rate,
        startup_timeout=args.startup_timeout, drain_timeout=args.drain_timeout, live=args.live,
        domain_id=args.domain_id, max_objects=args.max_objects)


def node_overrides(settings: DemoSettings, random_weights: bool) -> dict[str, Any]:
    """The demo's taco_node parameters on top of config/taco.yaml."""
    overrides: dict[str, Any] = {'model_config': settings.model_config, 'device': settings.device,
                                 'allow_random_weights': random_weights,
                                 'max_objects': settings.max_objects}
    if settings.model_dir:
        overrides['model_dir'] = settings.model_dir
    if settings.vocabulary:
        overrides['vocabulary'] = list(settings.vocabulary)
    return overrides


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


def banner(text: str) -> None:
    line = '!' * min(100, len(text) + 8)
    print(f'\n{line}\n!!! {text} !!!\n{line}\n', flush=True)


def _on_cpu(device: str) -> bool:
    if device == 'cpu':
        return True
    if device != 'auto':
        return False
    import torch
    return not torch.cuda.is_available()


# ---------------------------------------------------------------------------------------- run
@dataclass
class DemoRun:
    """What one run produced (paths are inside the output directory)."""

    mode: str                  # 'process' (every window, bag time) or 'live' (taco_node over DDS)
    windows: int
    frames: int                # camera frames read (process) or played (live)
    seconds: float             # wall time of the processing (process) or playback + drain (live)
    random_weights: bool
    bag: str
    results_bag: str
    contact_sheet: str
    gif: str
    mp4: str | None
    table: str
    median_latency_ms: float | None     # live only: audio window end to result

    @property
    def windows_per_second(self) -> float:
        return self.windows / self.seconds if self.seconds > 0 else float('nan')


@dataclass
class _Outcome:
    windows: list[WindowResult]
    frames: dict[int, Any]
    start_ns: int
    frame_count: int
    seconds: float


def _sample_bag(settings: DemoSettings) -> Path:
    if settings.bag is not None:
        return settings.bag
    bag = settings.output_dir / 'sample_bag'
    bags.remove_bag(bag)
    config = bags.SceneConfig(width=settings.width, height=settings.height, fps=settings.fps,
                              duration=settings.duration)
    summary = bags.make_synthetic_bag(bag, config, compressed=settings.compressed)
    print(f'[demo] sample bag: {bag} ({summary.frames} frames, {summary.duration:.1f} s)')
    return bag


def _input_topics(bag: Path) -> tuple[str, str]:
    image_topic = bags.find_topic(bag, [bags.IMAGE_TYPE, bags.COMPRESSED_TYPE])
    audio_topic = bags.find_topic(bag, [bags.AUDIO_TYPE])
    if image_topic is None or audio_topic is None:
        raise ValueError(f'{bag} needs a camera topic (Image or CompressedImage) and a '
                         f'taco_msgs/AudioChunk topic; it has {sorted(bags.bag_topics(bag))}')
    return image_topic, audio_topic


def _processed(settings: DemoSettings, bag: Path, results: Path, topics: tuple[str, str],
               overrides: dict[str, Any]) -> _Outcome:
    from rosbags.rosbag2 import Reader

    from taco_ros.bags.node_params import default_params_file, node_parameters
    from taco_ros.demo.pictures import bag_frames, replayed_windows

    values, _ = node_parameters(default_params_file(), overrides)
    bags.remove_bag(results)
    print(f'[demo] processing every window of {bag} on bag time ({Path(settings.model_config).stem} '
          f'on {settings.device})', flush=True)
    report = bags.process_bag(bag, results, values, image_topic=topics[0], audio_topic=topics[1])
    windows = replayed_windows(results)
    with Reader(bag) as reader:
        start_ns = reader.start_time
    frames = bag_frames(bag, topics[0], {w.stamp_ns for w in windows})
    return _Outcome(windows, frames, start_ns, report.frames, report.seconds)


def _live(settings: DemoSettings, bag: Path, results: Path, topics: tuple[str, str],
          overrides: dict[str, Any]) -> _Outcome:
    from taco_ros.demo.live import LiveOptions, run_live

    if _on_cpu(settings.device) and settings.input_size is None:
        print(f'[demo] running live on the CPU: a window of the full-size model takes seconds, so '
              f'the bag plays at rate {settings.rate:g} (taco_node skips windows it cannot keep up '
              'with; use a GPU, --small, or the default (no --live) to go faster)', flush=True)
    log_path = settings.output_dir / 'taco_node.log'
    print(f'[demo] starting taco_node ({Path(settings.model_config).stem} on {settings.device}); '
          f'log: {log_path}', flush=True)
    options = LiveOptions(settings.rate, settings.startup_timeout, settings.drain_timeout,
                          settings.domain_id)
    run = run_live(bag, results, topics[0], topics[1], overrides, options, log_path)
    return _Outcome(run.windows, run.frames, run.start_ns, run.played_frames, run.seconds)


def run_demo(settings: DemoSettings) -> DemoRun:
    import numpy as np

    from taco_ros.demo.pictures import write_pictures
    from taco_ros.demo.report import RANDOM_WEIGHTS_BANNER

    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if settings.input_size:
        settings.model_config = resized_model_config(settings.model_config, settings.input_size, out)
    missing = missing_model_files(settings.model_config, settings.model_dir)
    random_weights = bool(missing)
    if random_weights:
        banner(RANDOM_WEIGHTS_BANNER)
        print(f'model files not found for {settings.model_config}: {", ".join(missing)}')

    bag = _sample_bag(settings)
    topics = _input_topics(bag)
    results = out / 'results_bag'
    overrides = node_overrides(settings, random_weights)
    outcome = (_live if settings.live else _processed)(settings, bag, results, topics, overrides)
    windows = outcome.windows
    if not windows:
        raise RuntimeError(f'no results in {results}')

    scene = bags.read_scene(bag)
    mode = 'live' if settings.live else 'process'
    title = (f'taco_ros demo: {Path(settings.model_config).stem} on {settings.device}, '
             f'{len(windows)} windows' + (' (random weights)' if random_weights else ''))
    pictures = write_pictures(out, windows, outcome.frames, outcome.start_ns,
                              random_weights=random_weights, title=title,
                              events=scene['events'] if scene else None)
    latencies = [w.latency_ms for w in windows if w.latency_ms is not None] if settings.live else []
    run = DemoRun(
        mode=mode, windows=len(windows), frames=outcome.frame_count, seconds=outcome.seconds,
        random_weights=random_weights, bag=str(bag), results_bag=str(results),
        contact_sheet=pictures.contact_sheet, gif=pictures.gif, mp4=pictures.mp4,
        table=pictures.table_file,
        median_latency_ms=float(np.median(latencies)) if latencies else None)
    (out / 'summary.json').write_text(
        json.dumps({**asdict(run), 'windows_per_second': run.windows_per_second}, indent=2) + '\n')
    _print_run(run, pictures.table)
    if random_weights:
        banner(RANDOM_WEIGHTS_BANNER)
    return run


def _print_run(run: DemoRun, table: str) -> None:
    print('\n' + table + '\n')
    if run.mode == 'live':
        latency = run.median_latency_ms if run.median_latency_ms is not None else float('nan')
        print(f'[demo] {run.windows} windows from {run.frames} played frames in {run.seconds:.1f} s; '
              f'median latency (audio window end to result) {latency:.0f} ms')
    else:
        print(f'[demo] {run.windows} windows from {run.frames} frames processed in '
              f'{run.seconds:.1f} s ({run.windows_per_second:.2f} windows/s); every window on '
              'bag time, so the results do not depend on the speed of this machine')
    for label, path in (('contact sheet', run.contact_sheet), ('overlay GIF', run.gif),
                        ('overlay MP4', run.mp4), ('table', run.table),
                        ('results bag', run.results_bag)):
        if path:
            print(f'[demo] {label:<16} {path}')
