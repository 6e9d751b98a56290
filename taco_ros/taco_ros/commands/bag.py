"""``taco-ros bag make|play|record|info|process|compare``: rosbag2 files without ``ros2 bag``, and
deterministic replay of a bag through taco_node's windows and pipeline.

Argument parsing only; the work is in :mod:`taco_ros.bags` (make: .scene and .media; play: .player;
record: .recorder; info: .info; process: .process; compare: .compare).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taco_ros import bags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'bag', help='make, play, record and inspect rosbag2 files (no ros2 CLI needed)')
    sub = parser.add_subparsers(dest='bag_command', metavar='ACTION', required=True)

    make = sub.add_parser('make', help='write a bag: synthetic scene, or video/images + WAV')
    make.add_argument('output', help='bag directory to create')
    source = make.add_mutually_exclusive_group()
    source.add_argument('--synthetic', action='store_true',
                        help='moving shapes with speech, tones and silences (the default)')
    source.add_argument('--video', help='video file or folder of images (with --wav)')
    make.add_argument('--wav', help='audio file recorded with --video (same start instant)')
    make.add_argument('--duration', type=float, default=12.0, help='synthetic scene length, s')
    make.add_argument('--max-duration', type=float, default=None, help='cut --video/--wav after S s')
    make.add_argument('--fps', type=float, default=None,
                      help='frame rate (synthetic default 15; an image folder needs it)')
    make.add_argument('--size', default=None, metavar='WxH',
                      help='frame size (synthetic default 640x480; resizes --video frames)')
    make.add_argument('--sample-rate', type=int, default=16000, help='synthetic audio rate')
    make.add_argument('--block-size', type=int, default=512, help='audio frames per message')
    make.add_argument('--seed', type=int, default=0, help='synthetic scene motion phase')
    make.add_argument('--storage', choices=bags.STORAGES, default='sqlite3')
    make.add_argument('--compressed', action='store_true',
                      help='JPEG sensor_msgs/CompressedImage on <image topic>/compressed')
    make.add_argument('--image-topic', default=bags.IMAGE_TOPIC)
    make.add_argument('--audio-topic', default=bags.AUDIO_TOPIC)
    make.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    make.set_defaults(func=run_make)

    play = sub.add_parser('play', help='publish a bag with its recorded timing (rclpy)')
    play.add_argument('bag')
    play.add_argument('--rate', type=float, default=1.0, help='speed factor')
    loop = play.add_mutually_exclusive_group()
    loop.add_argument('--loop', action='store_true', help='repeat until Ctrl-C')
    loop.add_argument('--repeat', type=int, default=1, help='play N times')
    play.add_argument('--start-offset', type=float, default=0.0, help='skip the first S seconds')
    play.add_argument('--clock', nargs='?', type=float, const=40.0, default=None, metavar='HZ',
                      help='publish /clock with the bag time (default 40 Hz) for use_sim_time')
    play.add_argument('--restamp', action='store_true',
                      help='shift header stamps to the wall clock, as if captured live')
    play.add_argument('--topics', nargs='+', default=None, help='play only these topics')
    play.add_argument('--remap', nargs='+', default=[], metavar='FROM:=TO',
                      help='publish a bag topic under another name')
    play.add_argument('--qos', default=None, help='publisher QoS (default: as recorded)')
    play.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                      help='wait up to S seconds for a subscriber on every topic before playing')
    play.set_defaults(func=run_play)

    record = sub.add_parser('record', help="record taco_node's outputs (or --topics) into a bag")
    record.add_argument('output', help='bag directory to create')
    record.add_argument('--topics', nargs='+', default=None,
                        help="topics to record (default: taco_node's outputs and /diagnostics)")
    record.add_argument('--node', default='/taco_node',
                        help="fully qualified name of taco_node (namespace/name)")
    record.add_argument('--inputs', nargs='*', default=None, metavar='TOPIC',
                        help='also record these input topics (default /camera/image_raw /audio)')
    record.add_argument('--duration', type=float, default=None, help='stop after S seconds')
    record.add_argument('--storage', choices=bags.STORAGES, default='sqlite3')
    record.add_argument('--use-sim-time', action='store_true',
                        help='log times from /clock (with bag play --clock)')
    record.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    record.set_defaults(func=run_record)

    info = sub.add_parser('info', help='topics, types, counts and duration of a bag')
    info.add_argument('bag')
    info.set_defaults(func=run_info)
    _register_process(sub)
    _register_compare(sub)


def _register_process(sub: argparse._SubParsersAction) -> None:
    process = sub.add_parser(
        'process', help="run taco_node's windows and pipeline over a bag on bag time (every "
        'window, no DDS, deterministic) and write its outputs into a new bag')
    process.add_argument('input', help='bag with a camera and an audio topic (sqlite3 or MCAP)')
    process.add_argument('--out', required=True, help='result bag directory to create')
    process.add_argument('--params-file', default=None,
                         help="taco_node's params file (YAML, as for --params-file; default: the "
                         'node defaults, i.e. config/taco.yaml)')
    process.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                         help='override one parameter (YAML value), like ros2 run -p')
    process.add_argument('--node-name', default=bags.NODE_NAME,
                         help='fully qualified node name: picks params-file entries, names the '
                         'output topics')
    process.add_argument('--image-topic', default=None,
                         help='camera topic (default: the first Image/CompressedImage topic)')
    process.add_argument('--audio-topic', default=None,
                         help='audio topic (default: the first topic of an audio type the node reads)')
    process.add_argument('--debug-image', action='store_true', help='also write debug_image')
    process.add_argument('--copy-inputs', action='store_true',
                         help='also write the camera and audio messages (frames beside the masks '
                         'in Foxglove)')
    process.add_argument('--storage', choices=bags.STORAGES, default=None,
                         help="output storage (default: the input's)")
    process.add_argument('--max-windows', type=int, default=None, help='stop after N windows')
    process.add_argument('--pictures', default=None, metavar='DIR',
                         help="write the demo's contact sheet, GIF/MP4 and table into DIR")
    process.add_argument('--no-progress', action='store_true', help='no progress bar')
    process.add_argument('--overwrite', action='store_true', help='replace an existing --out bag')
    process.set_defaults(func=run_process)


def _register_compare(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        'compare', help='compare the results of two result bags window by window (exit code 1 '
        'on a difference beyond the tolerances)')
    compare.add_argument('a', help='result bag A')
    compare.add_argument('b', help='result bag B')
    compare.add_argument('--iou-tol', type=float, default=bags.Tolerances.min_iou,
                         help='smallest acceptable mask IoU (foreground) of a window')
    compare.add_argument('--confidence-tol', type=float, default=bags.Tolerances.confidence,
                         help='largest acceptable |confidence difference| of a window')
    compare.add_argument('--node-name', default=bags.NODE_NAME,
                         help="taco_node's fully qualified name in both bags")
    compare.set_defaults(func=run_compare)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'--size must look like 640x480, got {text!r}') from None
    return width, height


def _parse_remaps(items: list[str]) -> dict[str, str]:
    remap = {}
    for item in items:
        if ':=' not in item:
            raise ValueError(f'--remap expects FROM:=TO, got {item!r}')
        source, target = item.split(':=', 1)
        remap[source] = target
    return remap


def run_make(args: argparse.Namespace) -> int:
    if args.overwrite:
        bags.remove_bag(args.output)
    size = _parse_size(args.size)
    common = dict(storage=args.storage, compressed=args.compressed, block_size=args.block_size,
                  image_topic=args.image_topic, audio_topic=args.audio_topic)
    if args.video:
        if not args.wav:
            raise SystemExit('--video needs --wav (the audio recorded with it)')
        summary = bags.make_media_bag(args.output, args.video, args.wav, fps=args.fps,
                                      max_duration=args.max_duration, resize=size, **common)
    else:
        width, height = size or (640, 480)
        config = bags.SceneConfig(width=width, height=height, fps=args.fps or 15.0,
                                  duration=args.duration, sample_rate=args.sample_rate,
                                  seed=args.seed)
        summary = bags.make_synthetic_bag(args.output, config, **common)
    print(f'wrote {summary.path} ({summary.storage}): {summary.frames} frames on '
          f'{summary.image_topic}, {summary.audio_chunks} audio chunks on {summary.audio_topic}, '
          f'{summary.duration:.2f} s')
    return 0


def run_play(args: argparse.Namespace) -> int:
    report = bags.play_bag(
        args.bag, wait_for_subscribers=args.wait_for_subscribers, rate=args.rate,
        loops=0 if args.loop else args.repeat, start_offset=args.start_offset,
        clock=args.clock is not None, clock_hz=args.clock or 40.0, restamp=args.restamp,
        topics=args.topics, remap=_parse_remaps(args.remap), qos=args.qos)
    for topic, count in sorted(report.published.items()):
        print(f'{topic}: {count} messages')
    print(f'{report.loops} pass(es) in {report.wall_seconds:.2f} s')
    return 0


def run_record(args: argparse.Namespace) -> int:
    if args.overwrite:
        bags.remove_bag(args.output)
    topics: dict[str, str | None] = ({t: None for t in args.topics} if args.topics
                                     else dict(bags.output_topics(args.node)))
    if args.inputs is not None:
        for topic in args.inputs or [bags.IMAGE_TOPIC, bags.AUDIO_TOPIC]:
            topics[topic] = None
    counts = bags.record_bag(args.output, topics, duration=args.duration, storage=args.storage,
                             use_sim_time=args.use_sim_time)
    for topic, count in sorted(counts.items()):
        print(f'{topic}: {count} messages')
    return 0


def run_info(args: argparse.Namespace) -> int:
    print(bags.describe_bag(args.bag))
    return 0


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    values = {}
    for item in items:
        if ':=' not in item:
            raise ValueError(f'-p expects NAME:=VALUE, got {item!r}')
        name, text = item.split(':=', 1)
        values[name.strip()] = yaml.safe_load(text) if text.strip() else ''
    return values


def _input_error(command: str, exc: Exception) -> int:
    """Exit code 2 with one line: bad input is not a difference (exit code 1) for a CI job."""
    print(f'taco-ros bag {command}: error: {exc}', file=sys.stderr)
    return 2


def run_process(args: argparse.Namespace) -> int:
    try:
        return _process(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        return _input_error('process', exc)


def _process(args: argparse.Namespace) -> int:
    values, notes = bags.node_parameters(args.params_file, _parse_params(args.param),
                                         node_name=args.node_name)
    for note in notes:
        print(f'note: {note}', file=sys.stderr)
    if args.overwrite:
        bags.remove_bag(args.out)
    report = bags.process_bag(
        args.input, args.out, values, image_topic=args.image_topic, audio_topic=args.audio_topic,
        storage=args.storage, node_name=args.node_name, debug_image=args.debug_image,
        copy_inputs=args.copy_inputs, max_windows=args.max_windows,
        progress=not args.no_progress)
    print(bags.format_report(report))
    if args.pictures:
        from pathlib import Path

        from taco_ros.demo.pictures import pictures_of_bag

        pictures = pictures_of_bag(
            Path(args.pictures), args.input, args.out, report.image_topic,
            random_weights=report.random_weights, node_name=args.node_name,
            title=f'taco_ros bag process: {report.model_config} on {report.device}, '
                  f'{report.windows} windows')
        print(f'pictures: {pictures.contact_sheet}, {pictures.gif}, {pictures.table_file}')
    if report.random_weights:
        from taco_ros.demo.report import RANDOM_WEIGHTS_BANNER

        print(RANDOM_WEIGHTS_BANNER)
    return 0 if report.windows and not report.failed else 1


def run_compare(args: argparse.Namespace) -> int:
    try:
        tolerances = bags.Tolerances(min_iou=args.iou_tol, confidence=args.confidence_tol)
        comparison = bags.compare_bags(args.a, args.b, tolerances, node_name=args.node_name)
    except (FileNotFoundError, ValueError) as exc:
        return _input_error('compare', exc)
    print(bags.format_comparison(comparison))
    return 0 if comparison.ok else 1
