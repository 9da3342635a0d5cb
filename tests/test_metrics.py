"""Disparity metrics against values worked out by hand, and the distillation loss's weighting and masking."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stereo_distill.metrics import DisparityMetrics, compute_metrics, pixel_errors


def test_hand_computed_single_pair():
    # reference, prediction, valid -> |err|
    ref = np.array([[10.0, 10.0, 100.0, 100.0],
                    [50.0, np.inf, 20.0, 40.0]])
    pred = np.array([[10.5, 12.5, 104.0, 106.0],
                     [50.0, 7.0, 23.5, 0.0]])
    valid = np.array([[True, True, True, True],
                      [True, True, True, False]])
    # counted pixels: (0,0) 0.5, (0,1) 2.5, (0,2) 4.0, (0,3) 6.0, (1,0) 0.0, (1,2) 3.5
    # (1,1) has an infinite reference (not counted), (1,3) is masked out.
    m = compute_metrics(pred, ref, valid, reference="ground_truth")
    assert m["epe"] == pytest.approx((0.5 + 2.5 + 4.0 + 6.0 + 0.0 + 3.5) / 6)
    assert m["bad1"] == pytest.approx(4 / 6)   # 2.5, 4.0, 6.0, 3.5
    assert m["bad2"] == pytest.approx(4 / 6)
    assert m["bad3"] == pytest.approx(3 / 6)   # 4.0, 6.0, 3.5
    # D1 needs BOTH > 3 px and > 5 % of the reference:
    #   4.0 vs 100 -> 4 % -> not D1; 6.0 vs 100 -> 6 % -> D1; 3.5 vs 20 -> 17.5 % -> D1
    assert m["d1"] == pytest.approx(2 / 6)
    assert m["pairs"] == 1
    assert m["valid_fraction"] == pytest.approx(6 / 8)
    assert m["reference"] == "ground_truth"
    assert m["coverage"] == 1.0
    assert set(m) == {"epe", "d1", "bad1", "bad2", "bad3", "pairs", "valid_fraction", "coverage", "reference"}


def test_d1_relative_condition_alone_is_not_enough():
    # 2.9 px error on a 10 px reference is 29 % but below 3 px: bad-2 yes, D1 no.
    m = compute_metrics(np.array([[12.9]]), np.array([[10.0]]))
    assert m["d1"] == 0.0 and m["bad2"] == 1.0 and m["bad3"] == 0.0


def test_pooling_weights_pixels_not_pairs():
    acc = DisparityMetrics()
    acc.update(np.full((1, 1), 11.0), np.full((1, 1), 10.0))          # one pixel, error 1
    acc.update(np.full((1, 3), 20.0), np.full((1, 3), 20.0))          # three pixels, error 0
    m = acc.result()
    assert m["epe"] == pytest.approx(0.25)
    assert m["pairs"] == 2 and m["reference"] == "labels"


def test_missing_predictions_are_bad_not_ignored():
    ref = np.array([[10.0, 10.0]])
    pred = np.array([[10.0, np.nan]])
    m = compute_metrics(pred, ref)
    assert m["bad1"] == 0.5 and m["d1"] == 0.5
    assert m["epe"] == 0.0  # EPE over answered pixels
    assert m["coverage"] == 0.5
    err, ref_abs = pixel_errors(pred, ref)
    assert math.isinf(err[1]) and ref_abs.tolist() == [10.0, 10.0]


def test_no_valid_pixels_gives_nan_not_a_crash():
    m = compute_metrics(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), bool))
    assert math.isnan(m["epe"]) and m["valid_fraction"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.ones((2, 2)), np.ones((2, 3)))


# ------------------------------------------------------------------------------------------ distillation loss
torch = pytest.importorskip("torch")


def test_sequence_weights_follow_upstream():
    from stereo_distill.losses import sequence_weights

    w = sequence_weights(22)
    assert w[-1] == 1.0
    assert w[0] == pytest.approx(0.9 ** 15)  # the adjusted gamma keeps the first weight at gamma**15
    assert w[-2] == pytest.approx(0.9 ** (15 / 21))
    assert sequence_weights(1) == [1.0]


def test_sequence_loss_masks_invalid_and_out_of_range_pixels():
    from stereo_distill.losses import LossConfig, sequence_loss

    target = torch.tensor([[[[10.0, 20.0, 300.0, 40.0]]]])
    valid = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])           # last pixel invalid; 300 px beyond max_range 192
    init = target + torch.tensor([[[[0.5, 2.0, 50.0, 99.0]]]])
    preds = [target + 1.0, target + torch.tensor([[[[2.0, 0.0, 80.0, 80.0]]]])]
    loss, metrics = sequence_loss(init, preds, target, valid, LossConfig(gamma=0.9))
    # smooth-L1 on the two counted pixels: 0.5*0.5^2 = 0.125 and 2 - 0.5 = 1.5 -> mean 0.8125
    # iterations (n=2, adjusted gamma 0.9**15): w0 * mean(1, 1) + 1 * mean(2, 0)
    expected = 0.8125 + 0.9 ** 15 * 1.0 + 1.0
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["epe"]) == pytest.approx(1.0)
    assert float(metrics["bad1"]) == pytest.approx(0.5)


def test_ground_truth_mixing_uses_only_pixels_with_ground_truth():
    from stereo_distill.losses import LossConfig, distillation_loss

    label = torch.full((1, 1, 1, 2), 10.0)
    label_valid = torch.ones_like(label)
    gt = torch.tensor([[[[12.0, 0.0]]]])
    gt_valid = torch.tensor([[[[1.0, 0.0]]]])
    preds = [label.clone()]
    base, _ = distillation_loss(label.clone(), preds, label, label_valid, gt, gt_valid, LossConfig(gt_weight=0.0))
    mixed, m = distillation_loss(label.clone(), preds, label, label_valid, gt, gt_valid, LossConfig(gt_weight=0.5))
    assert float(base) == 0.0
    # against gt: smooth-L1(2) = 1.5 on init + L1 2.0 on the one prediction, weighted 0.5
    assert float(mixed) == pytest.approx(0.5 * (1.5 + 2.0))
    assert float(m["gt_epe"]) == pytest.approx(2.0)


def test_empty_mask_gives_zero_loss_with_gradient():
    from stereo_distill.losses import sequence_loss

    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    loss, _ = sequence_loss(pred, [pred], torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    loss.backward()
    assert float(loss.detach()) == 0.0 and pred.grad is not None and torch.isfinite(pred.grad).all()
