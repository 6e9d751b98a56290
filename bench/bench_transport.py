#!/usr/bin/env python3
"""Raw camera frames between two processes on this machine, with and without taco_ros' Fast DDS profile.

For each case a publisher process sends --frames raw rgb8 Images at --fps (stamped with the wall
clock when published) and a subscriber process counts what arrives and how late (receipt minus
stamp). Both processes get the case's Fast DDS profile: none (Fast DDS' default
512 KB shared-memory segment per process) or config/fastdds_large_data.xml (32 MB). Cases: both
profiles x reliable / best effort x each --size. --load N runs N busy-looping processes beside them,
as a busy robot computer would.

Prints one table: frames received of those sent, latency median / p95 / max, and the size of the
publisher's shared-memory segment (which shows the profile was read). Needs `source install/setup.bash`.

Usage: python bench/bench_transport.py [--frames 150] [--fps 30] [--size 640x480 --size 1280x720]
       [--load 2] [--domain-id N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from taco_ros.dds_profile import PROFILE_VARIABLES, profile_environment

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'taco_ros' / 'config' / 'fastdds_large_data.xml'
MATCH_TIMEOUT = 60.0      # seconds for the two processes to find each other
QUIET_SEC = 3.0           # the subscriber stops this long after the last frame


def _qos(reliability: str, keep_all: bool = False) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = ReliabilityPolicy.RELIABLE if reliability == 'reliable' \
        else ReliabilityPolicy.BEST_EFFORT
    if keep_all:
        return QoSProfile(depth=1, history=HistoryPolicy.KEEP_ALL, reliability=policy)
    return QoSProfile(depth=10, reliability=policy)


def new_segments(before: set[str]) -> list[int]:
    """Sizes of the Fast DDS shared-memory segments created since ``before`` (a /dev/shm listing)."""
    names = set(os.listdir('/dev/shm')) - before
    return sorted(os.path.getsize(f'/dev/shm/{n}') for n in names   # fastrtps_: Fast DDS 2.x
                  if n.startswith(('fastdds_', 'fastrtps_')) and not n.endswith('_el'))


def publish(args: argparse.Namespace) -> dict[str, Any]:
    """Publisher process: wait for the subscriber, send the frames, wait for their acks."""
    before = set(os.listdir('/dev/shm'))
    import rclpy
    from rclpy.duration import Duration
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_transport_publisher')
    pub = node.create_publisher(Image, args.topic, _qos(args.qos, args.keep_all))
    segments = new_segments(before)
    deadline = time.monotonic() + MATCH_TIMEOUT
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    width, height = args.width, args.height
    data = bytes(width * height * 3)
    start = time.monotonic()
    for index in range(args.frames):
        time.sleep(max(0.0, start + index / args.fps - time.monotonic()))
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3, data=data)
        msg.header.frame_id = str(index)
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
    if args.qos == 'reliable':
        pub.wait_for_all_acked(Duration(seconds=10.0))
    node.destroy_node()
    rclpy.shutdown()
    return {'segments': segments}


def subscribe(args: argparse.Namespace) -> dict[str, Any]:
    """Subscriber process: frames until QUIET_SEC after the last one; their delays."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_transport_subscriber')
    frames: list[tuple[int, float]] = []

    def on_frame(msg: Image) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        frames.append((int(msg.header.frame_id), now - stamp))

    node.create_subscription(Image, args.topic, on_frame, _qos(args.qos, args.keep_all))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    last = time.monotonic() + MATCH_TIMEOUT    # until the first frame
    while time.monotonic() - last < QUIET_SEC and len(frames) < args.frames:
        count = len(frames)
        executor.spin_once(timeout_sec=0.1)
        if len(frames) > count:
            last = time.monotonic()
    node.destroy_node()
    rclpy.shutdown()
    return {'frames': frames}


def run_case(args: argparse.Namespace, profile: Path | None, qos: str, size: tuple[int, int],
             keep_all: bool = False) -> dict[str, Any]:
    """One publisher and one subscriber process; both results."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    for name in PROFILE_VARIABLES:
        env.pop(name, None)
    if profile is not None:
        env.update(profile_environment(profile, env))
    common = ['--frames', str(args.frames), '--fps', str(args.fps), '--qos', qos,
              '--size', f'{size[0]}x{size[1]}', '--topic', args.topic]
    if keep_all:
        common.append('--keep-all')
    command = [sys.executable, str(Path(__file__).resolve())]
    subscriber = subprocess.Popen([*command, '--role', 'subscribe', *common], env=env,
                                  stdout=subprocess.PIPE, text=True)
    publisher = subprocess.Popen([*command, '--role', 'publish', *common], env=env,
                                 stdout=subprocess.PIPE, text=True)
    timeout = MATCH_TIMEOUT + args.frames / args.fps + 30.0
    published = json.loads(publisher.communicate(timeout=timeout)[0].splitlines()[-1])
    received = json.loads(subscriber.communicate(timeout=timeout)[0].splitlines()[-1])
    return {**published, **received}


def _busy() -> None:
    while True:
        pass


def _row(profile: Path | None, qos: str, size: tuple[int, int], result: dict[str, Any],
         frames: int) -> str:
    import numpy as np

    delays = np.array([delay for _, delay in result['frames']]) * 1e3
    latency = (f'{np.median(delays):.1f} / {np.percentile(delays, 95):.1f} / {delays.max():.1f}'
               if delays.size else '-')
    segment = max(result['segments'], default=0)
    return (f'| {"large_data (32 MB)" if profile else "none (512 KB)"} | {qos} | '
            f'{size[0]}x{size[1]} | {len(result["frames"])} / {frames} | {latency} | '
            f'{segment / 2 ** 20:.1f} MiB |')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=150)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--size', action='append', default=None, metavar='WxH',
                        help='frame size (repeatable; default 640x480 and 1280x720)')
    parser.add_argument('--load', type=int, default=0,
                        help='busy-looping processes to run beside the two (a busy machine)')
    parser.add_argument('--domain-id', type=int, default=100 + os.getpid() % 100)
    parser.add_argument('--role', choices=('publish', 'subscribe'), help=argparse.SUPPRESS)
    parser.add_argument('--qos', default='reliable', help=argparse.SUPPRESS)
    parser.add_argument('--keep-all', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--topic', default=f'bench_transport_{os.getpid()}',
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [tuple(int(v) for v in text.split('x')) for text in
                  (args.size or ['640x480', '1280x720'])]
    args.width, args.height = args.sizes[0]
    if args.frames <= 0 or args.fps <= 0:
        parser.error('--frames and --fps must be positive')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        print(json.dumps((publish if args.role == 'publish' else subscribe)(args)), flush=True)
        return 0
    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    try:
        print(f'## raw rgb8 frames between two processes: {args.frames} at {args.fps:g} fps, '
              f'{args.load} busy process(es) beside them, {os.cpu_count()} CPUs, load average '
              f'{os.getloadavg()[0]:.2f}')
        print('\n| Fast DDS profile | QoS (both sides) | frame | received / sent | '
              'latency median / p95 / max (ms) | publisher segment |\n|---|---|---|---|---|---|')
        for profile in (None, PROFILE):
            for qos in ('reliable', 'best_effort'):
                for size in args.sizes:
                    result = run_case(args, profile, qos, size)
                    print(_row(profile, qos, size, result, args.frames), flush=True)
    finally:
        for hog in hogs:
            hog.terminate()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
