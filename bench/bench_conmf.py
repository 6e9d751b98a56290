"""Benchmark of the semantic co-NMF solver at TACO's shapes, on planted windows (one run, one table).

Shapes: 576×768 image tokens, 64×768 audio tokens, K = 8, J = 527 words, D_P = 1024 (``PlantedSpec.paper()``).
A drifting sequence (objects move by one cell per window, noise redrawn) is solved with:

* the paper profile (k-means init, plain GD, 1800 steps), every window cold;
* our streaming profile started cold on every window;
* our streaming profile warm-started from the previous window (the robot's case), and, for the optimiser
  comparison, the same warm chain with plain GD, Nesterov momentum, and Adam without the logit refit.

It then times one step of the hand-written gradient against autograd, checks the scene-change rule, and checks
the "nothing sounding" decision on planted positives and negatives (``--calibrate`` also runs the paper
profile on them and prints the thresholds ``calibrate_sounding_threshold`` picks).

Run: ``.venv/bin/python bench/bench_conmf.py [--device cuda] [--json out.json] [--calibrate]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'taco_ros'))
sys.path.insert(0, str(REPO / 'taco_ros' / 'test'))

from planted import PlantedSpec, activation_iou, make_drifting_sequence, make_planted_problem  # noqa: E402

from taco_ros.core import conmf  # noqa: E402
from taco_ros.core.conmf import CoNMFConfig, CoNMFResult, solve, solve_batch  # noqa: E402


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--json', default=None, help='also write the numbers to this JSON file')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--windows', type=int, default=6, help='windows in the drifting sequence (>= 2)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the drifting sequence')
    parser.add_argument('--decision-seeds', type=int, default=8, help='seeds for the sounding decision check')
    parser.add_argument('--skip-taco', action='store_true',
                        help="skip the slow row that runs TACO's formulation of the paper profile")
    parser.add_argument('--calibrate', action='store_true',
                        help='calibration run: 20 seeds (100-119), paper and streaming profiles, thresholds')
    return parser.parse_args()


def _to(problem: object, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return problem.x_image.to(device), problem.x_audio.to(device)


def _summary(name: str, results: list[CoNMFResult], windows: list, times: list[float]) -> dict:
    pairs = list(zip(results, windows, strict=True))
    ious = [activation_iou(r.image_activations, r.k_star, w.mask) for r, w in pairs]
    return {
        'profile': name,
        'steps': statistics.mean(r.steps for r in results),
        'time_ms': 1e3 * statistics.median(times),
        'iou': statistics.mean(ious),
        'objective': statistics.mean(r.objective - r.objective_terms['temporal'] for r in results),
        'labels_ok': sum(r.labels[0] == w.sounding_word for r, w in pairs),
        'sounding_ok': sum(r.sounding for r in results),
        'cold_starts': sum(r.cold_start for r in results),
        'windows': len(results),
    }


def _timed(function, *args, **kwargs) -> tuple[CoNMFResult, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def run_paper(windows: list, bank: object, device: str) -> dict:
    results, times = [], []
    for window in windows[1:]:
        result, elapsed = _timed(solve, *_to(window, device), bank, CoNMFConfig.paper())
        results.append(result)
        times.append(elapsed)
    return _summary('paper (k-means, GD, 1800 steps)', results, windows[1:], times)


def run_taco_formulation(windows: list, bank: object, device: str) -> dict:
    """The paper profile with TACO's formulation of a step (residual matrix, repeated components, autograd).

    Same initialisation, schedule and update as ``CoNMFConfig.paper()``; one window (it is slow). The IoU is
    read from the final state.
    """
    from test_conmf import transcribed_objective

    window = windows[1]
    config = CoNMFConfig.paper()
    started = time.perf_counter()
    x_image, x_audio = (x.clamp_min(0).unsqueeze(0) for x in _to(window, device))
    data, _ = conmf._prepare(x_image, x_audio, bank, config)
    leaves = [t.requires_grad_(True) for t in conmf._cold_unknowns(data, config)]
    for step in range(config.max_steps):
        lr = config.lr * config.lr_decay ** (step // config.lr_decay_every)
        objective = transcribed_objective(x_image, x_audio, bank, *leaves, config)
        grads = torch.autograd.grad(objective.sum(), leaves)
        with torch.no_grad():
            for leaf, grad in zip(leaves, grads, strict=True):
                leaf -= lr * grad
            leaves[2].clamp_(min=0)
            leaves[3].clamp_(min=0)
    with torch.no_grad():
        terms = conmf._forward(data, leaves, config, False, None)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    k_star = int(terms.image_ce[0].argmin())
    words = window.bank.words
    label = words[int(torch.nn.functional.cosine_similarity(leaves[2][0, k_star].detach().unsqueeze(0),
                                                            bank.image).argmax())]
    return {
        'profile': 'paper, TACO formulation (autograd), 1 window',
        'steps': config.max_steps, 'time_ms': 1e3 * elapsed,
        'iou': activation_iou(terms.u_image[0], k_star, window.mask),
        'objective': float(terms.total[0]), 'labels_ok': int(label == window.sounding_word),
        'sounding_ok': None, 'cold_starts': 1, 'windows': 1,
    }


def run_cold(windows: list, bank: object, device: str) -> dict:
    results, times = [], []
    for window in windows[1:]:
        result, elapsed = _timed(solve, *_to(window, device), bank, CoNMFConfig.streaming())
        results.append(result)
        times.append(elapsed)
    return _summary('ours, cold (k-means, Adam, early stop)', results, windows[1:], times)


def run_warm(name: str, windows: list, bank: object, device: str, config: CoNMFConfig) -> dict:
    previous = solve(*_to(windows[0], device), bank, CoNMFConfig.streaming())
    results, times = [], []
    for window in windows[1:]:
        previous, elapsed = _timed(solve, *_to(window, device), bank, config, warm_start=previous)
        results.append(previous)
        times.append(elapsed)
    return _summary(name, results, windows[1:], times)


def step_cost(window: object, bank: object, device: str, steps: int = 30) -> dict:
    """Milliseconds per step (objective + gradient) at the paper profile's first point, three ways.

    The solver's hand-written gradient; autograd of the same expanded objective (``conmf._forward``); autograd
    of the direct transcription used by the tests (residual matrix, repeated components: TACO's formulation).
    """
    from test_conmf import transcribed_objective

    config = CoNMFConfig.paper()
    x_image, x_audio = (x.clamp_min(0).unsqueeze(0) for x in _to(window, device))
    bank = bank.to(device)
    data, _ = conmf._prepare(x_image, x_audio, bank, config)
    unknowns = conmf._cold_unknowns(data, config)

    def analytic() -> None:
        conmf._value_and_grad(data, unknowns, config, False, None)

    def expanded() -> None:
        leaves = [t.clone().requires_grad_(True) for t in unknowns]
        torch.autograd.grad(conmf._forward(data, leaves, config, False, None).total.sum(), leaves)

    def direct() -> None:
        leaves = [t.clone().requires_grad_(True) for t in unknowns]
        torch.autograd.grad(transcribed_objective(x_image, x_audio, bank, *leaves, config).sum(), leaves)

    timings = {}
    ways = (('analytic', analytic), ('autograd_expanded', expanded), ('autograd_direct', direct))
    for name, function in ways:
        function()  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            function()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        timings[f'{name}_ms_per_step'] = 1e3 * (time.perf_counter() - started) / steps
    return timings


def scene_change(spec: PlantedSpec, bank: object, device: str, seed: int) -> dict:
    out = {}
    for kind, changes in (('scene', {'scene_change_at': 3}), ('sound', {'sound_change_at': 3})):
        previous, rows = None, []
        for window in make_drifting_sequence(seed, 5, spec, **changes):
            previous = solve(*_to(window, device), bank, CoNMFConfig.streaming(), warm_start=previous)
            rows.append({'cold': previous.cold_start, 'ratio': previous.warm_error_ratio,
                         'label_ok': previous.labels[0] == window.sounding_word})
        out[kind] = rows
    return out


def decision(spec: PlantedSpec, bank: object, device: str, seeds: range, with_paper: bool) -> dict:
    kinds = {'positive': {}, 'off-screen': {'negative': True}, 'silent': {'silent': True}}
    problems = [(kind, make_planted_problem(seed, spec, **options)) for seed in seeds
                for kind, options in kinds.items()]
    profiles = {'streaming': [solve(*_to(p, device), bank, CoNMFConfig.streaming()) for _, p in problems]}
    if with_paper:
        profiles['paper'] = solve_batch(torch.stack([p.x_image for _, p in problems]).to(device),
                                        torch.stack([p.x_audio for _, p in problems]).to(device), bank,
                                        CoNMFConfig.paper())
    out = {}
    for profile, results in profiles.items():
        by_kind = {kind: [r.confidence for (k, _), r in zip(problems, results, strict=True) if k == kind]
                   for kind in kinds}
        correct = sum(r.sounding == (k == 'positive') for (k, _), r in zip(problems, results, strict=True))
        threshold = conmf.calibrate_sounding_threshold(
            [r.confidence for r in results], [k == 'positive' for k, _ in problems])
        out[profile] = {
            'range': {kind: (min(v), max(v)) for kind, v in by_kind.items()},
            'correct': correct, 'total': len(results), 'calibrated_threshold': threshold,
            'default_threshold': (CoNMFConfig.streaming() if profile == 'streaming'
                                  else CoNMFConfig.paper()).sounding_threshold,
        }
    return out


def _print_table(rows: list[dict], paper: dict) -> None:
    header = f'{"profile":<48}{"steps":>8}{"time ms":>10}{"IoU":>7}{"objective":>11}{"labels":>8}' \
             f'{"speed-up":>10}'
    print(header)
    print('-' * len(header))
    for row in rows:
        speed = paper['time_ms'] / row['time_ms']
        print(f'{row["profile"]:<48}{row["steps"]:>8.1f}{row["time_ms"]:>10.1f}{row["iou"]:>7.3f}'
              f'{row["objective"]:>11.2f}{row["labels_ok"]:>5}/{row["windows"]:<2}{speed:>9.1f}x')


def main() -> int:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith('cuda') and not torch.cuda.is_available():
        print('CUDA is not available here', file=sys.stderr)
        return 2
    spec = PlantedSpec.paper()
    windows = make_drifting_sequence(args.seed, max(args.windows, 2), spec)
    bank = windows[0].bank.to(device)
    load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    print(f'co-NMF benchmark: torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, '
          f'load average {load[0]:.2f}')
    print(f'shapes: X_I 576x{spec.image_dim}, X_A 64x{spec.audio_dim}, K=8, J={spec.n_words}, '
          f'D_P={spec.projection_dim}; drifting sequence seed {args.seed}, '
          f'{len(windows) - 1} timed windows\n')

    paper = run_paper(windows, bank, device)
    rows = [] if args.skip_taco else [run_taco_formulation(windows, bank, device)]
    rows += [
        paper,
        run_cold(windows, bank, device),
        run_warm('ours, warm (Adam, refit logits)', windows, bank, device, CoNMFConfig.streaming()),
        run_warm('  warm, Adam, previous logits (no refit)', windows, bank, device,
                 CoNMFConfig.streaming(warm_logits='previous')),
        run_warm('  warm, plain GD lr 0.25', windows, bank, device,
                 CoNMFConfig.streaming(optimizer='gd', lr=0.25)),
        run_warm('  warm, Nesterov lr 0.05', windows, bank, device,
                 CoNMFConfig.streaming(optimizer='nesterov', lr=0.05)),
    ]
    _print_table(rows, paper)
    warm = next(r for r in rows if r['profile'].startswith('ours, warm'))
    cold = next(r for r in rows if r['profile'].startswith('ours, cold'))
    taco = rows[0] if not args.skip_taco else None
    cost = step_cost(windows[1], bank, device)
    target_ms = 10.0 if device.startswith('cuda') else 100.0
    ratios = {
        'paper_over_warm_time': paper['time_ms'] / warm['time_ms'],
        'paper_over_cold_time': paper['time_ms'] / cold['time_ms'],
        'paper_over_warm_steps': paper['steps'] / warm['steps'],
        'warm_minus_paper_iou': warm['iou'] - paper['iou'],
        'taco_formulation_over_warm_time': taco['time_ms'] / warm['time_ms'] if taco else None,
        'direct_autograd_over_analytic_step':
            cost['autograd_direct_ms_per_step'] / cost['analytic_ms_per_step'],
    }
    print(f'\nstep cost (objective + gradient): hand-written {cost["analytic_ms_per_step"]:.2f} ms, autograd '
          f'of the expanded objective {cost["autograd_expanded_ms_per_step"]:.2f} ms, autograd of the direct '
          f'formula (TACO) {cost["autograd_direct_ms_per_step"]:.2f} ms')
    if taco:
        print(f'TACO formulation (1 window) / warm time: {ratios["taco_formulation_over_warm_time"]:.0f}x')
    print(f'ratios: paper/warm time {ratios["paper_over_warm_time"]:.1f}x, paper/cold time '
          f'{ratios["paper_over_cold_time"]:.1f}x, paper/warm steps {ratios["paper_over_warm_steps"]:.1f}x, '
          f'warm - paper IoU {ratios["warm_minus_paper_iou"]:+.3f}')
    checks = {
        f'warm solve <= {target_ms:g} ms': warm['time_ms'] <= target_ms,
        'warm >= 30x faster than paper': ratios['paper_over_warm_time'] >= 30,
        'warm IoU >= paper IoU - 0.02': ratios['warm_minus_paper_iou'] >= -0.02,
    }
    print('targets: ' + ', '.join(f'{name}: {"yes" if ok else "NO"}' for name, ok in checks.items()))

    changes = scene_change(spec, bank, device, args.seed + 1)
    for kind, rows_change in changes.items():
        text = ' '.join(f'{"C" if r["cold"] else "W"}({r["ratio"]:.2f})' if r['ratio'] else 'C(first)'
                        for r in rows_change)
        print(f'{kind} change at window 3: {text}  (cold restart above ratio '
              f'{CoNMFConfig.streaming().cold_restart_ratio})')

    seeds = range(100, 120) if args.calibrate else range(args.decision_seeds)
    decisions = decision(spec, bank, device, seeds, with_paper=args.calibrate)
    for profile, numbers in decisions.items():
        ranges = ', '.join(f'{kind} {lo:.3f}-{hi:.3f}' for kind, (lo, hi) in numbers['range'].items())
        print(f'sounding decision ({profile}, seeds {seeds.start}-{seeds.stop - 1}): {ranges}; '
              f'{numbers["correct"]}/{numbers["total"]} correct at threshold {numbers["default_threshold"]}; '
              f'calibrated threshold {numbers["calibrated_threshold"]:.3f}')
    if args.json:
        Path(args.json).write_text(json.dumps({
            'device': device, 'threads': torch.get_num_threads(), 'load_average': load[0],
            'rows': rows, 'step_cost': cost, 'ratios': ratios, 'targets': checks,
            'scene_change': changes, 'decision': decisions}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
