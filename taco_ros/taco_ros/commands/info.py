"""``taco-ros info``: versions, compute device and model search path."""

from __future__ import annotations

import argparse
import importlib
import platform


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('info', help='print versions, the device in use and model paths')
    parser.add_argument('--model-dir', default=None, help='extra model directory searched first')
    parser.set_defaults(func=run)


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        return f'not importable ({type(exc).__name__}: {exc})'
    return str(getattr(module, '__version__', 'unknown version'))


def _rclpy_version() -> str:
    try:
        from importlib.metadata import version

        import rclpy  # noqa: F401
        return version('ros-rclpy')
    except Exception as exc:
        return f'not importable ({type(exc).__name__}: {exc})'


def _device() -> str:
    try:
        import torch
    except ImportError:
        return 'cpu (torch missing)'
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        return f'cuda:{index} ({torch.cuda.get_device_name(index)})'
    return f'cpu ({torch.get_num_threads()} threads)'


def run(args: argparse.Namespace) -> int:
    from taco_ros import __version__
    from taco_ros.core.model_files import model_search_dirs

    print(f'taco_ros     {__version__}')
    print(f'python       {platform.python_version()}')
    print(f'torch        {_version("torch")}')
    print(f'open_clip    {_version("open_clip")}')
    print(f'rclpy        {_rclpy_version()}')
    print(f'device       {_device()}')
    print('model files  searched in, first hit wins:')
    for path in model_search_dirs(args.model_dir):
        state = 'exists' if path.is_dir() else 'missing'
        print(f'  {path} ({state})')
    return 0
