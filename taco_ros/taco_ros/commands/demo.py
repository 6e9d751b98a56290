"""``taco-ros demo``: argument parsing; the run is :func:`taco_ros.demo.run.run_demo`."""

from __future__ import annotations

import argparse
import sys

from taco_ros.demo.run import CPU_RATE, DEMO_MAX_OBJECTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'demo', help='make a sample bag, run TACO on every window (bag process; --live: a '
        'taco_node process over DDS), write overlay GIF/MP4, contact sheet and a per-window table')
    parser.add_argument('--output-dir', default='demo_output', help='where everything is written')
    parser.add_argument('--bag', default=None,
                        help='use this bag (camera + audio topics) instead of the synthetic scene')
    parser.add_argument('--duration', type=float, default=None, help='synthetic scene length, s')
    parser.add_argument('--size', default=None, metavar='WxH', help='synthetic frame size')
    parser.add_argument('--fps', type=float, default=None, help='synthetic camera rate')
    parser.add_argument('--compressed', action='store_true',
                        help='JPEG frames (image_transport compressed)')
    parser.add_argument('--model-config', default=None, help='taco_convnext_large or taco_tiny')
    parser.add_argument('--model-dir', default=None, help='model directory searched first')
    parser.add_argument('--device', default=None, help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--vocabulary', nargs='+', default=None,
                        help='words to label with (default: the 527 AudioSet classes)')
    parser.add_argument('--max-objects', type=int, default=DEMO_MAX_OBJECTS,
                        help='sounding objects per window (taco_node max_objects; the scene has a '
                        'stretch where two sources sound at once; 1 = TACO\'s single k*)')
    parser.add_argument('--small', action='store_true',
                        help='CI sizes: 4 s at 160x120, 5 fps, the toy model taco_tiny at 256-px '
                        'input on the CPU, 6 words')
    live = parser.add_argument_group('live run (--live)')
    live.add_argument('--live', action='store_true',
                      help='start taco_node as a process and play the bag into it over DDS in '
                      'real time (windows it cannot keep up with are skipped, as on a robot)')
    live.add_argument('--rate', type=float, default=None,
                      help=f'playback speed factor (default: 1, or {CPU_RATE:g} when the full-size '
                      'model runs on the CPU, so that taco_node keeps up with every window)')
    live.add_argument('--startup-timeout', type=float, default=600.0,
                      help='seconds allowed for taco_node to load its models')
    live.add_argument('--drain-timeout', type=float, default=120.0,
                      help='seconds to wait for the last results after the bag ends')
    live.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID for the demo')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import rclpy  # noqa: F401

        import taco_msgs.msg  # noqa: F401
    except ImportError as exc:
        print(f'taco-ros demo needs the ROS environment ({exc}): run `make setup` and '
              '`source install/setup.bash`', file=sys.stderr)
        return 2
    from taco_ros.demo.run import run_demo, settings_from_args

    result = run_demo(settings_from_args(args))
    return 0 if result.windows else 1
