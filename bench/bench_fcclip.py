#!/usr/bin/env python3
"""FC-CLIP head time and memory at 768² (ConvNeXt-L COCO sizes, random weights), with and without the
classifier cache. Prints one table and the ratios, all measured in this run.

Stages (backbone features are random tensors of the real shapes; the CLIP ConvNeXt-L is only built for its
per-token visual head, used by the out-of-vocabulary branch):
  prepare       pixel decoder + transformer decoder + CLIP mask pooling (classifier-independent, once/frame)
  rescore       semantic_map for a new factor set from the PreparedFrame: mask upsampling + σ + products
  rescore_k*    the same for the k* channel only
  cache_probs   one-time σ(masks) at the output size (what makes cached re-scoring cheap)
  rescore_hot   semantic_map with cached σ(masks): only the final products
  recompute     prepare + semantic_map: a new factor set without any cache

Random weights: timings and memory only, never segmentation quality.
Usage: bench/bench_fcclip.py [--device cpu|cuda] [--fp16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
import warnings
from collections.abc import Callable

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # the memory profiler's kineto start-up chatter
import torch


def peak_cpu_alloc_mb(fn: Callable[[], object]) -> float:
    """Peak of live torch CPU allocations made during fn() (MiB), from the profiler's memory events.

    Allocations are tracked at operator granularity (self allocation of each op, in time order), so a
    temporary freed inside one op is missed; RSS would instead mix in the allocator's cached pages.
    """
    from torch.profiler import ProfilerActivity, profile
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
    del result
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


class Meter:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def peak_mb(self, fn: Callable[[], object]) -> float:
        """Peak memory allocated by fn() above what was live before it (MiB)."""
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        return peak_cpu_alloc_mb(fn)

    def run(self, fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
        """Min and median seconds over repeats (after one warm-up), then the peak memory of one more call
        (MiB). On a shared CPU the minimum is the better estimate of the uncontended time."""
        fn()
        self.sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return min(times), statistics.median(times), self.peak_mb(fn)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--fp16', action='store_true', help='autocast fp16 (CUDA only)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--factors', type=int, default=8, help='K, factors per window')
    parser.add_argument('--image', type=int, default=764, help='valid image side (padded to ×32)')
    args = parser.parse_args()
    if args.fp16 and args.device != 'cuda':
        parser.error('--fp16 needs --device cuda')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('no CUDA device')
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import open_clip

    from taco_ros.core.clip_backbone import ClipBackbone
    from taco_ros.core.fcclip import FCCLIPConfig, build_fcclip

    torch.manual_seed(0)
    clip = open_clip.create_model('convnext_large_d_320', pretrained=None)
    backbone = ClipBackbone(clip, input_size=args.image)
    backbone.drop_text_tower()
    cfg = FCCLIPConfig()
    model = build_fcclip(backbone.to(device), cfg)
    built_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    side = -(-args.image // 32) * 32
    valid = (args.image, args.image)
    widths = dict(zip(('res2', 'res3', 'res4', 'res5'), cfg.in_channels, strict=True))
    strides = {'res2': 4, 'res3': 8, 'res4': 16, 'res5': 32}
    features = {k: torch.randn(1, c, side // strides[k], side // strides[k], device=device)
                for k, c in widths.items()}
    features['clip_vis_dense'] = features['res5']
    factors = torch.rand(1, args.factors, cfg.embed_dim, device=device)
    new_factors = torch.rand(1, args.factors, cfg.embed_dim, device=device)

    autocast = (torch.autocast('cuda', dtype=torch.float16) if args.fp16 else contextlib.nullcontext())
    meter = Meter(device)
    rows = []
    with torch.no_grad(), autocast:
        prepared = model.prepare(features, valid)

        def rescore() -> object:
            prepared.mask_probs.clear()
            return model.semantic_map(prepared, new_factors)

        def recompute() -> object:
            return model.semantic_map(model.prepare(features, valid), new_factors)

        rows.append(('prepare', *meter.run(lambda: model.prepare(features, valid), args.repeats)))
        rows.append(('rescore', *meter.run(rescore, args.repeats)))
        rows.append(('rescore_k*', *meter.run(
            lambda: (prepared.mask_probs.clear(), model.semantic_map(prepared, new_factors, channels=[0])),
            args.repeats)))
        rows.append(('cache_probs', *meter.run(
            lambda: (prepared.mask_probs.clear(), model.cache_mask_probs(prepared, valid)), args.repeats)))
        model.cache_mask_probs(prepared, valid)
        rows.append(('rescore_hot', *meter.run(lambda: model.semantic_map(prepared, new_factors),
                                               args.repeats)))
        rows.append(('recompute', *meter.run(recompute, args.repeats)))
        cached_map = model.semantic_map(prepared, factors)
        fresh_map = model.semantic_map(model.prepare(features, valid), factors)
        cache_error = float((cached_map - fresh_map).abs().max())

    cache_mb = prepared.mask_probs[valid].numel() * 4 / 2**20
    precision = 'fp16 autocast' if args.fp16 else 'fp32'
    print(f'FC-CLIP head, ConvNeXt-L COCO sizes, random weights: input {side}², valid {valid[0]}², '
          f'Q={cfg.num_queries}, K={args.factors}, {device.type} {precision}, threads={args.threads}, '
          f'{args.repeats} repeats, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
    mem = 'peak CUDA alloc' if device.type == 'cuda' else 'peak torch CPU alloc'
    print(f'{"stage":<13} {"min (s)":>8} {"median (s)":>11} {mem + " (MiB)":>28}')
    for name, fastest, median, peak in rows:
        print(f'{name:<13} {fastest:>8.3f} {median:>11.3f} {peak:>28.0f}')
    t = {name: fastest for name, fastest, _, _ in rows}  # ratios from the minima
    print(f'cached σ(masks) at {valid[0]}²: {cache_mb:.0f} MiB; '
          f'max |cached − recomputed map| = {cache_error:.1e}')
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'process peak RSS: {built_rss:.0f} MiB after building CLIP ConvNeXt-L (text tower built, then '
          f'dropped) + head, {peak_rss:.0f} MiB at the end')
    print(f'ratio recompute / rescore     = {t["recompute"] / t["rescore"]:.1f}x')
    print(f'ratio recompute / rescore_hot = {t["recompute"] / t["rescore_hot"]:.1f}x')
    print(f'ratio rescore / rescore_k*    = {t["rescore"] / t["rescore_k*"]:.2f}x')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
