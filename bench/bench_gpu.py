#!/usr/bin/env python3
"""The GPU targets of a TACO window in one run: per-stage min/median/p95, precision agreement, peak memory.

Full-size random-weight models (the real architectures; every number is a cost, nothing is a result), a
640x480 frame and 1 s of 16 kHz audio, through the public pipeline (taco_ros.core.pipeline.TacoPipeline):

1. for each precision (fp32, then bf16 and fp16 on CUDA): one cold window, then ``--windows`` warm
   windows on varied inputs; min / median / p95 of every stage and of the whole window (frame and audio
   in -> result out, host copies included) and the peak GPU memory of that pipeline;
2. agreement of each half precision with fp32 on ``--agreement`` varied inputs, each solved cold with the
   same seed: the sounding factor k* is the same, and the IoU of the masks (the soft map at the
   pipeline's threshold, computed even when nothing is judged sounding) is >= 0.95;
3. with ``--node``: taco_node fed in real time with ``hop_sec`` 0.1 for ``--node-seconds`` (published
   share of the due windows, latency), using bench_pipeline.py's harness.

Targets (issue "On the GPU"): warm whole window p95 <= 100 ms in half precision, co-NMF <= 10 ms,
segmenter <= 30 ms, peak GPU memory <= 6 GB. The script prints each target with the measured value.

Usage: python bench/bench_gpu.py [--device cuda] [--windows 30] [--agreement 20] [--node]
On a CPU-only machine it runs fp32 only (slow: use --windows 2 --agreement 2 for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'taco_ros'))

import bench_pipeline  # the bank writer and the node harness are shared

STAGES = ('image_encoder', 'audio_encoder', 'conmf', 'segmenter', 'total')
TARGETS_MS = {'total': 100.0, 'conmf': 10.0, 'segmenter': 30.0}
TARGET_PEAK_GIB = 6.0
RATE = 16000
FRAME_SHAPE = (480, 640)


def varied_input(index: int) -> tuple[np.ndarray, Any]:
    """A frame with a few coloured shapes over noise and a window of tone + noise; both vary by index."""
    from taco_ros.core.contract import AudioWindow

    rng = np.random.default_rng(1000 + index)
    frame = (rng.random((*FRAME_SHAPE, 3)) * 80).astype(np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, FRAME_SHAPE[0] - 120), rng.integers(0, FRAME_SHAPE[1] - 160)
        frame[y:y + 120, x:x + 160] = rng.integers(60, 256, size=3, dtype=np.uint8)
    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * rng.uniform(200, 2000) * t) * rng.uniform(0.05, 0.5)
    samples = (tone + rng.standard_normal(RATE) * rng.uniform(0.01, 0.1)).astype(np.float32)
    return frame, AudioWindow(samples=samples, sample_rate=RATE, start=float(index))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def make_pipeline(args: argparse.Namespace, bank: Path, precision: str) -> Any:
    from taco_ros.core.pipeline import PipelineConfig, TacoPipeline

    return TacoPipeline(PipelineConfig(
        model_config=args.config, device=args.device, precision=precision, anchors=str(bank),
        keep_text_encoders=False, allow_random_weights=True, always_segment=True, seed=0))


def peak_gib(pipeline: Any) -> float | None:
    import torch

    if pipeline.device.type != 'cuda':
        return None
    return torch.cuda.max_memory_allocated(pipeline.device) / 2 ** 30


def reset_peak(pipeline: Any) -> None:
    import torch

    if pipeline.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(pipeline.device)


def time_windows(pipeline: Any, count: int) -> dict[str, list[float]]:
    """Warm windows on varied inputs; host-side wall time around process() is the 'total'."""
    frame, window = varied_input(0)
    pipeline.reset()
    pipeline.process(frame, window)                       # cold start and lazy initialisation
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    for index in range(1, count + 1):
        frame, window = varied_input(index)
        started = time.perf_counter()
        result = pipeline.process(frame, window)
        wall_ms = (time.perf_counter() - started) * 1e3
        for stage in STAGES[:-1]:
            stages[stage].append(result.timings.get(stage, 0.0))
        stages['total'].append(wall_ms)
    return stages


def masks_and_k(pipeline: Any, count: int) -> list[tuple[int, np.ndarray]]:
    """(k*, mask at the pipeline's threshold) of each varied input, solved cold."""
    threshold = pipeline.config.mask_threshold
    out = []
    for index in range(count):
        frame, window = varied_input(500 + index)
        pipeline.reset()
        result = pipeline.process(frame, window)
        score = result.score_map if result.score_map is not None else np.zeros(FRAME_SHAPE, np.float32)
        out.append((int(result.k_star), score > threshold))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def print_stage_table(rows: dict[str, dict[str, list[float]]], device: str) -> None:
    print(f'\n## warm window on {device}, ms (min / median / p95)\n')
    print('| precision | ' + ' | '.join(STAGES) + ' |')
    print('|---|' + '---|' * len(STAGES))
    for precision, stages in rows.items():
        cells = [f'{min(v):.1f} / {statistics.median(v):.1f} / {percentile(v, 95):.1f}'
                 for v in (stages[s] for s in STAGES)]
        print(f'| {precision} | ' + ' | '.join(cells) + ' |')


def print_targets(rows: dict[str, dict[str, list[float]]], peaks: dict[str, float | None]) -> None:
    print('\n## targets\n')
    for precision, stages in rows.items():
        for stage, target in TARGETS_MS.items():
            value = percentile(stages[stage], 95) if stage == 'total' else statistics.median(stages[stage])
            kind = 'p95' if stage == 'total' else 'median'
            print(f'{precision}: {stage} {kind} {value:.1f} ms, target {target:.0f} ms, '
                  f'ratio {value / target:.2f}')
        if peaks.get(precision) is not None:
            print(f'{precision}: peak GPU memory {peaks[precision]:.2f} GiB, '
                  f'target {TARGET_PEAK_GIB:.0f} GiB, ratio {peaks[precision] / TARGET_PEAK_GIB:.2f}')
    if 'fp32' in rows:
        base = percentile(rows['fp32']['total'], 95)
        for precision in rows:
            if precision != 'fp32':
                print(f'ratio fp32 / {precision} whole-window p95: '
                      f'{base / percentile(rows[precision]["total"], 95):.2f}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='taco_convnext_large')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--windows', type=int, default=30, help='warm windows per precision')
    parser.add_argument('--agreement', type=int, default=20, help='inputs compared with fp32')
    parser.add_argument('--node', action='store_true', help='also run taco_node with hop_sec 0.1')
    parser.add_argument('--node-seconds', type=float, default=60.0)
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and args.device != 'cpu'
    precisions = ('fp32', 'bf16', 'fp16') if cuda else ('fp32',)
    print(f'# torch {torch.__version__}, '
          f'{torch.cuda.get_device_name() if cuda else "CPU, " + str(torch.get_num_threads()) + " threads"}')
    rows: dict[str, dict[str, list[float]]] = {}
    peaks: dict[str, float | None] = {}
    agreement: dict[str, list[tuple[int, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bank = bench_pipeline.write_random_bank(Path(tmp) / 'bank.safetensors', args.config)
        for precision in precisions:
            pipeline = make_pipeline(args, bank, precision)
            try:
                reset_peak(pipeline)
                rows[precision] = time_windows(pipeline, args.windows)
                peaks[precision] = peak_gib(pipeline)
                agreement[precision] = masks_and_k(pipeline, args.agreement)
                device = str(pipeline.device)
            finally:
                pipeline.close()
            print(f'# {precision} done')
        print_stage_table(rows, device)
        print_targets(rows, peaks)
        print('\n## agreement with fp32 (random weights: a numerical comparison, not a result)\n')
        for precision in precisions[1:]:
            same_k = sum(a[0] == b[0] for a, b in zip(agreement['fp32'], agreement[precision], strict=True))
            ious = [iou(a[1], b[1]) for a, b in zip(agreement['fp32'], agreement[precision], strict=True)]
            print(f'{precision}: k* equal on {same_k}/{len(ious)}, mask IoU min {min(ious):.3f} median '
                  f'{statistics.median(ious):.3f}; inputs with IoU >= 0.95: '
                  f'{sum(v >= 0.95 for v in ious)}/{len(ious)}')
        if args.node:
            node_args = argparse.Namespace(
                config=args.config, device=args.device, precision=precisions[-2] if cuda else 'fp32',
                profile='streaming', model_dir=None, node_seconds=args.node_seconds, hop_sec=0.1)
            node = bench_pipeline.bench_node(node_args, bank)
            due = args.node_seconds / 0.1
            print(f'\n## taco_node, hop 0.1 s, {args.node_seconds:.0f} s\n')
            print(f'windows published {node["windows"]} of about {due:.0f} due '
                  f'({node["windows"] / due:.1%}); dropped busy {node["dropped_busy"]:g}, '
                  f'no frame {node["dropped_no_frame"]:g}; latency mean {node["latency_mean_s"]:.3f} s, '
                  f'max {node["latency_max_s"]:.3f} s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
