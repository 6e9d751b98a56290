"""``taco-ros eval``: the paper's benchmarks (method.md §7) in one command, paper or robot settings.

Example::

    taco-ros eval --benchmark s4 --root /data/avsbench --mode paper --runs 3 \\
        --output s4_paper.json --plots plots/

Prints a table (mean ± std over the runs, the paper's value and the difference), writes a JSON summary and
PNG plots (IoU against threshold, time per stage).
"""

from __future__ import annotations

import argparse
import json
import sys

from taco_ros.core.contract import AUDIO_CONTEXTS, EVAL_MODES, MAX_OBJECTS, PRECISIONS

BENCHMARKS = ('s4', 'ms3', 'ade_sp', 'avss', 'ade_sp_semantic')
LAYOUTS = """dataset layouts under --root:
  s4, ms3          metadataExtended.csv (video_id, frame, mask, file_path, source_type single|multi,
                   split); frame/mask paths relative to ROOT; S4 reads every file of a video's frame,
                   audio (one clip per frame) and mask folders; MS3 frames on disk as {stem}.mp4_{i}.ext
  ade_sp,          test_metadata.csv (image_location, file_path, ade_class_id, ade_class), frames/,
  ade_sp_semantic  annotations/<stem>_seg.png (ADE20K colours); audio under --audio-root (VGGSound)
  avss             metadataExtendedTest.csv (rows with source_type v2: frame, mask, file_path, label),
                   label2idx.json, labels_rgb/ colour masks
absolute audio paths from another machine are looked up under ROOT by their trailing components"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'eval', help="reproduce the paper's benchmarks and compare modes",
        description="Run one of TACO's benchmarks (AVSBench S4/MS3, ADE-SP, AVSS, ADE-SP-semantic) with the "
                    "paper's metrics, in the paper's solver setting or the robot's streaming one.",
        epilog=LAYOUTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--benchmark', required=True, choices=BENCHMARKS)
    parser.add_argument('--root', required=True, help='dataset root (layouts below)')
    parser.add_argument('--mode', default='paper', choices=EVAL_MODES,
                        help='paper: cold start, 1800 GD steps, batch temporal term on S4; streaming: warm '
                             'start, online temporal term; coarse: no segmenter; baseline: A-FC-CLIP '
                             '(default: %(default)s)')
    parser.add_argument('--runs', type=int, default=3,
                        help='repetitions, reported as mean ± std (paper: 3; default: %(default)s)')
    parser.add_argument('--limit', type=int, default=None,
                        help='evaluate only the first N items (videos for S4, frames/images otherwise)')
    parser.add_argument('--seed', type=int, default=None,
                        help='shuffle and solver seed (default: 42 for MS3, as the paper, else 0)')
    shuffle = parser.add_mutually_exclusive_group()
    shuffle.add_argument('--shuffle', dest='shuffle', action='store_true', default=None,
                         help='shuffle the samples before --limit (paper: MS3 only)')
    shuffle.add_argument('--no-shuffle', dest='shuffle', action='store_false')
    parser.add_argument('--audio-root', default=None,
                        help='VGGSound root for the ADE-SP benchmarks (default: ROOT/vggsound)')
    parser.add_argument('--output', default=None, help='write the JSON summary here')
    parser.add_argument('--plots', default=None, help='write PNG plots into this directory')
    parser.add_argument('--model-config', default='taco_convnext_large',
                        help="model configuration name or JSON path ('taco_tiny' for tests)")
    parser.add_argument('--model-dir', default=None, help='extra model directory searched first')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N (default: auto)')
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS,
                        help='autocast precision of the backbones on CUDA (default: fp32)')
    parser.add_argument('--audio-context', default='tile', choices=AUDIO_CONTEXTS,
                        help="streaming/baseline: 'tile' repeats each frame's clip to CLAP's 7 s (the "
                             "paper); 'history' feeds the video's earlier clips too, as a live node can "
                             '(default: %(default)s)')
    parser.add_argument('--solver', action='append', default=[], metavar='FIELD=VALUE',
                        help='override a co-NMF setting (e.g. max_steps=200); repeatable. The run is then '
                             'no longer the paper protocol, and the summary says so')
    parser.add_argument('--objects', type=int, default=1, metavar='N',
                        help=f'sounding objects per frame, 1..{MAX_OBJECTS} (MS3: several sources at once): '
                             "the prediction is the union of the objects' masks, the swept map their "
                             "pixelwise maximum; 1 is the paper's single factor k* (default: %(default)s). "
                             'Not with the baseline or the semantic benchmarks')
    parser.add_argument('--no-negative-audio', dest='negative_audio', action='store_false',
                        help='skip the swapped-audio pass (it doubles the run time of binary benchmarks)')
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    parser.add_argument('--allow-random-weights', action='store_true',
                        help='run with random weights when model files are missing (tests only: the '
                             'numbers mean nothing)')
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``FIELD=VALUE`` strings → dict; values parsed as JSON when they can be (numbers, true/false)."""
    overrides: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition('=')
        if not sep or not name.strip():
            raise ValueError(f'--solver expects FIELD=VALUE, got {item!r}')
        try:
            value: object = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[name.strip()] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    from taco_ros.eval.datasets import DEFAULT_SEED, DatasetError, load_benchmark
    from taco_ros.eval.report import format_table, write_json, write_plots
    from taco_ros.eval.runner import PipelineEngine, RunOptions, evaluate

    if args.runs < 1:
        print('taco-ros eval: --runs must be at least 1', file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.solver)
        benchmark = load_benchmark(args.benchmark, args.root, limit=args.limit, shuffle=args.shuffle,
                                   seed=args.seed, audio_root=args.audio_root)
    except (DatasetError, ValueError) as error:
        print(f'taco-ros eval: {error}', file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else DEFAULT_SEED.get(args.benchmark, 0)
    print(f'{benchmark.name}: {len(benchmark)} frames from {benchmark.root}', flush=True)
    try:
        engine = PipelineEngine(
            benchmark, mode=args.mode, model_config=args.model_config, model_dir=args.model_dir,
            device=args.device, precision=args.precision, solver_overrides=overrides,
            allow_random_weights=args.allow_random_weights, seed=seed, audio_context=args.audio_context,
            objects=args.objects)
    except (FileNotFoundError, ValueError) as error:
        # ModelFileNotFound derives from FileNotFoundError; its message says where the files were looked for.
        print(f'taco-ros eval: {error}', file=sys.stderr)
        return 2
    try:
        options = RunOptions(mode=args.mode, runs=args.runs, seed=seed, negative_audio=args.negative_audio,
                             progress=args.progress)
        summary = evaluate(benchmark, engine, options)
    finally:
        engine.close()
    print(format_table(summary))
    if args.output:
        print(f'wrote {write_json(args.output, summary)}')
    if args.plots:
        for path in write_plots(summary, args.plots):
            print(f'wrote {path}')
    return 0
