"""The metrics TACO reports (method.md §7.1), plus the numbers a deployed node cares about.

Paper metrics, reproduced with the same conventions as the authors' evaluation code:

* AVSBench (S4, MS3): per-image Jaccard with the *empty-mask rule* (an image without a sounding object
  scores the fraction of pixels predicted as background), averaged over images, at 19 thresholds
  0.05…0.95 applied as ``score > t``; the reported mIoU is the best of the 19 dataset-level means.
  F-measure with β² = 0.3 over 255 thresholds ``linspace(0, 1 - 1e-10)`` applied as ``score >= t``,
  on images with a non-empty mask only, curve averaged over images, best threshold kept.
* ADE-SP: images grouped by ADE class; per class the IoU is *pooled* (Σ intersections / Σ unions) at
  20 thresholds spanning the class's own score range, best kept; AP over all pixels of the class.
  Both averaged over classes.
* AVSS / ADE-SP-semantic: :class:`SemanticMeter`, per-class IoU and F (β² = 0.3) accumulated over images
  and averaged over the classes that occur.

Deployable numbers: :class:`FixedMaskIoU` scores the node's own binary mask (fixed threshold, no oracle) with
the same empty-mask rule, and :class:`NegativeAudioMeter` counts how often the node stays silent when the
audio comes from another video.

All scores are returned in percent, like the paper's tables. Thresholds are compared in float32, as the
authors' torch code does, so results match theirs to float rounding.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

AVSBENCH_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
F_BETA2 = 0.3
F_STEPS = 255
ADE_IOU_STEPS = 20
# Added to the union in the AVSBench per-image IoU (authors' value).
IOU_EPS = 1e-7
# Added to the union in the semantic meter (authors' value, float64 machine epsilon).
SEMANTIC_EPS = 2.220446049250313e-16


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------

def _score_map(score: np.ndarray, name: str = 'score') -> np.ndarray:
    array = np.asarray(score)
    if array.ndim != 2:
        raise ValueError(f'{name} must be a 2-D map [H, W], got shape {array.shape}')
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise ValueError(f'{name} must be numeric, got dtype {array.dtype}')
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f'{name} contains NaN or infinite values')
    return array


def _binary_mask(mask: np.ndarray, shape: tuple[int, ...] | None = None,
                 name: str = 'ground truth') -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f'{name} must be a 2-D mask [H, W], got shape {array.shape}')
    if shape is not None and array.shape != shape:
        raise ValueError(f'{name} has shape {array.shape}, the prediction has shape {shape}')
    if array.dtype != bool:
        values = np.unique(array)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f'{name} must be binary (0/1 or bool), found values {values[:8].tolist()}')
        array = array.astype(bool)
    return array


def fmeasure_thresholds(steps: int = F_STEPS) -> np.ndarray:
    """The 255 precision-recall thresholds ``linspace(0, 1 - 1e-10)`` as float32 (the last one is 1.0)."""
    if steps < 2:
        raise ValueError(f'steps must be at least 2, got {steps}')
    import torch

    # torch.linspace in float32, like the authors, so threshold values match bit for bit.
    return torch.linspace(0, 1 - 1e-10, steps).numpy()


def _count_greater(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of values strictly greater than each threshold (``values`` sorted ascending)."""
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side='right')


def _count_greater_equal(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side='left')


# --------------------------------------------------------------------------------------------------
# AVSBench
# --------------------------------------------------------------------------------------------------

def binary_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """AVSBench per-image IoU of two binary masks, in [0, 1].

    Empty-mask rule: when ``target`` has no foreground, the score is the fraction of true-negative pixels
    (intersection = TN, union = all pixels), so a silent prediction on a silent frame scores 1.
    """
    target = _binary_mask(target)
    prediction = _binary_mask(prediction, target.shape, name='prediction')
    if not target.any():
        return float(np.count_nonzero(~prediction)) / (target.size + IOU_EPS)
    inter = np.count_nonzero(prediction & target)
    union = np.count_nonzero(prediction | target)
    return inter / (union + IOU_EPS)


def iou_curve(score: np.ndarray, target: np.ndarray,
              thresholds: tuple[float, ...] | np.ndarray = AVSBENCH_THRESHOLDS) -> np.ndarray:
    """Per-image IoU of ``score > t`` against ``target`` for every threshold t (empty-mask rule)."""
    score = _score_map(score)
    target = _binary_mask(target, score.shape)
    thr = np.asarray(thresholds, dtype=np.float32)
    n_pixels = score.size
    predicted = _count_greater(np.sort(score, axis=None), thr)
    positives = np.sort(score[target])
    if positives.size == 0:
        inter = n_pixels - predicted
        union = np.full(thr.shape, n_pixels)
    else:
        inter = _count_greater(positives, thr)
        union = predicted + positives.size - inter
    return inter / (union + IOU_EPS)


def fmeasure_curve(score: np.ndarray, target: np.ndarray, steps: int = F_STEPS,
                   beta2: float = F_BETA2) -> np.ndarray | None:
    """F_β curve of ``score >= t`` over :func:`fmeasure_thresholds`; ``None`` when ``target`` is empty.

    F = (1 + β²)·P·R / (β²·P + R); 0/0 (no predicted and no true positive pixel) counts as 0.
    """
    score = _score_map(score)
    target = _binary_mask(target, score.shape)
    n_true = int(np.count_nonzero(target))
    if n_true == 0:
        return None
    thr = fmeasure_thresholds(steps)
    predicted = _count_greater_equal(np.sort(score, axis=None), thr).astype(np.float64)
    hits = _count_greater_equal(np.sort(score[target]), thr).astype(np.float64)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = hits / n_true
    denominator = beta2 * precision + recall
    return np.divide((1 + beta2) * precision * recall, denominator,
                     out=np.zeros_like(hits), where=denominator > 0)


class AVSBenchMeter:
    """Accumulates the AVSBench mIoU (max over thresholds) and F-measure over a set of images."""

    def __init__(self, thresholds: tuple[float, ...] = AVSBENCH_THRESHOLDS, steps: int = F_STEPS,
                 beta2: float = F_BETA2) -> None:
        if len(thresholds) == 0:
            raise ValueError('at least one IoU threshold is needed')
        self.thresholds = tuple(float(t) for t in thresholds)
        self.steps = steps
        self.beta2 = beta2
        self._iou_sum = np.zeros(len(self.thresholds))
        self._f_sum = np.zeros(steps)
        self.images = 0
        self.images_with_object = 0

    def update(self, score: np.ndarray, target: np.ndarray) -> None:
        """Add one image: ``score`` a soft map [H, W], ``target`` its binary mask [H, W]."""
        self._iou_sum += iou_curve(score, target, self.thresholds)
        self.images += 1
        curve = fmeasure_curve(score, target, self.steps, self.beta2)
        if curve is not None:
            self._f_sum += curve
            self.images_with_object += 1

    def iou_by_threshold(self) -> np.ndarray:
        """Dataset mean IoU (fraction) at each threshold of :attr:`thresholds`."""
        if self.images == 0:
            raise ValueError('no image was added to the meter')
        return self._iou_sum / self.images

    def fmeasure_by_threshold(self) -> np.ndarray | None:
        if self.images_with_object == 0:
            return None
        return self._f_sum / self.images_with_object

    def result(self) -> dict[str, float | int | None]:
        """``miou`` and ``fscore`` in percent (oracle best thresholds), ``best_threshold`` for mIoU."""
        ious = self.iou_by_threshold()
        best = int(np.argmax(ious))
        f_curve = self.fmeasure_by_threshold()
        return {
            'miou': float(ious[best]) * 100,
            'fscore': None if f_curve is None else float(f_curve.max()) * 100,
            'best_threshold': self.thresholds[best],
            'images': self.images,
            'images_with_object': self.images_with_object,
        }


# --------------------------------------------------------------------------------------------------
# Deployable numbers
# --------------------------------------------------------------------------------------------------

class FixedMaskIoU:
    """Mean per-image IoU of the node's own binary masks (one fixed threshold, no oracle sweep)."""

    def __init__(self) -> None:
        self._sum = 0.0
        self.images = 0

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        self._sum += binary_iou(np.asarray(prediction) > 0, target)
        self.images += 1

    def result(self) -> dict[str, float | int]:
        if self.images == 0:
            raise ValueError('no image was added to the meter')
        return {'miou_fixed': self._sum / self.images * 100, 'images': self.images}


class NegativeAudioMeter:
    """Share of frames, played with audio from another video, for which the node outputs nothing."""

    def __init__(self) -> None:
        self.empty = 0
        self.frames = 0

    def update(self, prediction: np.ndarray) -> None:
        self.empty += int(not np.any(np.asarray(prediction)))
        self.frames += 1

    def result(self) -> dict[str, float | int]:
        if self.frames == 0:
            raise ValueError('no frame was added to the meter')
        return {'negative_empty_rate': self.empty / self.frames * 100, 'negative_frames': self.frames}


# --------------------------------------------------------------------------------------------------
# ADE-SP binary detection
# --------------------------------------------------------------------------------------------------

def pooled_iou_curve(scores: np.ndarray, targets: np.ndarray,
                     steps: int = ADE_IOU_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """IoU pooled over a set of images at ``steps`` thresholds ``linspace(min, max)`` of the scores.

    Returns (thresholds, iou per threshold). A threshold whose union is empty scores 0.
    """
    import torch

    scores = np.asarray(scores, dtype=np.float32)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 3:
        raise ValueError(f'scores and targets must both be [N, H, W]; got {scores.shape} and {targets.shape}')
    truth = targets > 0.5
    thr = torch.linspace(float(scores.min()), float(scores.max()), steps).numpy()
    predicted = _count_greater(np.sort(scores, axis=None), thr)
    inter = _count_greater(np.sort(scores[truth]), thr)
    union = predicted + int(np.count_nonzero(truth)) - inter
    ious = np.where(union == 0, 0.0, inter / np.maximum(union, 1))
    return thr, ious


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary average precision AP = Σ_n (R_n − R_{n−1})·P_n over the distinct score values (step rule).

    Matches ``torchmetrics.functional.classification.binary_average_precision`` with ``thresholds=None``,
    including its rule that scores outside [0, 1] are logits and go through a sigmoid first (which only
    matters through float32 ties, AP depending on the ranking alone).

    No positive label: 0.0. torchmetrics 1.4.1 (the version TACO pins) warns that recall is undefined, sets
    it to 1 at every threshold and so returns the precision at the highest threshold, which is 0 without a
    positive. TACO averages that 0 into its class mean.
    """
    scores = np.asarray(scores, dtype=np.float32).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f'{scores.size} scores for {labels.size} labels')
    if not np.all(np.isin(np.unique(labels), (0, 1))):
        raise ValueError('labels must be 0/1')
    if scores.size == 0:
        raise ValueError('average_precision needs at least one score')
    if scores.min() < 0 or scores.max() > 1:
        import torch

        scores = torch.sigmoid(torch.from_numpy(scores)).numpy()
    labels = labels.astype(bool)
    n_positive = int(np.count_nonzero(labels))
    if n_positive == 0:
        return 0.0
    order = np.argsort(-scores, kind='stable')
    ranked = scores[order]
    hits = np.cumsum(labels[order])
    # Last index of each run of equal scores: the curve only has a point where the score changes.
    ends = np.append(np.nonzero(np.diff(ranked))[0], ranked.size - 1)
    tp = hits[ends].astype(np.float64)
    precision = tp / (ends + 1)
    recall = tp / n_positive
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


@dataclass
class ClassScore:
    class_id: int
    images: int
    iou: float        # best pooled IoU, fraction
    ap: float         # fraction, 0 without positive pixels (torchmetrics 1.4.1, as TACO)
    positives: int    # positive pixels pooled over the class's images
    iou_curve: np.ndarray


class ADEDetectionMeter:
    """ADE-SP binary metrics: per-class pooled best-threshold IoU and AP, averaged over classes.

    Keeps every score map (float32) until :meth:`result`, as the thresholds depend on each class's whole
    score range: about 200 kB per 224×224 image.
    """

    def __init__(self, steps: int = ADE_IOU_STEPS) -> None:
        self.steps = steps
        self._scores: dict[int, list[np.ndarray]] = defaultdict(list)
        self._targets: dict[int, list[np.ndarray]] = defaultdict(list)
        self._per_class: list[ClassScore] | None = None   # cached until the next update

    @property
    def images(self) -> int:
        return sum(len(v) for v in self._scores.values())

    def update(self, score: np.ndarray, target: np.ndarray, class_id: int) -> None:
        score = _score_map(score)
        self._scores[int(class_id)].append(score)
        self._targets[int(class_id)].append(_binary_mask(target, score.shape))
        self._per_class = None

    def per_class(self) -> list[ClassScore]:
        if self._per_class is not None:
            return self._per_class
        out = []
        for class_id in sorted(self._scores):
            scores = np.stack(self._scores[class_id])
            targets = np.stack(self._targets[class_id])
            _, curve = pooled_iou_curve(scores, targets, self.steps)
            out.append(ClassScore(class_id, len(scores), float(curve.max()),
                                  average_precision(scores, targets), int(np.count_nonzero(targets)), curve))
        self._per_class = out
        return out

    def result(self) -> dict[str, float | int | None]:
        """``miou`` and ``map`` in percent.

        Every class enters both means, as in the authors' code. A class whose pooled ground truth has no
        positive pixel scores AP = 0 (see :func:`average_precision`) and pulls ``map`` down; how many
        such classes there were is reported in ``classes_without_positives``.
        """
        classes = self.per_class()
        if not classes:
            raise ValueError('no image was added to the meter')
        return {
            'miou': float(np.mean([c.iou for c in classes])) * 100,
            'map': float(np.mean([c.ap for c in classes])) * 100,
            'classes': len(classes),
            'classes_without_positives': sum(1 for c in classes if c.positives == 0),
            'images': self.images,
        }

    def mean_iou_by_step(self) -> np.ndarray:
        """Class-mean pooled IoU at each of the ``steps`` relative thresholds (0 = class min, 1 = max)."""
        return np.mean([c.iou_curve for c in self.per_class()], axis=0)


# --------------------------------------------------------------------------------------------------
# Semantic benchmarks (AVSS, ADE-SP-semantic)
# --------------------------------------------------------------------------------------------------

def _label_map(labels: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f'{name} must be a 2-D label map [H, W], got shape {array.shape}')
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.allclose(array, rounded):
            raise ValueError(f'{name} must hold integer class indices')
        array = rounded
    return array.astype(np.int64)


class SemanticMeter:
    """Per-class IoU and F (β² = 0.3) of label maps, as the authors' histogram meter computes them.

    Label value v counts as class v for v in [0, num_classes); other values are ignored, and so are pixels
    whose target is negative. Class 0 (background on AVSS) is a class like the others. For each image and
    class: IoU = |P∩T| / |P∪T| (0 when both are empty), F = (1+β²)PR/(β²P+R) (0 when undefined); IoU and F
    are summed over images, and divided by the number of images in which the class appears in P∪T. The
    result is the mean over the classes that appeared at least once.
    """

    def __init__(self, num_classes: int, beta2: float = F_BETA2) -> None:
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.num_classes = num_classes
        self.beta2 = beta2
        self.iou_sum = np.zeros(num_classes)
        self.f_sum = np.zeros(num_classes)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.images = 0

    def _histogram(self, labels: np.ndarray) -> np.ndarray:
        inside = labels[(labels >= 0) & (labels < self.num_classes)]
        return np.bincount(inside, minlength=self.num_classes).astype(np.float64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        prediction = _label_map(prediction, 'prediction')
        target = _label_map(target, 'target')
        if prediction.shape != target.shape:
            raise ValueError(f'prediction {prediction.shape} and target {target.shape} differ in shape')
        # Pixels with a negative target are ignored: their prediction is moved out of range.
        prediction = np.where(target >= 0, prediction, -1)
        intersection = np.where(prediction == target, prediction, -1)
        area_inter = self._histogram(intersection)
        area_pred = self._histogram(prediction)
        area_target = self._histogram(target)
        area_union = area_pred + area_target - area_inter
        self.iou_sum += area_inter / (SEMANTIC_EPS + area_union)
        self.counts += area_union > 0
        with np.errstate(divide='ignore', invalid='ignore'):
            precision = area_inter / area_pred
            recall = area_inter / area_target
            fscore = (1 + self.beta2) * precision * recall / (self.beta2 * precision + recall)
        self.f_sum += np.nan_to_num(fscore, nan=0.0)
        self.images += 1

    def result(self) -> dict[str, float | int | None]:
        present = self.counts > 0
        if not present.any():
            return {'miou': None, 'fscore': None, 'classes_present': 0, 'images': self.images}
        return {
            'miou': float(np.mean(self.iou_sum[present] / self.counts[present])) * 100,
            'fscore': float(np.mean(self.f_sum[present] / self.counts[present])) * 100,
            'classes_present': int(present.sum()),
            'images': self.images,
        }
