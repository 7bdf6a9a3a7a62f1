"""Segmentation scores: hand-computed values, matching optimality, invariances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from interpret_spectral.evaluation.metrics import ConfusionAccumulator, matched_miou, oracle_miou, oracle_miou_per_image

IGNORE = 255

# ---------------------------------------------------------------- oracle mIoU

# region 7 overlaps {class 0: 4, class 1: 1} -> class 0; region 3 overlaps
# {class 1: 3, class 2: 2} (+2 ignored pixels) -> class 1.
# class 0: I=4, U=5+4-4=5 -> 0.8; class 1: I=3, U=5+4-3=6 -> 0.5; class 2: 0.
ORACLE_GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
ORACLE_PRED = np.array([[7, 7, 7, 3], [7, 7, 3, 3], [3, 3, 3, 3]])
ORACLE_VALUE = (0.8 + 0.5 + 0.0) / 3


def test_oracle_hand_computed() -> None:
    assert oracle_miou(ORACLE_PRED, ORACLE_GT) == pytest.approx(ORACLE_VALUE)


def test_oracle_ignores_ignored_pixels() -> None:
    pred = ORACLE_PRED.copy()
    pred[2, 2:] = 7  # region 7 grows only over ignored pixels
    assert oracle_miou(pred, ORACLE_GT) == pytest.approx(ORACLE_VALUE)
    pred[2, 2:] = 9  # a region made only of ignored pixels takes no class
    assert oracle_miou(pred, ORACLE_GT) == pytest.approx(ORACLE_VALUE)


def test_oracle_ignore_index_is_honoured() -> None:
    gt = np.where(ORACLE_GT == IGNORE, 99, ORACLE_GT)
    assert oracle_miou(ORACLE_PRED, gt, ignore_index=99) == pytest.approx(ORACLE_VALUE)
    # With 255 not ignored, the two 99-pixels form a fourth class inside region 3.
    assert oracle_miou(ORACLE_PRED, gt) != pytest.approx(ORACLE_VALUE)


def test_oracle_batches_and_sequences() -> None:
    perfect = ORACLE_GT.copy()
    stacked_pred = np.stack([ORACLE_PRED, perfect])
    stacked_gt = np.stack([ORACLE_GT, ORACLE_GT])
    per_image = oracle_miou_per_image(stacked_pred, stacked_gt)
    np.testing.assert_allclose(per_image, [ORACLE_VALUE, 1.0])
    assert oracle_miou(stacked_pred, stacked_gt) == pytest.approx((ORACLE_VALUE + 1.0) / 2)
    small_gt = np.array([[1, 1], [0, 0]])
    seq = oracle_miou_per_image([ORACLE_PRED, np.array([[4, 4], [4, 4]])], [ORACLE_GT, small_gt])
    # one region covering both classes takes class 0 (tie -> lower id): IoU 0.5 and 0.
    np.testing.assert_allclose(seq, [ORACLE_VALUE, 0.25])


def test_oracle_all_ignored_image_is_nan_and_skipped() -> None:
    empty = np.full_like(ORACLE_GT, IGNORE)
    per_image = oracle_miou_per_image([ORACLE_PRED, ORACLE_PRED], [ORACLE_GT, empty])
    assert per_image[0] == pytest.approx(ORACLE_VALUE) and np.isnan(per_image[1])
    mean = oracle_miou([ORACLE_PRED, ORACLE_PRED], [ORACLE_GT, empty])
    assert mean == pytest.approx(ORACLE_VALUE)
    with pytest.raises(ValueError, match="nothing can be scored"):
        oracle_miou(ORACLE_PRED, empty)


def test_oracle_bad_input() -> None:
    with pytest.raises(ValueError, match="[Uu]psample"):
        oracle_miou(np.zeros((2, 2), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="[Uu]psample"):
        oracle_miou([np.zeros((2, 2), int)], [np.zeros((4, 4), int)])
    with pytest.raises(TypeError, match="integer"):
        oracle_miou(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="different lengths"):
        oracle_miou([ORACLE_PRED, ORACLE_PRED], [ORACLE_GT])
    with pytest.raises(ValueError, match="negative"):
        oracle_miou(ORACLE_PRED, ORACLE_GT - 1)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        oracle_miou(np.zeros((1, 1, 2, 2), int), np.zeros((1, 1, 2, 2), int))


def _naive_oracle(pred: np.ndarray, gt: np.ndarray) -> float:
    """Direct transcription of the definition, pixel loops over regions/classes."""
    valid = gt != IGNORE
    mapped = np.full(gt.shape, -1)
    for region in np.unique(pred):
        in_region = (pred == region) & valid
        if in_region.any():
            counts = {c: int(np.sum(gt[in_region] == c)) for c in np.unique(gt[in_region])}
            best = max(counts.values())
            mapped[pred == region] = min(c for c, n in counts.items() if n == best)
    ious = []
    for c in np.unique(gt[valid]):
        inter = np.sum((mapped == c) & (gt == c) & valid)
        union = np.sum(((mapped == c) | (gt == c)) & valid)
        ious.append(inter / union)
    return float(np.mean(ious))


pixels = st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 1, 2, 3, IGNORE])),
                  min_size=2, max_size=30)


@settings(max_examples=60, deadline=None)
@given(pixels, st.permutations(range(5)))
def test_oracle_matches_definition_and_is_invariant(data, perm) -> None:
    pred = np.array([[p for p, _ in data]])
    gt = np.array([[g for _, g in data]])
    assume(np.any(gt != IGNORE))
    value = oracle_miou(pred, gt)
    assert value == pytest.approx(_naive_oracle(pred, gt))
    assert oracle_miou(np.asarray(perm)[pred], gt) == pytest.approx(value)


# --------------------------------------------------------------- matched mIoU

# Two images; confusion (cluster x class) = [[3, 1, 0], [1, 2, 0], [0, 0, 2]].
MATCH_PRED = [np.array([[0, 0, 0, 1, 1, 2]]), np.array([[2, 2, 1, 0]])]
MATCH_GT = [np.array([[0, 0, 1, 1, 1, 2]]), np.array([[2, IGNORE, 0, 0]])]


def test_matched_hand_computed_identity() -> None:
    r = matched_miou(MATCH_PRED, MATCH_GT, n_classes=3)
    np.testing.assert_array_equal(r.confusion, [[3, 1, 0], [1, 2, 0], [0, 0, 2]])
    np.testing.assert_array_equal(r.assignment, [0, 1, 2])
    np.testing.assert_allclose(r.iou, [3 / 5, 2 / 4, 1.0])
    assert r.miou == pytest.approx((0.6 + 0.5 + 1.0) / 3)
    assert r.pixel_accuracy == pytest.approx(7 / 9)
    assert r.matching == "hungarian"


def test_matched_more_clusters_than_classes() -> None:
    # confusion = [[2, 0], [1, 1], [0, 2], [0, 1]]
    pred = np.array([[0, 0, 1, 1, 2, 2, 3]])
    gt = np.array([[0, 0, 0, 1, 1, 1, 1]])
    hung = matched_miou(pred, gt, n_classes=2)
    np.testing.assert_array_equal(hung.assignment, [0, -1, 1, -1])
    np.testing.assert_allclose(hung.iou, [2 / 3, 2 / 4])
    assert hung.miou == pytest.approx(7 / 12)
    assert hung.pixel_accuracy == pytest.approx(4 / 7)
    greedy = matched_miou(pred, gt, n_classes=2, matching="greedy")
    np.testing.assert_array_equal(greedy.assignment, [0, 0, 1, 1])  # tie -> lower class
    np.testing.assert_allclose(greedy.iou, [3 / 4, 3 / 4])
    assert greedy.miou == pytest.approx(0.75)
    assert greedy.pixel_accuracy == pytest.approx(6 / 7)


def test_matched_fewer_clusters_and_absent_classes() -> None:
    pred = np.array([[0, 0, 1, 1]])
    gt = np.array([[0, 0, 2, IGNORE]])
    r = matched_miou(pred, gt, n_classes=4)
    np.testing.assert_array_equal(r.assignment, [0, 2])
    np.testing.assert_array_equal(r.present, [True, False, True, False])
    assert r.miou == pytest.approx(1.0)
    assert np.isnan(r.iou[1]) and np.isnan(r.iou[3])
    # One cluster for two classes: class 2 gets nothing and scores 0.
    r = matched_miou(np.zeros((1, 4), int), gt, n_classes=4, n_clusters=1)
    np.testing.assert_allclose(r.iou[[0, 2]], [2 / 3, 0.0])
    assert r.miou == pytest.approx(1 / 3)


def test_greedy_miou_is_not_bounded_by_hungarian() -> None:
    """Greedy maximises pixel accuracy, not mIoU: here Hungarian has the higher mIoU."""
    # class 0: 100 px, class 1: 30 px; cluster 0 = 60 of class 0,
    # cluster 1 = 40 of class 0 + 30 of class 1 (argmax class 0).
    pred = np.array([[0] * 60 + [1] * 70])
    gt = np.array([[0] * 100 + [1] * 30])
    greedy = matched_miou(pred, gt, n_classes=2, matching="greedy")
    hung = matched_miou(pred, gt, n_classes=2, matching="hungarian")
    assert greedy.miou == pytest.approx((100 / 130 + 0.0) / 2)
    assert hung.miou == pytest.approx((60 / 100 + 30 / 70) / 2)
    assert hung.miou > greedy.miou
    assert greedy.pixel_accuracy > hung.pixel_accuracy


def test_accumulator_streaming_equals_one_shot() -> None:
    acc = ConfusionAccumulator(n_classes=3)
    for p, g in zip(MATCH_PRED, MATCH_GT):
        acc.update(p, g)
    streamed = acc.result()
    one_shot = matched_miou(MATCH_PRED, MATCH_GT, n_classes=3)
    np.testing.assert_array_equal(acc.confusion, one_shot.confusion)
    assert streamed.miou == one_shot.miou
    # a generator of images works as well
    gen = matched_miou((p for p in MATCH_PRED), (g for g in MATCH_GT), n_classes=3)
    assert gen.miou == one_shot.miou


def test_matched_bad_input() -> None:
    with pytest.raises(ValueError, match="n_classes=2"):
        matched_miou(np.array([[0, 1]]), np.array([[0, 2]]), n_classes=2)
    with pytest.raises(ValueError, match="n_clusters=2"):
        matched_miou(np.array([[0, 2]]), np.array([[0, 1]]), n_classes=2, n_clusters=2)
    with pytest.raises(ValueError, match=">= 0"):
        matched_miou(np.array([[0, -1]]), np.array([[0, 1]]), n_classes=2)
    with pytest.raises(ValueError, match="matching"):
        matched_miou(np.array([[0, 1]]), np.array([[0, 1]]), n_classes=2, matching="best")
    with pytest.raises(ValueError, match="no scored pixel"):
        matched_miou(np.array([[0, 1]]), np.array([[IGNORE, IGNORE]]), n_classes=2)
    with pytest.raises(ValueError, match="[Uu]psample"):
        matched_miou(np.zeros((8, 8), int), np.zeros((16, 16), int), n_classes=2)


def _injective_maps(n_clusters: int, n_classes: int):
    """Every one-to-one partial map cluster -> class of maximal size."""
    if n_clusters <= n_classes:
        for classes in itertools.permutations(range(n_classes), n_clusters):
            yield list(range(n_clusters)), list(classes)
    else:
        for clusters in itertools.permutations(range(n_clusters), n_classes):
            yield list(clusters), list(range(n_classes))


matching_pixels = st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, IGNORE])),
                           min_size=1, max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(matching_pixels, st.integers(1, 4), st.integers(1, 4))
def test_hungarian_equals_brute_force(data, n_clusters, n_classes) -> None:
    pred = np.array([[min(p, n_clusters - 1) for p, _ in data]])
    gt = np.array([[g if g == IGNORE else min(g, n_classes - 1) for _, g in data]])
    assume(np.any(gt != IGNORE))
    r = matched_miou(pred, gt, n_classes=n_classes, n_clusters=n_clusters)
    totals = {}
    for rows, cols in _injective_maps(n_clusters, n_classes):
        totals[tuple(zip(rows, cols))] = int(r.confusion[rows, cols].sum())
    best = max(totals.values())
    assert round(r.pixel_accuracy * r.confusion.sum()) == best
    optimal = [m for m, t in totals.items() if t == best]
    if len(optimal) == 1:
        expected = np.full(n_clusters, -1)
        for cluster, cls in optimal[0]:
            expected[cluster] = cls
        np.testing.assert_array_equal(r.assignment, expected)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(matching_pixels, st.permutations(range(4)))
def test_matched_invariant_to_cluster_permutation(data, perm) -> None:
    pred = np.array([[p for p, _ in data]])
    gt = np.array([[g for _, g in data]])
    assume(np.any(gt != IGNORE))
    permuted = np.asarray(perm)[pred]
    for matching in ("hungarian", "greedy"):
        a = matched_miou(pred, gt, n_classes=4, n_clusters=4, matching=matching)
        b = matched_miou(permuted, gt, n_classes=4, n_clusters=4, matching=matching)
        assert a.pixel_accuracy == pytest.approx(b.pixel_accuracy)
        if matching == "greedy":
            np.testing.assert_array_equal(b.assignment[np.asarray(perm)], a.assignment)
            assert a.miou == pytest.approx(b.miou)
            continue
        matched_pixels = round(a.pixel_accuracy * a.confusion.sum())
        n_optimal = sum(int(a.confusion[rows, cols].sum()) == matched_pixels
                        for rows, cols in _injective_maps(4, 4))
        if n_optimal == 1:  # with tied optima, mIoU may depend on the tie-break
            assert a.miou == pytest.approx(b.miou)
    greedy = matched_miou(pred, gt, n_classes=4, n_clusters=4, matching="greedy")
    hungarian = matched_miou(pred, gt, n_classes=4, n_clusters=4, matching="hungarian")
    assert greedy.pixel_accuracy >= hungarian.pixel_accuracy - 1e-12
