#!/usr/bin/env python3
"""Encoder cost per window at full size (random weights: timings and memory only, no results).

Measures, in one run on the current machine:

* CLIP ConvNeXt-L (convnext_large_d_320) on one 640x480 frame → 764² squash → 768² padded input:
  preprocess, trunk (res2..res5), X_I head projection (576 tokens);
* CLAP HTS-AT on one 1-s 48 kHz window → resampled to 44.1 kHz, tiled to 7 s: preparation and
  forward (X_A, 64 tokens);
* memory: resident set after each model is built, the process peak, and what sharing one CLIP with
  the FC-CLIP segmenter saves: the resident size of a second visual tower (measured by building
  one) and the second trunk forward it would need per frame;
* on a CUDA device (when present): the same forwards in fp32 and under fp16 / bf16 autocast.

Usage: python bench/bench_encoders.py [--repeats 3] [--threads N] [--config taco_convnext_large]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'taco_ros'))


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux /proc)."""
    values = {}
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith(('VmRSS:', 'VmHWM:')):
                key, amount, _unit = line.split()
                values[key[:-1]] = int(amount) / 1024.0
    return values.get('VmRSS', float('nan')), values.get('VmHWM', float('nan'))


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None
          ) -> tuple[float, float]:
    """(median, min) seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def param_mib(module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3, help='timed runs after one warm-up')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
    parser.add_argument('--config', default='taco_convnext_large', help='model configuration')
    parser.add_argument('--no-share-check', action='store_true',
                        help='skip building a second CLIP visual tower (saves time and memory)')
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from taco_ros.core.models import create_clap, create_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[tuple[str, str]] = []
    rss0, _ = rss_mib()
    rows.append(('python + torch resident', f'{rss0:8.0f} MiB'))

    # -- CLIP -----------------------------------------------------------------------------------
    t = time.perf_counter()
    clip = create_clip(args.config, allow_random_weights=True, with_text=False)
    build_clip = time.perf_counter() - t
    gc.collect()
    rss_clip, _ = rss_mib()
    frame = torch.randint(0, 256, (1, 3, 480, 640), dtype=torch.uint8)
    padded, _ = clip.preprocess(frame)
    with torch.no_grad():
        features = clip(padded)
    dense_tokens = features['clip_vis_dense']
    with torch.no_grad():
        prep = timed(lambda: clip.preprocess(frame), args.repeats)
        trunk = timed(lambda: clip(padded), args.repeats)
        head = timed(lambda: clip.image_tokens({'clip_vis_dense': dense_tokens}), args.repeats)
        total_clip = timed(lambda: clip.encode(frame), args.repeats)
    n_tokens, d_i = clip.encode(frame).tokens.shape[1:]

    # -- CLAP -----------------------------------------------------------------------------------
    t = time.perf_counter()
    audio = create_clap(args.config, allow_random_weights=True)
    build_clap = time.perf_counter() - t
    gc.collect()
    rss_clap, _ = rss_mib()
    window = (np.random.default_rng(0).uniform(-0.3, 0.3, 48000)).astype(np.float32)
    model_input, _ = audio.prepare(window, 48000)
    with torch.no_grad():
        prep_a = timed(lambda: audio.prepare(window, 48000), args.repeats)
        fwd_a = timed(lambda: audio(model_input[None]), args.repeats)
        total_clap = timed(lambda: audio.encode(window, 48000), args.repeats)
    n_audio, c_a = audio.encode(window, 48000).tokens.shape[1:]

    def ms(pair: tuple[float, float]) -> str:
        return f'{pair[0] * 1e3:8.1f} ms (min {pair[1] * 1e3:.1f})'

    rows += [
        (f'CLIP build (random init, text dropped) [{param_mib(clip):.0f} MiB params]',
         f'{build_clip:8.1f} s'),
        ('CLIP resident after build', f'{rss_clip - rss0:8.0f} MiB'),
        ('CLIP preprocess 640x480 -> 768² padded', ms(prep)),
        (f'CLIP trunk 768² (res2..res5) -> {n_tokens} tokens', ms(trunk)),
        (f'CLIP head projection -> X_I {n_tokens}x{d_i}', ms(head)),
        ('CLIP total per frame (encode)', ms(total_clip)),
        (f'CLAP build (random init) [{param_mib(audio):.0f} MiB params]', f'{build_clap:8.1f} s'),
        ('CLAP resident after build', f'{rss_clap - rss_clip:8.0f} MiB'),
        ('CLAP prepare 1 s @48k -> 44.1k, tiled 7 s', ms(prep_a)),
        (f'CLAP HTS-AT forward 7 s -> X_A {n_audio}x{c_a}', ms(fwd_a)),
        ('CLAP total per window (encode)', ms(total_clap)),
    ]
    ratios = [('CLIP encode / CLAP encode', total_clip[0] / total_clap[0]),
              ('CLIP trunk share of CLIP encode', trunk[0] / total_clip[0])]

    # -- sharing one CLIP with the segmenter -----------------------------------------------------
    if not args.no_share_check:
        before, _ = rss_mib()
        second = create_clip(args.config, allow_random_weights=True, with_text=False)
        gc.collect()
        after, _ = rss_mib()
        rows.append(('second visual tower (what sharing saves), resident',
                     f'{after - before:8.0f} MiB'))
        rows.append(('second visual tower, parameters', f'{param_mib(second):8.0f} MiB'))
        rows.append(('second trunk forward per frame (saved compute)', ms(trunk)))
        ratios.append(('memory saved / CLIP resident', (after - before) / max(rss_clip - rss0, 1)))
        del second
        gc.collect()

    # -- CUDA autocast ------------------------------------------------------------------------
    if torch.cuda.is_available():
        device = torch.device('cuda')
        clip.to(device)
        audio.to(device)
        padded_gpu = padded.to(device)
        audio_gpu = model_input[None].to(device)
        sync = torch.cuda.synchronize
        for label, dtype in (('fp32', None), ('fp16 autocast', torch.float16),
                             ('bf16 autocast', torch.bfloat16)):
            def run_clip(dtype=dtype):
                with torch.no_grad(), torch.autocast('cuda', dtype=dtype or torch.float32,
                                                     enabled=dtype is not None):
                    return clip.image_tokens(clip(padded_gpu))

            def run_clap(dtype=dtype):
                with torch.no_grad(), torch.autocast('cuda', dtype=dtype or torch.float32,
                                                     enabled=dtype is not None):
                    return audio(audio_gpu)
            torch.cuda.reset_peak_memory_stats()
            gpu_clip = timed(run_clip, max(args.repeats, 10), sync)
            gpu_clap = timed(run_clap, max(args.repeats, 10), sync)
            peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append((f'GPU {label}: CLIP trunk+tokens 768²', ms(gpu_clip)))
            rows.append((f'GPU {label}: CLAP forward 7 s', ms(gpu_clap)))
            rows.append((f'GPU {label}: peak allocated', f'{peak:8.0f} MiB'))
    else:
        rows.append(('CUDA', 'not available: GPU rows skipped'))

    _, peak = rss_mib()
    rows.append(('process peak resident (VmHWM)', f'{peak:8.0f} MiB'))

    print(f'# bench_encoders: config {args.config}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, random weights (timing/memory only)')
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'{name:<{width}}  {value}')
    print('# ratios (same run)')
    for name, value in ratios:
        print(f'{name:<{width}}  {value:8.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
