#!/usr/bin/env python3
"""Per-frame cost of TACO in the paper's and the robot's solver settings, via ``taco-ros eval``'s code path.

Runs :func:`taco_ros.eval.runner.evaluate` with :class:`PipelineEngine` (the same engine as the command)
once per mode on one benchmark, and prints the time per stage (mean and median ms per frame), the solver's
share of the frame, and the ratios streaming / paper, all measured in this run.

Without ``--root`` it writes a synthetic S4-layout set (random frames, tone + noise clips, empty masks) and
uses the random-weight ``taco_tiny`` models: then the numbers are timings of the code path only, and no
metric is printed. With real data and weights (``--root /data/avsbench --model-config
taco_convnext_large``) the same script gives the benchmark's timings and metrics.

Usage: bench/bench_eval.py [--benchmark s4] [--root DIR] [--modes paper,streaming] [--limit N]
                           [--model-config taco_tiny] [--device auto] [--threads 2] [--videos 1 --frames 3]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'taco_ros'))

STAGES = ('image_encoder', 'audio_encoder', 'conmf', 'segmenter', 'total')


def write_synthetic_s4(root: Path, videos: int, frames: int, seed: int = 0) -> None:
    """An S4 layout: metadataExtended.csv, frames, 1-s clips (a tone per video plus noise), blank masks."""
    import numpy as np
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    rate = 16000
    time_axis = np.arange(rate) / rate
    for v in range(videos):
        video = f'v{v}'
        for i in range(1, frames + 1):
            frame = root / 'frames' / video / f'{video}_{i}.png'
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(frame)
            mask = root / 'masks' / video / f'{video}_{i}.png'
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((224, 224), np.uint8)).save(mask)
            clip = root / 'audio' / video / f'{video}_{i}.wav'
            clip.parent.mkdir(parents=True, exist_ok=True)
            tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * v) * time_axis) + 0.05 * rng.standard_normal(rate)
            soundfile.write(str(clip), tone.astype(np.float32), rate)
            rows.append({'video_id': video, 'frame': str(frame.relative_to(root)),
                         'mask': str(mask.relative_to(root)), 'file_path': str(clip.relative_to(root)),
                         'source_type': 'single', 'split': 'test'})
    with open(root / 'metadataExtended.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_mode(benchmark, mode: str, args: argparse.Namespace) -> dict:
    from taco_ros.eval.runner import PipelineEngine, RunOptions, evaluate

    engine = PipelineEngine(benchmark, mode=mode, model_config=args.model_config, model_dir=args.model_dir,
                            device=args.device, allow_random_weights=args.allow_random_weights)
    try:
        # The first frames pay for lazy initialisation (allocator, kernels): one warm-up video, not counted.
        warm = benchmark.videos()[0]
        engine.run_video([benchmark.load_image(s) for s in warm[:1]],
                         [_clip(s) for s in warm[:1]], temporal=False)
        options = RunOptions(mode=mode, runs=1, negative_audio=False, progress=False)
        return evaluate(benchmark, engine, options, log=lambda _line: None)
    finally:
        engine.close()


def _clip(sample):
    from taco_ros.eval.datasets import load_audio
    from taco_ros.eval.runner import Clip

    samples, rate = load_audio(sample.audio)
    return Clip(samples, rate, 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--benchmark', default='s4')
    parser.add_argument('--root', default=None, help='dataset root (default: a synthetic S4 set)')
    parser.add_argument('--modes', default='paper,streaming')
    parser.add_argument('--limit', type=int, default=None)
    parser.add_argument('--model-config', default='taco_tiny')
    parser.add_argument('--model-dir', default=None)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--videos', type=int, default=1, help='synthetic set: videos')
    parser.add_argument('--frames', type=int, default=3, help='synthetic set: frames per video')
    args = parser.parse_args()

    import torch

    from taco_ros.eval.datasets import load_benchmark

    torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        args.allow_random_weights = root is None
        if root is None:
            root = Path(scratch) / 's4'
            write_synthetic_s4(root, args.videos, args.frames)
            args.benchmark = 's4'
        benchmark = load_benchmark(args.benchmark, root, limit=args.limit)
        summaries = {mode: run_mode(benchmark, mode, args) for mode in modes}

    first = next(iter(summaries.values()))
    random = ' · RANDOM WEIGHTS (timings only)' if first['random_weights'] else ''
    print(f'{args.benchmark}: {len(benchmark)} frames · {args.model_config} · '
          f'{first["settings"]["device"]} · {args.threads} threads{random}')
    header = f'{"mode":<10}' + ''.join(f'{s:>16}' for s in STAGES) + f'{"steps":>8}{"solver %":>10}'
    print(header)
    print('-' * len(header))
    for mode, summary in summaries.items():
        timings = summary['timings_ms']
        cells = ''.join(f'{timings[s]["mean"]:>8.1f} ({timings[s]["median"]:>5.0f})' for s in STAGES)
        steps = summary['settings']['solver']['max_steps']
        share = 100 * timings['conmf']['mean'] / timings['total']['mean']
        print(f'{mode:<10}{cells}{steps:>8}{share:>9.0f}%')
    print('cells: mean (median) ms per frame; steps: the solver cap (streaming stops early)')
    if 'paper' in summaries and 'streaming' in summaries:
        paper, streaming = summaries['paper']['timings_ms'], summaries['streaming']['timings_ms']
        for stage in ('conmf', 'total'):
            print(f'streaming / paper {stage}: {streaming[stage]["mean"] / paper[stage]["mean"]:.3f}')
    if not first['random_weights']:
        for mode, summary in summaries.items():
            print(mode, ', '.join(f'{k} {v:.2f}' for k, v in summary['mean'].items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
