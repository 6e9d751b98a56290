"""``taco-ros anchors build|show``: anchor word banks (CLIP + CLAP text vectors), built once.

Building needs the CLIP and CLAP text towers; the node then loads the bank file and never holds
them. The bank is keyed by the model ids of the configuration it was built with.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('anchors', help='build or inspect anchor word banks')
    actions = parser.add_subparsers(dest='anchors_action', metavar='ACTION', required=True)

    build = actions.add_parser('build', help='encode a word list with CLIP and CLAP text towers')
    words = build.add_mutually_exclusive_group(required=True)
    words.add_argument('--words', help='word list file: one word per line, # comments')
    words.add_argument('--audioset', action='store_true',
                       help="the 527 AudioSet class names in TACO's order")
    build.add_argument('--model-config', default='taco_convnext_large',
                       help='model configuration name or JSON path (default: %(default)s)')
    build.add_argument('--model-dir', default=None, help='extra model directory searched first')
    build.add_argument('--out', required=True, help='bank file to write (.safetensors)')
    build.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    build.add_argument('--batch-size', type=int, default=64, help='prompts per forward pass')
    build.set_defaults(func=run_build)

    show = actions.add_parser('show', help='print a bank header')
    show.add_argument('path', help='bank file')
    show.set_defaults(func=run_show)


def run_build(args: argparse.Namespace) -> int:
    from taco_ros.core.contract import PipelineConfig
    from taco_ros.core.model_files import ModelFileNotFound
    from taco_ros.core.models import create_models
    from taco_ros.core.pipeline import resolve_device
    from taco_ros.core.vocabulary import audioset_labels, read_word_list, save_anchor_bank

    try:
        words = audioset_labels() if args.audioset else read_word_list(args.words)
        device = resolve_device(args.device)
        config = PipelineConfig(model_config=args.model_config, model_dir=args.model_dir)
        # The same factory as the node (without FC-CLIP, which a bank does not need).
        text = create_models(config, segmenter=False).text.to(device)
    except (ModelFileNotFound, ValueError, OSError) as exc:
        print(f'error: {exc}')
        return 1
    bank = text.bank_data(words, batch_size=args.batch_size)
    path = save_anchor_bank(bank, args.out)
    print(f'wrote {path}: {len(bank.words)} words, CLIP {tuple(bank.clip_text.shape)}, '
          f'CLAP {tuple(bank.clap_text.shape)}, models {bank.model_ids}')
    return 0


def run_show(args: argparse.Namespace) -> int:
    from taco_ros.core.vocabulary import read_anchor_bank

    try:
        bank = read_anchor_bank(args.path)
    except (ValueError, OSError) as exc:
        print(f'error: {exc}')
        return 1
    preview = ', '.join(bank.words[:5]) + (', ...' if len(bank.words) > 5 else '')
    print(f'{args.path}\n  words: {len(bank.words)} ({preview})\n  words sha256: '
          f'{bank.words_sha256}\n  model ids: {bank.model_ids}\n  prompts: {bank.prompts}\n'
          f'  CLIP {tuple(bank.clip_text.shape)}, CLAP {tuple(bank.clap_text.shape)}, '
          f'CLAP logit scale {bank.logit_scale:.4g}')
    return 0
