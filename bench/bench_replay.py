#!/usr/bin/env python3
"""Throughput of `taco-ros bag process` (deterministic replay) in windows per second.

Makes the demo's synthetic scene (640x480, 15 fps, speech, a tone, beeps and silences; 1-s windows
every second) and processes it with taco_node's default parameters through
taco_ros.bags.process_bag, once per model configuration:

* the toy model taco_tiny over the whole scene, and over its first --windows windows;
* the full-size model (taco_convnext_large by default) over the first --windows windows (a window
  takes seconds on a CPU: the cap keeps the run to a few minutes).

Reported per run: windows, processing seconds (model loading excluded, reported apart), windows/s,
ms per window and the real-time factor (seconds of audio processed per wall-clock second); then
the ratio of the two models on the same windows. Silent windows cost little (the silence gate), so
the whole-scene rate of taco_tiny mixes cheap and full windows; the capped windows all hold speech.

The anchor bank holds the 527 AudioSet words with random vectors of each model's widths; the models
have random weights unless --model-dir holds real files. Every number is a cost, nothing here is a
result. Needs espeak-ng and sox (the scene's audio) and `source install/setup.bash`.

Usage: python bench/bench_replay.py [--windows 3] [--duration 12] [--device cpu]
       [--full-config taco_convnext_large] [--threads N] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'taco_ros'))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def process(scene: Path, out: Path, config: str, bank: Path, args: argparse.Namespace,
            windows: int | None) -> dict[str, float]:
    from taco_ros import bags

    overrides = {'model_config': config, 'device': args.device, 'allow_random_weights': True,
                 'anchors': str(bank)}
    if args.model_dir:
        overrides['model_dir'] = args.model_dir
    values, _ = bags.node_parameters(None, overrides)
    report = bags.process_bag(scene, out, values, max_windows=windows)
    hop = float(values['hop_sec'])
    row = {'config': config, 'device': report.device, 'windows': report.windows,
           'sounding': report.sounding, 'seconds': report.seconds,
           'load': report.load_seconds, 'rate': report.windows_per_second,
           'ms': 1e3 * report.seconds / max(1, report.windows),
           'realtime': report.windows * hop / report.seconds if report.seconds else float('nan'),
           'random': report.random_weights}
    print(f'# {config}: {report.windows} windows in {report.seconds:.1f} s '
          f'({report.windows_per_second:.3f} windows/s), models loaded in {report.load_seconds:.1f} s',
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--windows', type=int, default=3,
                        help='windows of the capped runs (both models)')
    parser.add_argument('--duration', type=float, default=12.0, help='scene length, s')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--tiny-config', default='taco_tiny')
    parser.add_argument('--full-config', default='taco_convnext_large')
    parser.add_argument('--model-dir', default=None,
                        help='directory with real model files (default: random weights)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    args = parser.parse_args(argv)
    if args.windows < 1:
        parser.error('--windows must be >= 1')
    import torch
    from bench_pipeline import write_random_bank

    from taco_ros import bags

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device '
          f'{args.device}')
    rows = []
    with tempfile.TemporaryDirectory(prefix='bench_replay_') as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        scene = work / 'scene'
        summary = bags.make_synthetic_bag(scene, bags.SceneConfig(duration=args.duration))
        print(f'# scene: {summary.frames} frames 640x480, {summary.duration:.1f} s, made in '
              f'{time.perf_counter() - started:.1f} s', flush=True)
        plan = [(args.tiny_config, None, 'whole scene'),
                (args.tiny_config, args.windows, f'first {args.windows}'),
                (args.full_config, args.windows, f'first {args.windows}')]
        banks: dict[str, Path] = {}
        for index, (config, cap, label) in enumerate(plan):
            if config not in banks:
                banks[config] = write_random_bank(work / f'bank_{config}.safetensors', config)
            row = process(scene, work / f'out_{index}', config, banks[config], args, cap)
            rows.append({**row, 'label': label})
    print()
    print(f'## bag process throughput: {args.duration:g} s synthetic scene, 640x480 @ 15 fps, '
          '1-s windows every 1 s, 527-word bank, default parameters')
    print()
    print('| model | windows | device | windows (sounding) | load (s) | processing (s) | '
          'windows/s | ms/window | x real time |')
    print('|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        print(f'| {row["config"]} | {row["label"]} | {row["device"]} | {row["windows"]} '
              f'({row["sounding"]}) | {row["load"]:.1f} | {row["seconds"]:.1f} | '
              f'{row["rate"]:.3f} | {row["ms"]:.0f} | {row["realtime"]:.3f} |')
    tiny, full = rows[1], rows[2]
    print()
    if tiny['windows'] == full['windows'] and full['rate'] > 0:
        print(f'ratio {tiny["config"]}/{full["config"]} windows/s on the same {full["windows"]} '
              f'windows: {tiny["rate"] / full["rate"]:.1f}')
    print(f'ratio {tiny["config"]} whole scene / first {args.windows} windows, windows/s: '
          f'{rows[0]["rate"] / tiny["rate"]:.2f}')
    if any(row['random'] for row in rows):
        print('random weights: costs only, nothing here is a result')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
