"""Benchmark of "every sounding object in view" (core/sounding.py) and "where it is in 3D" (core/geometry.py).

Sounding objects: planted windows (test/planted_multi.py, ``PlantedSpec.small()``: the real 576×768 image and
64×768 audio tokens, J = 64 words, D_P = 256) with one, two or three visible sources among silent distractors,
and the negatives (a sound from off-screen, silence), plus one visible source heard together with an
off-screen one. Each window is solved cold with both solver profiles; the objects are read out twice: TACO's
single k* (``max_objects = 1``) and the multi-object rule (``--max-objects``, default 3). Per row:

* recall: visible sources named by an object / visible sources; precision: objects naming a visible source
  (each once) / objects reported; false/win: objects per negative window; exact: windows whose objects are
  exactly the visible sources; IoU: mean activation IoU (planted.activation_iou of the object's map, the max
  over its merged factors) of the found sources.

``--calibrate`` solves seeds 100-111 instead and prints, per profile, the match depths of source and
non-source factors, the threshold ``calibrate_sounding_threshold`` picks between them, and the coarse-mask IoU
of split factors of one object (the merge rule).

3D positions: a box before a wall, ray-cast at 0.5-4 m, 16UC1 with depth noise σ = 1 mm + 0.25 % z², and
masks that are exact, spill onto the wall, miss the object's rim, or have holes in the depth.

Run: ``.venv/bin/python bench/bench_multi.py [--seeds 6] [--profiles streaming,paper] [--calibrate]
[--skip-geometry] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'taco_ros'))
sys.path.insert(0, str(REPO / 'taco_ros' / 'test'))

from planted import activation_iou  # noqa: E402
from planted_multi import MultiProblem, MultiScene, make_multi_problem, score_objects  # noqa: E402
from test_geometry import BOX, CAMERA, as_16uc1, box_scene, dilate  # noqa: E402

from taco_ros.core.conmf import (  # noqa: E402
    CoNMFConfig,
    CoNMFResult,
    calibrate_sounding_threshold,
    solve,
    solve_batch,
)
from taco_ros.core.geometry import object_position  # noqa: E402
from taco_ros.core.sounding import (  # noqa: E402
    Candidate,
    SoundingRule,
    factor_readout,
    mask_iou,
    mask_overlap,
    select_sounding_factors,
)

SCENES = {
    '1 source': MultiScene(n_sources=1, n_distractors=2),
    '2 sources': MultiScene(n_sources=2, n_distractors=1),
    '3 sources': MultiScene(n_sources=3, n_distractors=1),
    '1 source + off-screen': MultiScene(n_sources=1, n_distractors=1, n_off_screen=1),
    'off-screen': MultiScene(n_sources=0, n_distractors=2, n_off_screen=1),
    'silence': MultiScene(n_sources=0, n_distractors=2),
}
CALIBRATION_SEEDS = range(100, 112)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profiles', default='streaming,paper', help='solver profiles, comma-separated')
    parser.add_argument('--seeds', type=int, default=6, help='windows per scene (seeds 0 .. N-1)')
    parser.add_argument('--max-objects', type=int, default=3, help='cap of the multi-object rule')
    parser.add_argument('--batch', type=int, default=6, help='windows per solve_batch call (paper profile)')
    parser.add_argument('--calibrate', action='store_true', help='calibration run on seeds 100-111')
    parser.add_argument('--skip-geometry', action='store_true', help='skip the 3D position table')
    parser.add_argument('--skip-sounding', action='store_true', help='skip the sounding-object tables')
    parser.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--json', default=None, help='also write the numbers to this JSON file')
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------
# Solving
# ----------------------------------------------------------------------------------------------------
def _solve_all(problems: list[MultiProblem], profile: str, batch: int,
               device: str) -> tuple[list[CoNMFResult], float]:
    """Cold solves of independent windows; returns the results and the mean seconds per window."""
    started = time.perf_counter()
    bank = problems[0].bank
    if profile == 'streaming':
        config = CoNMFConfig.streaming()
        results = [solve(p.x_image.to(device), p.x_audio.to(device), bank, config) for p in problems]
    else:
        config, results = CoNMFConfig.paper(), []
        for i in range(0, len(problems), batch):
            chunk = problems[i:i + batch]
            results += solve_batch(torch.stack([p.x_image for p in chunk]).to(device),
                                   torch.stack([p.x_audio for p in chunk]).to(device), bank, config)
    return results, (time.perf_counter() - started) / len(problems)


def _solved(profile: str, seeds: range, args: argparse.Namespace) -> dict[str, tuple[list, list, float]]:
    out = {}
    for name, scene in SCENES.items():
        problems = [make_multi_problem(seed, scene) for seed in seeds]
        results, seconds = _solve_all(problems, profile, args.batch, args.device)
        out[name] = (problems, results, seconds)
        print(f'  solved {profile:<9} {name:<22} {len(problems)} windows, {seconds:.1f} s/window', flush=True)
    return out


# ----------------------------------------------------------------------------------------------------
# Sounding-object tables
# ----------------------------------------------------------------------------------------------------
def _row(problems: list[MultiProblem], results: list[CoNMFResult], rule: SoundingRule) -> dict:
    scores = []
    for problem, result in zip(problems, results, strict=True):
        objects = select_sounding_factors(result, problem.bank, rule)
        scores.append(score_objects(problem, objects, result.image_activations.cpu()))
    sources, objects = sum(s.sources for s in scores), sum(s.objects for s in scores)
    ious = [iou for s in scores for iou in s.ious]
    return {
        'windows': len(scores),
        'recall': sum(s.found for s in scores) / sources if sources else None,
        'precision': sum(s.objects - s.wrong for s in scores) / objects if objects else None,
        'false_per_window': sum(s.wrong for s in scores) / len(scores),
        'exact': sum(s.found == s.sources and s.wrong == 0 for s in scores) / len(scores),
        'iou': statistics.mean(ious) if ious else None,
    }


def _fmt(value: float | None, spec: str = '.2f') -> str:
    return '   -' if value is None else format(value, spec)


def sounding_tables(args: argparse.Namespace) -> list[dict]:
    rows = []
    seeds = range(args.seeds)
    for profile in args.profiles:
        solved = _solved(profile, seeds, args)
        for name, (problems, results, seconds) in solved.items():
            for cap in (1, args.max_objects):
                rule = SoundingRule.for_profile(profile, max_objects=cap)
                rows.append({'profile': profile, 'scene': name, 'max_objects': cap, 's_per_window': seconds,
                             **_row(problems, results, rule)})
    print(f'\nSounding objects on planted windows (seeds 0-{args.seeds - 1}; cap 1 = TACO\'s k*)')
    print(f'{"profile":<10} {"scene":<22} {"cap":>3} {"recall":>6} {"prec":>6} {"false/win":>9} '
          f'{"exact":>6} {"IoU":>5} {"s/win":>6}')
    for r in rows:
        print(f'{r["profile"]:<10} {r["scene"]:<22} {r["max_objects"]:>3} {_fmt(r["recall"]):>6} '
              f'{_fmt(r["precision"]):>6} {r["false_per_window"]:>9.2f} {r["exact"]:>6.2f} '
              f'{_fmt(r["iou"]):>5} {r["s_per_window"]:>6.1f}')
    return rows


# ----------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------
def _covered_source(problem: MultiProblem, result: CoNMFResult, k: int) -> tuple[float, str | None]:
    """(best activation IoU of factor k with a visible source, that source's word)."""
    ious = [activation_iou(result.image_activations, k, m) for m in problem.source_masks]
    if not ious:
        return 0.0, None
    best = max(ious)
    return best, problem.source_words[ious.index(best)]


def _candidate_class(problem: MultiProblem, result: CoNMFResult, k: int) -> str:
    """'source' when factor k's label names a visible source, else 'other' (the decision is about naming a
    sounding object; how well the factor's map covers it is the IoU column of the tables)."""
    label = factor_readout(result.image_factors[k], problem.bank, 1)[0][0]
    return 'source' if label in problem.source_words else 'other'


def calibrate(args: argparse.Namespace) -> dict:
    summary = {}
    for profile in args.profiles:
        solved = _solved(profile, CALIBRATION_SEEDS, args)
        # Depth 0 and no cap: the loop meets every candidate in the order and state it would with any
        # threshold above, so these depths are the ones a threshold decides on.
        probe = SoundingRule.for_profile(profile, max_objects=8, min_match_depth=0.0)
        depths: dict[str, list[float]] = {'source': [], 'other': []}
        outcomes: dict[str, int] = {}
        split, distinct = [], []
        profile_depths: dict[str, list[float]] = {'source': [], 'other': []}
        for problems, results, _ in solved.values():
            for problem, result in zip(problems, results, strict=True):
                trace: list[Candidate] = []
                select_sounding_factors(result, problem.bank, probe, trace=trace)
                for candidate in trace:
                    outcomes[candidate.outcome] = outcomes.get(candidate.outcome, 0) + 1
                    cls = _candidate_class(problem, result, candidate.factor_index)
                    if candidate.outcome in ('object', 'merged', 'cap'):
                        depths[cls].append(candidate.depth)
                _merge_stats(problem, result, split, distinct)
                _profile_depths(problem, result, profile_depths)
        summary[profile] = {'depths': depths, 'threshold': _threshold(depths), 'outcomes': outcomes,
                            'split_masks': split, 'distinct_masks': distinct, 'ce_profile': profile_depths}
        _print_calibration(profile, summary[profile])
    pooled = {cls: [d for numbers in summary.values() for d in numbers['depths'][cls]]
              for cls in ('source', 'other')}
    summary['pooled_threshold'] = _threshold(pooled)
    print(f'\nAll profiles pooled: min_match_depth = {_fmt(summary["pooled_threshold"], ".3f")}')
    return summary


def _threshold(depths: dict[str, list[float]]) -> float | None:
    """calibrate_sounding_threshold between source and other depths; None when a class is empty."""
    if not depths['source'] or not depths['other']:
        return None
    labels = [True] * len(depths['source']) + [False] * len(depths['other'])
    return calibrate_sounding_threshold(depths['source'] + depths['other'], labels)


def _print_calibration(profile: str, numbers: dict) -> None:
    seeds = f'{CALIBRATION_SEEDS.start}-{CALIBRATION_SEEDS.stop - 1}'
    print(f'\nCalibration, {profile} profile (seeds {seeds}, all scenes)')
    print(f'  candidates beyond k* by outcome at depth 0: {numbers["outcomes"]}')
    for cls, values in numbers['ce_profile'].items():
        q = np.percentile(values, [0, 50, 90, 100]) if values else [np.nan] * 4
        print(f'  solver CE profile, median - CE_I[k] of non-k* {cls:<6} factors (n={len(values):3d}): '
              f'min {q[0]:.3f}  median {q[1]:.3f}  p90 {q[2]:.3f}  max {q[3]:.3f}')
    for cls, values in numbers['depths'].items():
        q = np.percentile(values, [0, 10, 50, 90, 100]) if values else [np.nan] * 5
        print(f'  match depth of agreeing {cls:<6} factors (n={len(values):3d}): min {q[0]:.3f}  '
              f'p10 {q[1]:.3f}  median {q[2]:.3f}  p90 {q[3]:.3f}  max {q[4]:.3f}')
    print(f'  -> min_match_depth = {_fmt(numbers["threshold"], ".3f")} (calibrate_sounding_threshold; '
          '- = a class is empty)')
    for name, key in (('split factors of one source', 'split_masks'),
                      ('factors of distinct sources', 'distinct_masks')):
        values = numbers[key]
        if not values:
            continue
        for index, measure in ((0, 'IoU'), (1, 'overlap')):
            column = [v[index] for v in values]
            print(f'  coarse masks, {name} (n={len(values)}): {measure} min {min(column):.2f} '
                  f'median {statistics.median(column):.2f} max {max(column):.2f}')


def _profile_depths(problem: MultiProblem, result: CoNMFResult, out: dict[str, list[float]]) -> None:
    """The solver's own evidence: median(CE_I) − CE_I[k] of the factors k ≠ k* that cover a visible source
    (IoU >= 0.5) and of those that cover none (IoU < 0.2)."""
    ce = result.image_ce.detach().cpu()
    median = float(ce.sort().values[(len(ce) - 1) // 2:len(ce) // 2 + 1].mean())
    for k in range(len(ce)):
        best, _ = _covered_source(problem, result, k)
        if k != result.k_star and (best >= 0.5 or best < 0.2):
            out['source' if best >= 0.5 else 'other'].append(median - float(ce[k]))


def _merge_stats(problem: MultiProblem, result: CoNMFResult, split: list, distinct: list) -> None:
    """(IoU, overlap) of the coarse masks of factor pairs that each cover a source with IoU >= 0.5."""
    k_count = result.image_factors.shape[0]
    masks = (result.image_activations.detach().cpu() > 0.5).T.reshape(k_count, 24, 24).numpy()
    covering = [(k, word) for k in range(k_count)
                for best, word in [_covered_source(problem, result, k)] if best >= 0.5]
    for i, (k, word) in enumerate(covering):
        for other, other_word in covering[i + 1:]:
            pair = (mask_iou(masks[k], masks[other]), mask_overlap(masks[k], masks[other]))
            (split if word == other_word else distinct).append(pair)


# ----------------------------------------------------------------------------------------------------
# 3D positions
# ----------------------------------------------------------------------------------------------------
def geometry_table(draws: int = 20) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for distance in (0.5, 1.0, 2.0, 4.0):
        scale = distance / 1.2  # the box keeps its apparent size: the mask error stays comparable in pixels
        box = tuple(v * scale for v in BOX)
        exact, face = box_scene(CAMERA, box, distance, distance + 1.8)
        truth = np.array([(box[0] + box[1]) / 2, (box[2] + box[3]) / 2, distance])
        conditions = {
            'exact mask': (face, 0.0),
            'mask +3 px (wall)': (dilate(face, 3), 0.0),
            'mask -3 px': (~dilate(~face, 3), 0.0),
            'exact, 30% holes': (face, 0.3),
        }
        sigma = 0.001 + 0.0025 * distance ** 2
        for name, (mask, holes) in conditions.items():
            errors, size_errors, none = [], [], 0
            for _ in range(draws):
                depth = exact + rng.normal(0.0, sigma, exact.shape)
                depth = as_16uc1(np.clip(depth, 0.0, 60.0))
                depth[rng.random(depth.shape) < holes] = 0
                position = object_position(mask, depth, CAMERA)
                if position is None:
                    none += 1
                    continue
                errors.append(float(np.linalg.norm(position.centroid - truth)))
                size_errors.append(float(position.size[0] / (0.9 * (box[1] - box[0])) - 1))
            rows.append({'distance_m': distance, 'condition': name, 'sigma_mm': 1e3 * sigma,
                         'centroid_err_mm_median': 1e3 * statistics.median(errors),
                         'centroid_err_mm_max': 1e3 * max(errors),
                         'width_err_pct_median': 100 * statistics.median(size_errors), 'none': none})
    print('\n3D position of a box face before a wall (16UC1, noise σ = 1 mm + 0.25 % z², 20 draws)')
    print(f'{"z (m)":>5} {"σ (mm)":>6} {"mask":<18} {"centroid err median/max (mm)":>29} {"width err":>9}')
    for r in rows:
        print(f'{r["distance_m"]:>5.1f} {r["sigma_mm"]:>6.1f} {r["condition"]:<18} '
              f'{r["centroid_err_mm_median"]:>14.1f} / {r["centroid_err_mm_max"]:<12.1f} '
              f'{r["width_err_pct_median"]:>8.1f}%')
    return rows


def main() -> None:
    args = _parse()
    args.profiles = [p.strip() for p in args.profiles.split(',') if p.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {}
    if args.calibrate:
        report['calibration'] = calibrate(args)
    elif not args.skip_sounding:
        report['sounding'] = sounding_tables(args)
    if not args.skip_geometry:
        report['geometry'] = geometry_table()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
