"""``taco-ros models list|verify|fetch``: the model files taco_ros needs, offline first.

Loading never downloads; ``fetch`` is the one place that does (HTTP Range resume, size / format / sha256
check, atomic rename). Without ids it fetches every file the model configuration (``--model-config``,
default the paper setting) needs. ``--mirror`` (or TACO_MODEL_MIRROR) fetches ``<mirror>/<registry
filename>`` instead of the public address: an HTTP(S) base URL, a ``file://`` URL or a local directory.
"""

from __future__ import annotations

import argparse

from taco_ros.core.contract import DEFAULT_MODEL_CONFIG


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('models', help='list, verify or fetch model files')
    actions = parser.add_subparsers(dest='models_action', metavar='ACTION', required=True)

    listing = actions.add_parser('list', help='every registered model file and where it is')
    listing.add_argument('--model-dir', default=None, help='extra model directory searched first')
    listing.set_defaults(func=run_list)

    verify = actions.add_parser('verify', help='check size, format and sha256 of the files present')
    verify.add_argument('ids', nargs='*', default=['all'],
                        help="file ids or groups ('gpt2', 'all'; default: all)")
    verify.add_argument('--model-dir', default=None, help='extra model directory searched first')
    verify.set_defaults(func=run_verify)

    fetch = actions.add_parser('fetch', help='download model files (resumable, verified)')
    fetch.add_argument('ids', nargs='*',
                       help="file ids or groups ('gpt2', 'all'); default: the files of --model-config")
    fetch.add_argument('--model-config', default=DEFAULT_MODEL_CONFIG,
                       help=f'model configuration whose files are fetched when no id is given '
                            f'(default {DEFAULT_MODEL_CONFIG})')
    fetch.add_argument('--dest', default=None,
                       help='model directory to write to (default: the first search directory)')
    fetch.add_argument('--mirror', default=None,
                       help='base URL or local directory replacing the public sources '
                            '(also: TACO_MODEL_MIRROR)')
    fetch.add_argument('--dry-run', action='store_true', help='print what would be fetched, fetch nothing')
    fetch.add_argument('--force', action='store_true', help='download even if present')
    fetch.add_argument('--retries', type=int, default=3, help='resume attempts per file')
    fetch.add_argument('--timeout', type=float, default=60.0, help='socket timeout, seconds')
    fetch.add_argument('--no-progress', action='store_true', help='no progress bar')
    fetch.set_defaults(func=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from taco_ros.core.model_files import MODEL_FILES, ModelFileNotFound, find_model_file, model_search_dirs

    print('search order: ' + ', '.join(str(d) for d in model_search_dirs(args.model_dir)))
    for entry in MODEL_FILES.values():
        try:
            where = str(find_model_file(entry.file_id, args.model_dir))
        except ModelFileNotFound:
            where = 'missing'
        tags = [t for t, on in (('optional', entry.optional), ('local only', entry.local_only)) if on]
        suffix = f" [{', '.join(tags)}]" if tags else ''
        lines = [f'{entry.file_id}{suffix}', entry.description, f'file: {entry.filename}']
        if not entry.local_only:
            lines += [f'size: {entry.describe_size()}',
                      f'sha256: {entry.sha256 or "not published by the host"}',
                      f'source: {entry.url}']
        lines.append(f'here: {where}')
        print('\n    '.join(lines))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from taco_ros.core.model_files import expand_file_ids, verify_model_file

    try:
        ids = expand_file_ids(args.ids)
    except ValueError as exc:
        print(f'error: {exc}')
        return 2
    bad = 0
    for file_id in ids:
        result = verify_model_file(file_id, args.model_dir)
        where = f' {result.path}' if result.path else ''
        print(f'{result.status:15s} {file_id}{where}: {result.detail}')
        bad += not result.good
    return 1 if bad else 0


def config_file_ids(model_config: str) -> list[str]:
    """Every registry file a model configuration needs (its ``files`` section, groups expanded)."""
    from taco_ros.core.model_files import expand_file_ids
    from taco_ros.core.models import load_model_config

    return expand_file_ids(load_model_config(model_config)['files'].values())


def run_fetch(args: argparse.Namespace) -> int:
    from taco_ros.core.model_fetch import plan_fetch

    try:
        ids = _requested_ids(args)
        steps = plan_fetch(ids, args.dest, args.mirror, args.force)
    except ValueError as exc:
        print(f'error: {exc}')
        return 2
    print(f'{len(steps)} file(s):')
    for step in steps:
        print('  ' + step.describe().replace('\n', '\n  '))
    if args.dry_run:
        return 0
    failures = sum(not _fetch_one(step.file_id, args) for step in steps)
    return 1 if failures else 0


def _requested_ids(args: argparse.Namespace) -> list[str]:
    from taco_ros.core.model_files import expand_file_ids

    if args.ids:
        return expand_file_ids(args.ids)
    print(f'model configuration {args.model_config}:')
    return config_file_ids(args.model_config)


def _fetch_one(file_id: str, args: argparse.Namespace) -> bool:
    from taco_ros.core.model_fetch import fetch_model_file

    try:
        fetch_model_file(file_id, dest_dir=args.dest, mirror=args.mirror, progress=not args.no_progress,
                         retries=args.retries, timeout=args.timeout, force=args.force)
    except (ValueError, OSError) as exc:  # ChecksumMismatch, ModelFileFormatError, DownloadFailed, ...
        print(f'{file_id}: FAILED: {exc}')
        return False
    return True
