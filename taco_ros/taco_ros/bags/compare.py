"""Window-by-window comparison of two result bags (``taco-ros bag compare``), for users' CI.

Two windows match when they share a header stamp (and occurrence). Per window: the labels of the
sounding objects, k* (the sounding factor), the sounding decision, the mask IoU (foreground, value
> 0) and the confidence. Labels, k* and the decision must be equal; the IoU and the confidence may
differ within tolerances. A window present in one bag only is a difference too.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from taco_ros.bags.results import WindowResult, read_vocabulary, read_windows
from taco_ros.bags.topics import NODE_NAME

# The node keeps times as float seconds: the same window's span may differ by a rounding error,
# a different window by a sample (62.5 us at 16 kHz) or more.
AUDIO_SPAN_TOLERANCE_NS = 10_000


@dataclass(frozen=True)
class Tolerances:
    """min_iou: smallest acceptable mask IoU; confidence: largest |confidence difference|."""

    min_iou: float = 0.99
    confidence: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f'the IoU tolerance must be in [0, 1], got {self.min_iou}')
        if not self.confidence >= 0.0:
            raise ValueError(f'the confidence tolerance must be >= 0, got {self.confidence}')


@dataclass
class WindowDifference:
    """One window of A against the same window of B (None: absent from that bag)."""

    stamp_ns: int
    a: WindowResult | None
    b: WindowResult | None
    iou: float | None = None
    confidence_delta: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Comparison:
    windows: list[WindowDifference]
    tolerances: Tolerances
    notes: list[str] = field(default_factory=list)     # bag-level differences (vocabulary)

    @property
    def differences(self) -> list[WindowDifference]:
        return [w for w in self.windows if not w.ok]

    @property
    def ok(self) -> bool:
        return bool(self.windows) and not self.differences and not self.notes


def mask_iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """IoU of the foregrounds (value > 0) of two masks; 1 when both are empty, 0 on a size change."""
    if a is None or b is None:
        return 1.0 if a is None and b is None else 0.0
    if a.shape != b.shape:
        return 0.0
    fa, fb = a > 0, b > 0
    union = int(np.count_nonzero(fa | fb))
    return 1.0 if union == 0 else int(np.count_nonzero(fa & fb)) / union


def compare_window(a: WindowResult, b: WindowResult, tolerances: Tolerances) -> WindowDifference:
    row = WindowDifference(a.stamp_ns, a, b)
    if a.labels != b.labels:
        row.problems.append(f'labels {a.labels} != {b.labels}')
    if a.factor_index != b.factor_index:
        row.problems.append(f'k* {a.factor_index} != {b.factor_index}')
    if a.sounding != b.sounding:
        row.problems.append(f'sounding {a.sounding} != {b.sounding}')
    if (abs(a.audio_start_ns - b.audio_start_ns) > AUDIO_SPAN_TOLERANCE_NS
            or abs(a.audio_end_ns - b.audio_end_ns) > AUDIO_SPAN_TOLERANCE_NS):
        row.problems.append('audio window differs')
    if a.mask is not None and b.mask is not None and a.mask.shape != b.mask.shape:
        row.problems.append(f'mask size {a.mask.shape} != {b.mask.shape}')
    row.iou = mask_iou(a.mask, b.mask)
    if row.iou < tolerances.min_iou:
        row.problems.append(f'mask IoU {row.iou:.4f} < {tolerances.min_iou}')
    row.confidence_delta = abs(a.confidence - b.confidence)
    if not row.confidence_delta <= tolerances.confidence:      # NaN counts as a difference
        row.problems.append(f'confidence {a.confidence:.6f} vs {b.confidence:.6f}')
    return row


def compare_results(a: list[WindowResult], b: list[WindowResult],
                    tolerances: Tolerances | None = None) -> Comparison:
    tolerances = tolerances or Tolerances()
    keyed_a, keyed_b = _keyed(a), _keyed(b)
    rows = []
    for key in sorted(set(keyed_a) | set(keyed_b)):
        wa, wb = keyed_a.get(key), keyed_b.get(key)
        if wa is not None and wb is not None:
            rows.append(compare_window(wa, wb, tolerances))
        else:
            rows.append(WindowDifference(key[0], wa, wb,
                                         problems=['only in A' if wb is None else 'only in B']))
    return Comparison(rows, tolerances)


def _keyed(windows: list[WindowResult]) -> dict[tuple[int, int], WindowResult]:
    keyed: dict[tuple[int, int], WindowResult] = {}
    seen: Counter[int] = Counter()
    for window in windows:
        keyed[(window.stamp_ns, seen[window.stamp_ns])] = window
        seen[window.stamp_ns] += 1
    return keyed


def compare_bags(path_a: str | os.PathLike, path_b: str | os.PathLike,
                 tolerances: Tolerances | None = None, node_name: str = NODE_NAME) -> Comparison:
    """Compare the results of two bags (see the module docstring)."""
    comparison = compare_results(read_windows(path_a, node_name), read_windows(path_b, node_name),
                                 tolerances)
    vocab_a, vocab_b = read_vocabulary(path_a, node_name), read_vocabulary(path_b, node_name)
    if vocab_a != vocab_b:
        comparison.notes.append(f'label_info differs: {len(vocab_a)} vocabulary message(s) in A, '
                                f'{len(vocab_b)} in B, or their words differ')
    return comparison


def format_comparison(comparison: Comparison, max_rows: int = 50) -> str:
    """The differing windows (up to ``max_rows``) and a one-line verdict."""
    rows = comparison.windows
    origin = rows[0].stamp_ns if rows else 0
    lines = []
    for row in comparison.differences[:max_rows]:
        lines.append(f'  t={(row.stamp_ns - origin) / 1e9:8.3f} s  ' + '; '.join(row.problems))
    hidden = len(comparison.differences) - max_rows
    if hidden > 0:
        lines.append(f'  ... and {hidden} more')
    lines += [f'  {note}' for note in comparison.notes]
    ious = [r.iou for r in rows if r.iou is not None]
    deltas = [r.confidence_delta for r in rows if r.confidence_delta is not None]
    tol = comparison.tolerances
    stats = (f'min IoU {min(ious):.4f}, max |confidence diff| {max(deltas):.2e}' if ious
             else 'no window in both bags')
    if comparison.ok:
        verdict = f'SAME: {len(rows)} windows agree within tolerances ({stats})'
    elif not rows:
        verdict = 'DIFFERENT: neither bag holds a window'
    else:
        verdict = (f'DIFFERENT: {len(comparison.differences)} of {len(rows)} windows differ beyond '
                   f'tolerances (IoU >= {tol.min_iou}, |confidence diff| <= {tol.confidence}); '
                   f'{stats}')
    return '\n'.join([*lines, verdict])
