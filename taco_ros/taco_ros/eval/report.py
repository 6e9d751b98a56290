"""Evaluation reports: mean ± std over runs, the paper's reference numbers, JSON, a terminal table, PNG plots.

The summary is a plain JSON-able dict (see :func:`build_summary`), so the same numbers feed the file, the
table and the plots.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

# method.md §7.3 (taco/expected_results.yaml): mean and std over 3 runs, percent.
PAPER_REFERENCE: dict[str, dict[str, tuple[float, float]]] = {
    's4': {'miou': (64.04, 0.25), 'fscore': (71.50, 0.20), 'miou_u': (29.68, 0.16),
           'fscore_u': (41.91, 0.09)},
    'ms3': {'miou': (43.15, 0.91), 'fscore': (47.5, 0.95), 'miou_u': (25.88, 0.91),
            'fscore_u': (30.72, 0.95)},
    'ade_sp': {'miou': (51.57, 0.86), 'map': (60.01, 1.38), 'miou_u': (27.74, 0.48),
               'map_u': (35.75, 0.33)},
    'avss': {'miou': (20.50, 0.10), 'fscore': (23.02, 0.09)},
    'ade_sp_semantic': {'miou': (37.70, 1.61), 'fscore': (44.39, 1.92)},
}
# Metrics shown first in the table, in this order; the rest follow alphabetically.
METRIC_ORDER = ('miou', 'fscore', 'map', 'miou_u', 'fscore_u', 'map_u', 'miou_fixed', 'miou_fixed_u',
                'negative_empty_rate')
METRIC_LABELS = {
    'miou': 'mIoU (best threshold)', 'fscore': 'F-score β²=0.3', 'map': 'mAP',
    'miou_u': 'mIoU coarse map', 'fscore_u': 'F-score coarse map', 'map_u': 'mAP coarse map',
    'miou_fixed': 'mIoU at node threshold', 'miou_fixed_u': 'mIoU at node threshold (coarse)',
    'negative_empty_rate': 'empty with swapped audio %',
}


def summarize_runs(runs: list[dict[str, float | None]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population std (``np.std``, as the authors report) of every metric over the runs.

    A metric missing or ``None`` in some run is summarised over the runs that have it.
    """
    if not runs:
        raise ValueError('no run to summarise')
    keys = list(dict.fromkeys(k for run in runs for k in run))
    mean, std = {}, {}
    for key in keys:
        values = [float(run[key]) for run in runs if run.get(key) is not None]
        if values:
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values))
    return mean, std


def reference_check(benchmark: str, mean: dict[str, float]) -> dict[str, dict[str, float | bool]]:
    """Per paper metric: reference mean/std and whether |ours − ref| ≤ max(2·std_ref, 1) (authors' rule)."""
    out = {}
    for key, (ref_mean, ref_std) in PAPER_REFERENCE.get(benchmark, {}).items():
        if key not in mean:
            continue
        delta = mean[key] - ref_mean
        out[key] = {'reference': ref_mean, 'reference_std': ref_std, 'delta': delta,
                    'within_tolerance': abs(delta) <= max(2 * ref_std, 1.0)}
    return out


def timing_summary(timings: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per stage (milliseconds): mean, std, median, 90th percentile and the number of calls."""
    out = {}
    for stage, values in timings.items():
        if not values:
            continue
        array = np.asarray(values, dtype=np.float64)
        out[stage] = {'mean': float(array.mean()), 'std': float(array.std()),
                      'median': float(np.median(array)), 'p90': float(np.percentile(array, 90)),
                      'count': int(array.size)}
    return out


def build_summary(*, benchmark: str, mode: str, runs: list[dict[str, float | None]],
                  settings: dict, samples: int, random_weights: bool,
                  curves: dict | None = None, timings: dict[str, list[float]] | None = None,
                  notes: list[str] | None = None) -> dict:
    """The JSON summary: settings, per-run metrics, mean ± std, paper reference check, curves, timings."""
    mean, std = summarize_runs(runs)
    return {
        'benchmark': benchmark,
        'mode': mode,
        'samples': samples,
        'random_weights': random_weights,
        'settings': settings,
        'runs': runs,
        'mean': mean,
        'std': std,
        # Random-weight numbers, or the A-FC-CLIP baseline, are not what the paper's TACO values measure.
        'reference': {} if random_weights or mode == 'baseline' else reference_check(benchmark, mean),
        'curves': curves or {},
        'timings_ms': timing_summary(timings or {}),
        'notes': notes or [],
    }


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, summary: dict) -> Path:
    """Write the summary atomically (temp file + rename), NaN as null; returns the path."""
    destination = Path(path).expanduser()
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + '.tmp')
    temporary.write_text(json.dumps(_json_ready(summary), indent=2, allow_nan=False) + '\n')
    os.replace(temporary, destination)
    return destination


def _ordered_metrics(mean: dict[str, float]) -> list[str]:
    first = [k for k in METRIC_ORDER if k in mean]
    return first + sorted(k for k in mean if k not in first)


def format_table(summary: dict) -> str:
    """A fixed-width table: metric, mean ± std over the runs, and the paper's value when there is one."""
    mean, std = summary['mean'], summary['std']
    reference = summary.get('reference', {})
    runs = len(summary['runs'])
    header = (f'{summary["benchmark"]} · mode {summary["mode"]} · {summary["samples"]} samples · '
              f'{runs} run{"s" if runs != 1 else ""}')
    lines = [header]
    if summary.get('random_weights'):
        lines.append('RANDOM WEIGHTS: these numbers measure the code path only, not TACO.')
    rows = [('metric', f'mean ± std (n={runs})', 'paper', 'Δ')]
    for key in _ordered_metrics(mean):
        if key in ('images', 'images_with_object', 'classes', 'classes_present', 'negative_frames'):
            continue
        ref = reference.get(key)
        paper = f'{ref["reference"]:.2f} ± {ref["reference_std"]:.2f}' if ref else ''
        delta = f'{ref["delta"]:+.2f}{"" if ref["within_tolerance"] else " !"}' if ref else ''
        rows.append((METRIC_LABELS.get(key, key), f'{mean[key]:.2f} ± {std[key]:.2f}', paper, delta))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for index, row in enumerate(rows):
        lines.append('  '.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append('  '.join('-' * width for width in widths))
    timings = summary.get('timings_ms', {})
    if timings:
        lines.append('')
        lines.append('time per stage (ms): ' + ', '.join(
            f'{stage} {t["mean"]:.1f}' for stage, t in timings.items()))
    if any(ref and not ref['within_tolerance'] for ref in reference.values()):
        lines.append('! outside max(2·std, 1.0) of the paper value')
    lines.extend(f'note: {note}' for note in summary.get('notes', []))
    return '\n'.join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')   # files only: no display on robots and CI machines
    import matplotlib.pyplot as plt

    return plt


def plot_iou_curve(summary: dict, path: str | Path) -> Path | None:
    """Mean IoU against the threshold (the paper's sweep; the best point is the reported mIoU).

    Returns None when the benchmark has no threshold curve (semantic benchmarks).
    """
    curves = {k: v for k, v in summary.get('curves', {}).items() if 'iou' in v}
    if not curves:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        x = np.asarray(curve['thresholds'])
        y = np.asarray(curve['iou']) * 100
        axis.plot(x, y, marker='o', markersize=3, label=name)
        best = int(np.argmax(y))
        axis.annotate(f'{y[best]:.1f}', (x[best], y[best]), textcoords='offset points', xytext=(0, 6),
                      ha='center', fontsize=8)
    first = next(iter(curves.values()))
    axis.set_xlabel(first.get('x_label', 'threshold on the min-max normalised map'))
    axis.set_ylabel('mIoU (%)')
    title = f'{summary["benchmark"]} · {summary["mode"]}'
    if summary.get('random_weights'):
        title += ' · RANDOM WEIGHTS'
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(plt, figure, path)


def _save(plt: object, figure: object, path: str | Path) -> Path:
    """Write a figure as PNG (creating its folder) and free it."""
    figure.tight_layout()
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=120)
    plt.close(figure)
    return destination


def plot_timings(summary: dict, path: str | Path) -> Path | None:
    """Mean time per pipeline stage (ms) with the standard deviation as an error bar."""
    timings = summary.get('timings_ms', {})
    if not timings:
        return None
    plt = _pyplot()
    stages = list(timings)
    means = [timings[s]['mean'] for s in stages]
    stds = [timings[s]['std'] for s in stages]
    figure, axis = plt.subplots(figsize=(6, 0.5 * len(stages) + 1.5))
    axis.barh(stages, means, xerr=stds, color='tab:blue', alpha=0.8)
    axis.invert_yaxis()
    axis.set_xlabel('milliseconds per frame (mean ± std)')
    settings = summary['settings']
    title = (f'{summary["benchmark"]} · {summary["mode"]} · {settings.get("model_config", "")} · '
             f'{settings.get("device", "")}')
    if summary.get('random_weights'):
        title += ' · RANDOM WEIGHTS'
    axis.set_title(title, fontsize=9)
    axis.grid(axis='x', alpha=0.3)
    return _save(plt, figure, path)


def write_plots(summary: dict, directory: str | Path) -> list[Path]:
    """Both plots into ``directory`` as ``<benchmark>_<mode>_iou.png`` and ``..._timing.png``."""
    directory = Path(directory).expanduser()
    stem = f'{summary["benchmark"]}_{summary["mode"]}'
    written = [plot_iou_curve(summary, directory / f'{stem}_iou.png'),
               plot_timings(summary, directory / f'{stem}_timing.png')]
    return [p for p in written if p is not None]
