#!/usr/bin/env python3
"""End-to-end TACO window cost with full-size random-weight models (timings only, no results).

Measures, in one run on the current machine:

* the ROS-free pipeline (taco_ros.core.pipeline.TacoPipeline) on a 640x480 frame and a 1-s 16 kHz
  window: per-stage milliseconds (image encoder, audio encoder, co-NMF, segmenter, total) of the
  first (cold-start) window and of the following warm-started windows, for each mode
  (full, coarse, baseline) and the chosen solver profile;
* with --node: taco_node over in-process DDS, fed a 30 Hz camera and a 16 kHz microphone in 32 ms
  chunks in real time: window latency (window end → outputs received), windows processed and
  windows dropped while busy.

The anchor bank holds 527 words with random vectors of the models' widths (encoding the AudioSet
names with random text towers would only cost time); solver cost depends on its size, not on the
vectors. Random weights: every number is a cost, nothing here is a result.

Usage: python bench/bench_pipeline.py [--config taco_convnext_large] [--device auto]
       [--precision fp32] [--windows 3] [--modes full,coarse,baseline] [--profile streaming]
       [--node] [--node-seconds 60] [--threads N]
Needs `source install/setup.bash` for --node.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'taco_ros'))

STAGES = ('image_encoder', 'audio_encoder', 'conmf', 'segmenter', 'total')
FRAME_SHAPE = (480, 640)
RATE = 16000
CHUNK = 512


def rss_mib() -> float:
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def write_random_bank(path: Path, config: str, seed: int = 0) -> Path:
    """A 527-word AudioSet bank with random vectors of the config's widths (and a random CLAP
    projection), in the real bank file format."""
    import torch

    from taco_ros.core.audio_encoder import import_msclap_modules
    from taco_ros.core.models import load_model_config
    from taco_ros.core.vocabulary import AnchorBankData, audioset_labels, save_anchor_bank

    cfg = load_model_config(config)
    words = audioset_labels()
    generator = torch.Generator().manual_seed(seed)
    d_image = int(cfg['clip']['embed_dim'])
    d_proj = int(cfg['clap']['d_proj'])
    htsat = cfg['clap']['htsat']
    width = int(htsat['embed_dim']) * 2 ** (len(htsat['depths']) - 1)   # HTS-AT token width D_A
    _, projection_cls = import_msclap_modules()
    projection = projection_cls(width, d_proj)
    bank = AnchorBankData(
        words=words, clip_text=torch.randn(len(words), d_image, generator=generator),
        clap_text=torch.randn(len(words), d_proj, generator=generator),
        projection_state={k: v.detach().clone() for k, v in projection.state_dict().items()},
        logit_scale=20.0, model_ids={'clip': 'random', 'clap': 'random'},
        prompts={'clip': cfg['clip']['prompt'], 'clap': cfg['clap']['prompt']})
    return save_anchor_bank(bank, path)


def inputs(seed: int = 0) -> tuple[np.ndarray, Any]:
    from taco_ros.core.pipeline import AudioWindow

    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(*FRAME_SHAPE, 3), dtype=np.uint8)
    t = np.arange(RATE) / RATE
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(RATE))
    return frame, AudioWindow(samples=samples.astype(np.float32), sample_rate=RATE, start=0.0)


def bench_pipeline(args: argparse.Namespace, bank: Path) -> list[tuple[str, str, dict, list]]:
    """Per mode: (mode, device, cold-window timings, warm-window timings)."""
    from taco_ros.core.pipeline import PipelineConfig, TacoPipeline

    started = time.perf_counter()
    pipeline = TacoPipeline(PipelineConfig(
        model_config=args.config, device=args.device, precision=args.precision,
        anchors=str(bank), keep_text_encoders=False, allow_random_weights=True,
        solver_profile=args.profile, model_dir=args.model_dir, always_segment=True))
    print(f'# models + bank ready on {pipeline.device} in {time.perf_counter() - started:.1f} s, '
          f'peak RSS {rss_mib():.0f} MiB, {len(pipeline.vocabulary)} words')
    frame, window = inputs()
    rows = []
    try:
        for mode in args.modes:
            pipeline.update(mode=mode)
            pipeline.reset()
            cold = pipeline.process(frame, window)
            warm = [pipeline.process(frame, window) for _ in range(args.windows)]
            rows.append((mode, str(pipeline.device), {**cold.timings, 'steps': cold.steps},
                         [{**w.timings, 'steps': w.steps} for w in warm]))
            print(f'# {mode}: cold {cold.timings["total"]:.0f} ms ({cold.steps} steps), warm '
                  f'{statistics.median(w.timings["total"] for w in warm):.0f} ms median')
    finally:
        pipeline.close()
    return rows


def bench_node(args: argparse.Namespace, bank: Path) -> dict[str, float]:
    """taco_node fed in real time over in-process DDS; latency = receipt − window end."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from taco_msgs.msg import AudioChunk, SoundingObjectArray
    from taco_ros.conversions import sec_to_stamp, stamp_to_sec
    from taco_ros.taco_node import TacoNode

    os.environ.setdefault('ROS_DOMAIN_ID', str(20 + os.getpid() % 150))
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = {'model_config': args.config, 'device': args.device, 'precision': args.precision,
                 'anchors': str(bank), 'allow_random_weights': True,
                 'solver_profile': args.profile, 'audio_msg_type': 'taco'}
    if args.model_dir:
        overrides['model_dir'] = args.model_dir
    if getattr(args, 'hop_sec', None):
        overrides['hop_sec'] = float(args.hop_sec)   # bench_gpu.py: 10 windows per second
    node = TacoNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in overrides.items()])
    peer = Node('bench_peer', context=context)
    received: list[tuple[float, float]] = []
    clock = node.get_clock()
    peer.create_subscription(
        SoundingObjectArray, '/taco_node/objects',
        lambda m: received.append((clock.now().nanoseconds * 1e-9, stamp_to_sec(m.audio_end))),
        QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    image_pub = peer.create_publisher(Image, '/image', 5)
    audio_pub = peer.create_publisher(AudioChunk, '/audio', 50)
    executor = SingleThreadedExecutor(context=context)   # as taco_node's main()
    executor.add_node(node)
    executor.add_node(peer)
    started = time.perf_counter()
    if not node.start():
        raise SystemExit('taco_node did not start')
    print(f'# node configured and active in {time.perf_counter() - started:.1f} s')
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    frame, _ = inputs()
    image = Image(height=FRAME_SHAPE[0], width=FRAME_SHAPE[1], encoding='rgb8',
                  step=FRAME_SHAPE[1] * 3)
    image.data = frame.tobytes()
    chunk = AudioChunk(sample_rate=RATE, channels=1, sample_format=AudioChunk.FORMAT_S16)
    rng = np.random.default_rng(1)
    t0 = clock.now().nanoseconds * 1e-9
    begin = time.monotonic()
    frames = chunks = 0
    while time.monotonic() - begin < args.node_seconds:
        elapsed = time.monotonic() - begin
        while chunks * CHUNK / RATE <= elapsed:
            chunk.header.stamp = sec_to_stamp(t0 + chunks * CHUNK / RATE)
            chunk.int16_data = (rng.standard_normal(CHUNK) * 3000).astype(np.int16)
            audio_pub.publish(chunk)
            chunks += 1
        while frames / 30.0 <= elapsed:
            image.header.stamp = sec_to_stamp(t0 + frames / 30.0)
            image_pub.publish(image)
            frames += 1
        time.sleep(0.005)
    time.sleep(1.0)
    drops = dict(node._policy.drops)
    stages = list(node._stats.stages)
    executor.shutdown(timeout_sec=5.0)
    node.release()
    node.destroy_node()
    peer.destroy_node()
    rclpy.shutdown(context=context)
    latencies = [now - end for now, end in received]
    return {
        'windows': len(received), 'dropped_busy': drops.get('busy', 0),
        'dropped_no_frame': drops.get('no_frame', 0),
        'latency_mean_s': statistics.mean(latencies) if latencies else float('nan'),
        'latency_max_s': max(latencies) if latencies else float('nan'),
        'processing_mean_s': (statistics.mean(s['total'] for s in stages) / 1e3
                              if stages else float('nan')),
        'seconds': args.node_seconds,
    }


def print_tables(rows: list[tuple[str, str, dict, list]], node: dict[str, float] | None,
                 args: argparse.Namespace) -> None:
    print()
    print(f'## TACO window cost, model config {args.config}, {args.precision}, solver '
          f'{args.profile}, frame {FRAME_SHAPE[1]}x{FRAME_SHAPE[0]}, 1 s @ {RATE} Hz, '
          f'{args.windows} warm windows')
    print()
    header = '| mode | device | window | ' + ' | '.join(f'{s} (ms)' for s in STAGES) + ' | steps |'
    print(header)
    print('|' + '---|' * (len(STAGES) + 4))
    for mode, device, cold, warm in rows:
        print(f'| {mode} | {device} | cold | '
              + ' | '.join(f'{cold[s]:.0f}' for s in STAGES) + f' | {cold["steps"]} |')
        med = {s: statistics.median(w[s] for w in warm) for s in (*STAGES, 'steps')}
        print(f'| {mode} | {device} | warm (median) | '
              + ' | '.join(f'{med[s]:.0f}' for s in STAGES) + f' | {med["steps"]:.0f} |')
    print()
    by_mode = {mode: (cold, warm) for mode, _, cold, warm in rows}
    if 'full' in by_mode:
        cold, warm = by_mode['full']
        warm_total = statistics.median(w['total'] for w in warm)
        print(f'ratio full cold/warm total: {cold["total"] / warm_total:.2f}')
        for stage in STAGES[:-1]:
            share = statistics.median(w[stage] / w['total'] for w in warm)
            print(f'share of full warm total, {stage}: {share:.2f}')
        for other in ('coarse', 'baseline'):
            if other in by_mode:
                other_total = statistics.median(w['total'] for w in by_mode[other][1])
                print(f'ratio {other}/full warm total: {other_total / warm_total:.2f}')
    print(f'peak RSS: {rss_mib():.0f} MiB')
    if node is not None:
        print()
        print(f'## taco_node end to end ({node["seconds"]:.0f} s of 30 Hz 640x480 rgb8 + '
              f'16 kHz audio in {CHUNK}-sample chunks, window 1 s, hop 1 s)')
        print()
        print('| windows published | dropped (busy) | dropped (no frame) | processing mean (s) | '
              'latency mean (s) | latency max (s) |')
        print('|---|---|---|---|---|---|')
        print(f'| {node["windows"]} | {node["dropped_busy"]:g} | {node["dropped_no_frame"]:g} | '
              f'{node["processing_mean_s"]:.2f} | {node["latency_mean_s"]:.2f} | '
              f'{node["latency_max_s"]:.2f} |')
        if node['windows']:
            print(f'ratio latency mean / processing mean: '
                  f'{node["latency_mean_s"] / node["processing_mean_s"]:.2f}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='taco_convnext_large')
    parser.add_argument('--model-dir', default=None,
                        help='directory with real model files (default: random weights)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'fp16', 'bf16'))
    parser.add_argument('--profile', default='streaming', choices=('streaming', 'paper'))
    parser.add_argument('--windows', type=int, default=3, help='warm windows per mode')
    parser.add_argument('--modes', default='full,coarse,baseline')
    parser.add_argument('--node', action='store_true', help='also run taco_node end to end')
    parser.add_argument('--node-seconds', type=float, default=60.0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, '
          f'CUDA {"yes: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no"}')
    with tempfile.TemporaryDirectory() as tmp:
        bank = write_random_bank(Path(tmp) / 'bank.safetensors', args.config)
        rows = bench_pipeline(args, bank)
        node = bench_node(args, bank) if args.node else None
    print_tables(rows, node, args)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
