"""Evaluation metrics (method.md §7.1): hand-computed cases, then random masks against plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from taco_ros.eval import metrics as m


def _square(size: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.int64)
    mask[top:top + height, left:left + width] = 1
    return mask


# ---------------------------------------------------------------- hand-computed values

def test_thresholds_are_the_paper_grids():
    assert len(m.AVSBENCH_THRESHOLDS) == 19
    assert m.AVSBENCH_THRESHOLDS[0] == 0.05 and m.AVSBENCH_THRESHOLDS[-1] == 0.95
    thresholds = m.fmeasure_thresholds()
    assert thresholds.shape == (255,) and thresholds.dtype == np.float32
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0   # 1 - 1e-10 rounds to 1 in float32


def test_iou_empty_ground_truth_counts_true_negatives():
    empty = np.zeros((4, 4), dtype=np.int64)
    assert m.binary_iou(np.zeros((4, 4), bool), empty) == pytest.approx(1.0)
    half = _square(4, 0, 0, 2, 4).astype(bool)
    assert m.binary_iou(half, empty) == pytest.approx(0.5)
    assert m.binary_iou(np.ones((4, 4), bool), empty) == pytest.approx(0.0)


def test_iou_perfect_half_and_disjoint():
    target = _square(4, 0, 0, 4, 2)                                   # left half, 8 px
    assert m.binary_iou(target.astype(bool), target) == pytest.approx(1.0)
    assert m.binary_iou(_square(4, 0, 0, 2, 2).astype(bool), target) == pytest.approx(0.5)
    assert m.binary_iou(_square(4, 0, 0, 2, 4).astype(bool), target) == pytest.approx(4 / 12)
    assert m.binary_iou(_square(4, 0, 2, 4, 2).astype(bool), target) == pytest.approx(0.0)


def test_fmeasure_beta2_is_0_3():
    target = _square(4, 0, 0, 2, 2)                                   # 4 px
    score = np.zeros((4, 4), np.float32)
    score[:2, :4] = 1.0                                               # 4 true + 4 false positives
    curve = m.fmeasure_curve(score, target)
    # P = 0.5, R = 1 at every threshold above 0: F = 1.3·0.5 / (0.3·0.5 + 1) = 0.65 / 1.15.
    assert curve[1:] == pytest.approx(0.65 / 1.15)
    # At threshold 0 every pixel is predicted: P = 0.25, F = 1.3·0.25 / 1.075.
    assert curve[0] == pytest.approx(0.325 / 1.075)
    assert m.fmeasure_curve(score, np.zeros((4, 4), int)) is None


def test_fmeasure_zero_when_nothing_found():
    target = _square(4, 0, 0, 1, 1)
    score = np.zeros((4, 4), np.float32)
    score[3, 3] = 1.0
    curve = m.fmeasure_curve(score, target)
    assert curve[1:] == pytest.approx(0.0)
    assert np.isfinite(curve).all()


def test_avsbench_meter_takes_the_best_threshold():
    target = _square(4, 0, 0, 1, 1)
    score = np.full((4, 4), 0.2, np.float32)
    score[0, 0] = 0.7
    meter = m.AVSBenchMeter()
    meter.update(score, target)
    result = meter.result()
    assert result['miou'] == pytest.approx(100.0, abs=1e-4)
    # Strict '>': at 0.2 the 0.2 pixels are not foreground, so 0.2 is the first perfect threshold.
    assert result['best_threshold'] == 0.2
    assert meter.iou_by_threshold()[0] == pytest.approx(1 / 16)        # 0.05: everything predicted
    assert result['fscore'] == pytest.approx(100.0, abs=1e-4)


def test_avsbench_meter_averages_images_and_skips_empty_ones_for_f():
    meter = m.AVSBenchMeter(thresholds=(0.5,))
    perfect = _square(4, 0, 0, 2, 2)
    meter.update(perfect.astype(np.float32), perfect)                  # IoU 1
    meter.update(np.ones((4, 4), np.float32), np.zeros((4, 4), int))   # empty GT, all predicted: 0
    result = meter.result()
    assert result['miou'] == pytest.approx(50.0, abs=1e-4)
    assert result['images'] == 2 and result['images_with_object'] == 1
    assert result['fscore'] == pytest.approx(100.0, abs=1e-4)


def test_fixed_mask_iou_and_negative_rate():
    iou = m.FixedMaskIoU()
    target = _square(4, 0, 0, 4, 2)
    iou.update(_square(4, 0, 0, 2, 2) * 3, target)                    # label values > 0 are foreground
    iou.update(np.zeros((4, 4), np.uint8), np.zeros((4, 4), int))
    assert iou.result()['miou_fixed'] == pytest.approx(75.0, abs=1e-4)
    negative = m.NegativeAudioMeter()
    for mask in (np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))):
        negative.update(mask)
    assert negative.result() == {'negative_empty_rate': 75.0, 'negative_frames': 4}


def test_average_precision_documented_example():
    # torchmetrics' documented example: preds [0, .5, .7, .8], target [0, 1, 1, 0] → 0.5833.
    ap = m.average_precision(np.array([0, 0.5, 0.7, 0.8]), np.array([0, 1, 1, 0]))
    assert ap == pytest.approx(0.583333, abs=1e-5)
    assert m.average_precision(np.array([0.9, 0.1]), np.array([1, 0])) == pytest.approx(1.0)
    assert m.average_precision(np.array([0.3, 0.1]), np.array([0, 0])) == 0.0  # torchmetrics 1.4.1


def test_average_precision_ties_form_one_point():
    # All four pixels tie: one curve point with P = 0.5, R = 1, so AP = 0.5 whatever the order.
    assert m.average_precision(np.full(4, 0.4), np.array([1, 0, 1, 0])) == pytest.approx(0.5)


def test_pooled_iou_sums_over_images():
    scores = np.zeros((2, 4, 4), np.float32)
    targets = np.zeros((2, 4, 4), np.int64)
    targets[0, :2, :2] = 1                 # 4 px
    targets[1, :, :] = 1                   # 16 px
    scores[0, :2, :2] = 1.0
    scores[1, :2, :] = 1.0                 # finds 8 of the 16
    thr, curve = m.pooled_iou_curve(scores, targets)
    assert thr[0] == 0.0 and thr[-1] == 1.0 and len(curve) == 20
    # Pooled: (4 + 8) / (4 + 16) = 0.6, not the mean of per-image IoUs (0.75).
    assert curve[:-1] == pytest.approx(0.6)
    assert curve[-1] == 0.0                # '> max' selects nothing


def test_ade_meter_averages_classes():
    meter = m.ADEDetectionMeter()
    target = _square(4, 0, 0, 2, 2)
    meter.update(target.astype(np.float32), target, class_id=7)        # perfect
    score = np.zeros((4, 4), np.float32)
    score[2:, 2:] = 1.0
    meter.update(score, target, class_id=9)                            # all wrong
    result = meter.result()
    assert result['classes'] == 2 and result['images'] == 2
    # Class 9: even the lowest threshold (the class minimum, 0) keeps only the wrong pixels ('>'): IoU 0.
    assert result['miou'] == pytest.approx((1.0 + 0.0) / 2 * 100)
    # Class 9 AP: the 4 wrong pixels rank first (P = 0 until R rises), then all 16 tie: P = 4/16.
    assert result['map'] == pytest.approx((1.0 + 0.25) / 2 * 100)


def torchmetrics_141_binary_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """torchmetrics 1.4.1's exact-threshold binary AP, restated step by step (no torchmetrics here).

    Its curve: one point per distinct score, highest first, with cumulative true and false positives;
    precision = tp / (tp + fp), recall = tp / (total positives). Without any positive, recall is declared
    undefined and set to 1 at every threshold. The points are reversed and closed with (precision 1,
    recall 0); AP = −Σ (recall[i+1] − recall[i]) · precision[i] over that reversed list.
    """
    order = np.argsort(-scores, kind='stable')
    ranked, hits = scores[order], labels[order].astype(np.float64)
    ends = np.append(np.nonzero(np.diff(ranked))[0], ranked.size - 1)
    tps = np.cumsum(hits)[ends]
    fps = (ends + 1) - tps
    precision = tps / (tps + fps)
    recall = np.ones_like(tps) if tps[-1] == 0 else tps / tps[-1]
    precision = np.append(precision[::-1], 1.0)
    recall = np.append(recall[::-1], 0.0)
    return float(-np.sum((recall[1:] - recall[:-1]) * precision[:-1]))


def test_ade_class_without_positive_pixels_scores_ap_zero_and_is_averaged_in():
    # TACO averages torchmetrics' per-class AP over every class; with no positive pixel that AP is 0.
    rng = np.random.default_rng(6)
    meter = m.ADEDetectionMeter()
    with_object = _square(6, 1, 1, 3, 3)
    scores_a = [rng.random((6, 6)).astype(np.float32) for _ in range(2)]
    for score in scores_a:
        meter.update(score, with_object, class_id=3)
    empty = np.zeros((6, 6), np.int64)
    scores_b = [rng.random((6, 6)).astype(np.float32) for _ in range(2)]
    for score in scores_b:
        meter.update(score, empty, class_id=5)                       # pooled GT of class 5: no positive
    ap_a = torchmetrics_141_binary_ap(np.concatenate([s.ravel() for s in scores_a]),
                                      np.concatenate([with_object.ravel()] * 2))
    ap_b = torchmetrics_141_binary_ap(np.concatenate([s.ravel() for s in scores_b]),
                                      np.zeros(72, np.int64))
    assert ap_b == 0.0
    result = meter.result()
    assert result['map'] == pytest.approx((ap_a + ap_b) / 2 * 100)    # both classes in the mean
    assert result['classes'] == 2 and result['classes_without_positives'] == 1
    assert [c.ap for c in meter.per_class()] == [pytest.approx(ap_a), 0.0]


def test_average_precision_matches_the_torchmetrics_transcription():
    rng = np.random.default_rng(7)
    for positives in (0.0, 0.05, 0.5):
        scores = np.round(rng.random(300), 2).astype(np.float32)   # ties
        labels = (rng.random(300) < positives).astype(int)
        assert m.average_precision(scores, labels) == pytest.approx(
            torchmetrics_141_binary_ap(scores, labels), abs=1e-12)


def test_semantic_meter_perfect_and_partial():
    meter = m.SemanticMeter(num_classes=5)
    labels = np.full((4, 4), 3)
    meter.update(labels, labels)
    assert meter.result()['miou'] == pytest.approx(100.0)
    assert meter.result()['fscore'] == pytest.approx(100.0)

    meter = m.SemanticMeter(num_classes=3)
    target = np.zeros((4, 4), np.int64)
    target[:, :2] = 2                       # class 2 on the left half, background on the right
    prediction = np.zeros((4, 4), np.int64)
    prediction[:2, :] = 2                   # class 2 on the top half
    meter.update(prediction, target)
    # Class 2: inter 4, union 12 → 1/3; class 0 (background counts): inter 4, union 12 → 1/3.
    # F: P = R = 0.5 for both → F = 0.5.
    result = meter.result()
    assert result['classes_present'] == 2
    assert result['miou'] == pytest.approx(100 / 3)
    assert result['fscore'] == pytest.approx(50.0)


def test_semantic_meter_ignores_out_of_range_labels():
    # The authors' histogram covers labels 0..num_classes-1 only; larger ones are dropped.
    meter = m.SemanticMeter(num_classes=2)
    labels = np.full((2, 2), 2)
    meter.update(labels, labels)
    assert meter.result()['classes_present'] == 0 and meter.result()['miou'] is None


@pytest.mark.parametrize('bad', [np.zeros((4,)), np.zeros((2, 2, 2))])
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError, match='2-D'):
        m.binary_iou(bad, np.zeros((4, 4)))
    with pytest.raises(ValueError):
        m.AVSBenchMeter().update(bad, np.zeros((4, 4)))


def test_non_binary_ground_truth_raises():
    with pytest.raises(ValueError, match='binary'):
        m.iou_curve(np.zeros((2, 2)), np.full((2, 2), 2))
    with pytest.raises(ValueError, match='NaN'):
        m.iou_curve(np.full((2, 2), np.nan), np.zeros((2, 2)))


# ---------------------------------------------------------------- against plain loops on random data

def _loop_iou(score, target, thr):
    pred = score > np.float32(thr)
    if target.sum() == 0:
        return (~pred).sum() / (target.size + 1e-7)
    return (pred & target).sum() / ((pred | target).sum() + 1e-7)


def _loop_fmeasure(score, target, thresholds):
    out = []
    for t in thresholds:
        pred = score >= t
        tp = float((pred & target).sum())
        p = tp / (pred.sum() + 1e-20)
        r = tp / (target.sum() + 1e-20)
        f = 1.3 * p * r / (0.3 * p + r) if (0.3 * p + r) > 0 else 0.0
        out.append(f)
    return np.array(out)


def _random_case(rng, size=24):
    score = rng.random((size, size)).astype(np.float32)
    score[rng.random((size, size)) < 0.2] = 0.5          # ties on a threshold
    target = np.zeros((size, size), bool)
    if rng.random() < 0.8:
        top, left = rng.integers(0, size // 2, 2)
        target[top:top + rng.integers(1, size // 2), left:left + rng.integers(1, size // 2)] = True
    return score, target


def test_avsbench_metrics_match_loops_on_random_masks():
    rng = np.random.default_rng(1)
    thresholds = m.fmeasure_thresholds()
    meter = m.AVSBenchMeter()
    ious, fs = [], []
    for _ in range(30):
        score, target = _random_case(rng)
        meter.update(score, target)
        ious.append([_loop_iou(score, target, t) for t in m.AVSBENCH_THRESHOLDS])
        if target.any():
            fs.append(_loop_fmeasure(score, target, thresholds))
            assert m.fmeasure_curve(score, target) == pytest.approx(fs[-1], abs=1e-12)
    expected_iou = np.mean(ious, axis=0)
    np.testing.assert_allclose(meter.iou_by_threshold(), expected_iou, atol=1e-12)
    result = meter.result()
    assert result['miou'] == pytest.approx(expected_iou.max() * 100)
    assert result['fscore'] == pytest.approx(np.mean(fs, axis=0).max() * 100)


def test_pooled_iou_matches_loop_on_random_masks():
    rng = np.random.default_rng(2)
    cases = [_random_case(rng, 16) for _ in range(5)]
    scores = np.stack([c[0] for c in cases]) * 3 - 1      # range outside [0, 1] on purpose
    targets = np.stack([c[1] for c in cases])
    thr, curve = m.pooled_iou_curve(scores, targets)
    for t, value in zip(thr, curve, strict=True):
        pred = scores > t
        union = (pred | targets).sum()
        expected = (pred & targets).sum() / union if union else 0.0
        assert value == pytest.approx(expected)


def test_average_precision_matches_sklearn_on_random_scores():
    sklearn_metrics = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(3)
    for _ in range(10):
        scores = np.round(rng.random(400), 2).astype(np.float32)    # many ties
        labels = (rng.random(400) < 0.3).astype(int)
        assert m.average_precision(scores, labels) == pytest.approx(
            sklearn_metrics.average_precision_score(labels, scores), abs=1e-9)


def test_average_precision_matches_definition_loop():
    rng = np.random.default_rng(4)
    scores = rng.random(200).astype(np.float32)
    labels = (rng.random(200) < 0.4).astype(int)
    # Σ over each distinct threshold t (descending) of ΔR·P at 'score >= t'.
    previous_recall, ap = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = (pred & (labels == 1)).sum()
        recall = tp / labels.sum()
        ap += (recall - previous_recall) * tp / pred.sum()
        previous_recall = recall
    assert m.average_precision(scores, labels) == pytest.approx(ap)


def test_semantic_meter_matches_loop_on_random_maps():
    rng = np.random.default_rng(5)
    n = 6
    meter = m.SemanticMeter(n)
    iou_sum, f_sum, counts = np.zeros(n), np.zeros(n), np.zeros(n)
    for _ in range(8):
        target = rng.integers(0, n + 1, (12, 12))          # includes an out-of-range label n
        prediction = np.where(rng.random((12, 12)) < 0.6, target, rng.integers(0, n, (12, 12)))
        meter.update(prediction, target)
        for c in range(n):
            p, t = prediction == c, target == c
            inter, union = (p & t).sum(), (p | t).sum()
            if union:
                counts[c] += 1
                iou_sum[c] += inter / union
            if p.sum() and t.sum() and inter:
                precision, recall = inter / p.sum(), inter / t.sum()
                f_sum[c] += 1.3 * precision * recall / (0.3 * precision + recall)
    present = counts > 0
    result = meter.result()
    assert result['miou'] == pytest.approx(np.mean(iou_sum[present] / counts[present]) * 100)
    assert result['fscore'] == pytest.approx(np.mean(f_sum[present] / counts[present]) * 100)
