"""The ``taco-ros`` command line: ``taco-ros <command> [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from taco_ros import __version__
from taco_ros.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='taco-ros', description='taco_ros: sound-prompted segmentation for ROS 2.')
    parser.add_argument('--version', action='version', version=f'taco_ros {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in COMMANDS:
        importlib.import_module(f'taco_ros.commands.{name}').register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
