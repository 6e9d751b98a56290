"""The inference thread policy on the CPU: warm co-NMF solves by thread count, idle and loaded.

The co-NMF runs thousands of small tensor operations per window. With several intra-op threads each one
is split across cores and joined again, and when other processes hold the cores (a robot's other nodes,
a laptop's other work) every join waits for a descheduled thread. This benchmark shows the effect in one
run: warm streaming solves of a drifting planted sequence at TACO's shapes (576x768 image and 64x768
audio tokens, K = 8, J = 527 words) with torch intra-op threads 1 and 2, on the machine as it is and
while ``--hogs`` busy processes load the cores (what Debian's ``stress-ng --cpu 2`` does).

Prints median milliseconds and the ratios loaded/idle and 2-threads/1-thread. Run:
``.venv/bin/python bench/bench_threads.py [--windows 6] [--hogs 2]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'taco_ros'))
sys.path.insert(0, str(REPO / 'taco_ros' / 'test'))

from planted import PlantedSpec, make_drifting_sequence  # noqa: E402

from taco_ros.core.conmf import CoNMFConfig, solve  # noqa: E402


def _spin(stop: multiprocessing.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


@contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """``count`` processes that keep one core busy each until the block ends."""
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=5)


def warm_solve_ms(windows: list, threads: int) -> float:
    """Median wall time of the warm solves (the first, cold, window is not counted)."""
    torch.set_num_threads(threads)
    config = CoNMFConfig.streaming(seed=0)
    previous = None
    times = []
    for index, window in enumerate(windows):
        started = time.perf_counter()
        previous = solve(window.x_image, window.x_audio, window.bank, config, warm_start=previous)
        if index:
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--windows', type=int, default=6)
    parser.add_argument('--hogs', type=int, default=2, help='busy processes for the loaded rows')
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    windows = make_drifting_sequence(0, args.windows, PlantedSpec.paper())
    rows = {}
    for load in ('idle', 'loaded'):
        for threads in sorted({1, 2, default_threads}):
            if load == 'idle':
                rows[load, threads] = warm_solve_ms(windows, threads)
            else:
                with cpu_hogs(args.hogs):
                    rows[load, threads] = warm_solve_ms(windows, threads)
            print(f'# {load}, {threads} thread(s): {rows[load, threads]:.0f} ms', flush=True)
    torch.set_num_threads(default_threads)
    print(f'\n## warm co-NMF solve at paper shapes, median ms ({args.windows - 1} warm windows, '
          f'{args.hogs} busy processes when loaded)\n')
    print('| threads | idle | loaded | loaded / idle |')
    print('|---|---|---|---|')
    for threads in sorted({t for _, t in rows}):
        idle, loaded = rows['idle', threads], rows['loaded', threads]
        print(f'| {threads} | {idle:.0f} | {loaded:.0f} | {loaded / idle:.1f} |')
    if ('loaded', 2) in rows:
        print(f'\nratio loaded 2 threads / loaded 1 thread: {rows["loaded", 2] / rows["loaded", 1]:.1f}')
        print(f'ratio idle 2 threads / idle 1 thread: {rows["idle", 2] / rows["idle", 1]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
