#!/usr/bin/env python3
"""What setting a new vocabulary costs (random weights: timings only, no results).

A new word is prompted for both text encoders (CLIP "A photo of a {word}", CLAP "This is a sound
of {word}") and encoded once; known words come from the cache. taco_node encodes on a thread of
its own (taco_ros.vocabulary_worker); the seconds printed here are how long the executor was held
per change before that, and are now how long a change takes to reach the windows.

Prints, for each --new count: seconds to encode that many new words, words per second, and the
cost of setting a list of known words again (the cache).

Usage: python bench/bench_vocabulary.py [--config taco_convnext_large] [--device cpu]
       [--new 10 --new 100] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'taco_ros'))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='taco_convnext_large',
                        help='model configuration name or JSON path (default: the full-size one)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--new', type=int, action='append',
                        help='new words per change (repeatable; default 10 and 100)')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    args = parser.parse_args(argv)
    args.new = args.new or [10, 100]
    if any(n < 2 for n in args.new):
        parser.error('--new must be at least 2 (a vocabulary has at least two words)')
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from taco_ros.core.pipeline import PipelineConfig, TacoPipeline

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipeline = TacoPipeline(PipelineConfig(model_config=args.config, device=args.device,
                                           allow_random_weights=True, keep_text_encoders=True))
    built = time.perf_counter() - started
    print(f'# {args.config} on {pipeline.device} ({torch.get_num_threads()} CPU threads), random '
          f'weights: built with its {len(pipeline.vocabulary)} default words in {built:.1f} s')
    print('| new words | encode (s) | words/s | same list again (s) |')
    print('|---|---|---|---|')
    for round_index, count in enumerate(args.new):
        words = [f'bench word {round_index} {i}' for i in range(count)]
        started = time.perf_counter()
        pipeline.set_vocabulary(words)
        encode = time.perf_counter() - started
        started = time.perf_counter()
        pipeline.set_vocabulary(list(reversed(words)))
        cached = time.perf_counter() - started
        print(f'| {count} | {encode:.2f} | {count / encode:.0f} | {cached:.3f} |')
    pipeline.close()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
