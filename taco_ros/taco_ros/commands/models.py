"""``taco-ros models list|verify|fetch``: the model files taco_ros needs, offline first.

Loading never downloads; this command is the one place that does (HTTP Range resume, sha256 check
where known, atomic rename). ``--mirror URL`` (or TACO_MODEL_MIRROR) fetches
``URL/<registry filename>`` instead of the public address, e.g. from a local file server.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('models', help='list, verify or fetch model files')
    actions = parser.add_subparsers(dest='models_action', metavar='ACTION', required=True)

    listing = actions.add_parser('list', help='every registered model file and where it is')
    listing.add_argument('--model-dir', default=None, help='extra model directory searched first')
    listing.set_defaults(func=run_list)

    verify = actions.add_parser('verify', help='check sizes / sha256 of the files present')
    verify.add_argument('ids', nargs='*', default=['all'],
                        help="file ids or groups ('gpt2', 'all'; default: all)")
    verify.add_argument('--model-dir', default=None, help='extra model directory searched first')
    verify.set_defaults(func=run_verify)

    fetch = actions.add_parser('fetch', help='download model files (resumable, verified)')
    fetch.add_argument('ids', nargs='+', help="file ids or groups ('gpt2', 'all')")
    fetch.add_argument('--dest', default=None,
                       help='model directory to write to (default: the first search directory)')
    fetch.add_argument('--mirror', default=None,
                       help='base URL replacing the public sources (also: TACO_MODEL_MIRROR)')
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
        tags = [t for t, on in (('optional', entry.optional), ('local only', entry.local_only))
                if on]
        size = f'{entry.size} B' if entry.size is not None else 'size unknown'
        checksum = 'sha256 known' if entry.sha256 else 'no sha256'
        suffix = f" [{', '.join(tags)}]" if tags else ''
        print(f'{entry.file_id}{suffix}\n    {entry.description}\n    file: {entry.filename} '
              f'({size}, {checksum})\n    here: {where}')
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


def run_fetch(args: argparse.Namespace) -> int:
    from taco_ros.core.model_files import (
        ChecksumMismatch,
        DownloadInterrupted,
        expand_file_ids,
        fetch_model_file,
    )

    try:
        ids = expand_file_ids(args.ids)
    except ValueError as exc:
        print(f'error: {exc}')
        return 2
    failures = 0
    for file_id in ids:
        try:
            fetch_model_file(file_id, dest_dir=args.dest, mirror=args.mirror,
                             progress=not args.no_progress, retries=args.retries,
                             timeout=args.timeout, force=args.force)
        except (ChecksumMismatch, DownloadInterrupted, ValueError, OSError) as exc:
            print(f'{file_id}: FAILED: {exc}')
            failures += 1
    return 1 if failures else 0
