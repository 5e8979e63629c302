"""Losses on integer labels: hand-computed cases, a numpy cross-check, absent classes, configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from braintseg.config import ModelConfig, TrainConfig
from braintseg.training.losses import (
    GeneralizedDiceCE,
    RegionDiceLoss,
    build_loss,
    generalized_dice,
    labels_to_onehot,
)

# one 2x2 slice: background, NCR/NET, edema, ET
LABELS_4 = np.array([[[0, 1], [2, 3]]], np.uint8)


def _value(loss, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def _softmax(n, shape, seed):
    z = np.random.default_rng(seed).normal(size=(n, *shape, 4)) * 2
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def numpy_generalized_dice(labels, probs):
    """Independent reference with pixel counts; absent classes take the largest present weight."""
    ref = np.eye(4)[labels].reshape(-1, 4).astype(np.float64)
    pred = probs.reshape(-1, 4).astype(np.float64)
    r, p, i = ref.sum(0), pred.sum(0), (ref * pred).sum(0)
    w = np.zeros(4)
    w[r > 0] = 1.0 / r[r > 0] ** 2
    w[r == 0] = w[r > 0].max()
    return 2 * (w * i).sum() / (w * (r + p)).sum()


def numpy_region_dice_loss(labels, probs, smooth=1.0):
    masks = np.stack([labels > 0, np.isin(labels, (1, 3)), labels == 3], -1).astype(np.float64)
    axes = tuple(range(labels.ndim))
    dice = (2 * (masks * probs).sum(axes) + smooth) / (masks.sum(axes) + probs.sum(axes) + smooth)
    return 1.0 - dice.mean()


def test_perfect_prediction_costs_nothing():
    probs = np.eye(4, dtype=np.float32)[LABELS_4]  # exact one-hot
    # GD = 1 and CE = -log(1 - 1e-7) ~ 1e-7
    assert _value(GeneralizedDiceCE(), LABELS_4, probs) == pytest.approx(0.0, abs=1e-5)


def test_hand_computed_gdl_with_two_absent_classes():
    labels = np.array([[[0, 0], [0, 1]]], np.uint8)
    probs = np.full((1, 2, 2, 4), 0.25, np.float32)
    # fractions r = (3/4, 1/4, 0, 0), p = 1/4 each, sum(r*p)/N = (3/16, 1/16, 0, 0)
    # w = (16/9, 16, max=16, 16)   (classes 2 and 3 absent: largest present weight)
    # num = 2 * (16/9 * 3/16 + 16 * 1/16) = 2 * (1/3 + 1) = 8/3
    # den = 16/9 * 1 + 16 * 1/2 + 16 * 1/4 + 16 * 1/4 = 16/9 + 16 = 160/9
    # GD = (8/3) / (160/9) = 0.15;  CE = -log(0.25) = 1.3862944 per pixel
    gd = generalized_dice(labels_to_onehot(labels), probs)
    assert float(keras.ops.convert_to_numpy(gd)) == pytest.approx(0.15, rel=1e-6)
    expected = (1 - 0.15) + 1.25 * 1.3862944
    assert _value(GeneralizedDiceCE(), labels, probs) == pytest.approx(expected, rel=1e-6)
    assert _value(GeneralizedDiceCE(ce_weight=0.0), labels, probs) == pytest.approx(0.85, rel=1e-6)


@pytest.mark.parametrize("absent", [None, 3, (2, 3)])
def test_gdl_plus_ce_matches_numpy(absent):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=(3, 8, 8)).astype(np.uint8)
    if absent is not None:
        labels[np.isin(labels, absent)] = 0
    probs = _softmax(3, (8, 8), seed=8)
    ce = -np.log(np.take_along_axis(probs, labels[..., None].astype(int), -1)).mean()
    expected = 1 - numpy_generalized_dice(labels, probs) + 1.25 * ce
    assert _value(GeneralizedDiceCE(), labels, probs) == pytest.approx(expected, rel=1e-5)


def test_absent_class_does_not_blow_up_the_loss():
    # the original's weight 1/(0 + eps) for an absent class made GD ~ 0 for any prediction that
    # puts a little mass on it; here a near-perfect prediction keeps GD near 1
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:5, 2:5] = 1
    probs = np.eye(4, dtype=np.float32)[labels] * 0.97 + 0.01  # 0.01 on each absent class
    gd = float(keras.ops.convert_to_numpy(generalized_dice(labels_to_onehot(labels), probs)))
    assert np.isfinite(gd) and 0.9 < gd <= 1.0
    assert gd == pytest.approx(numpy_generalized_dice(labels, probs), rel=1e-5)


def test_label_dtype_and_trailing_axis_do_not_matter():
    probs = _softmax(2, (4, 4), seed=1)
    labels = np.random.default_rng(2).integers(0, 4, size=(2, 4, 4))
    loss = GeneralizedDiceCE()
    ref = _value(loss, labels.astype(np.uint8), probs)
    assert _value(loss, labels.astype(np.int32), probs) == pytest.approx(ref, rel=1e-6)
    assert _value(loss, labels[..., None].astype(np.uint8), probs) == pytest.approx(ref, rel=1e-6)


def test_hand_computed_region_dice_loss():
    probs = np.full((1, 2, 2, 3), 0.5, np.float32)
    # WT = {(0,1),(1,0),(1,1)}: I = 1.5, |T| + |P| = 3 + 2 -> (3 + 1) / (5 + 1) = 2/3
    # TC = {(0,1),(1,1)}:       I = 1.0, |T| + |P| = 2 + 2 -> (2 + 1) / (4 + 1) = 3/5
    # ET = {(1,1)}:             I = 0.5, |T| + |P| = 1 + 2 -> (1 + 1) / (3 + 1) = 1/2
    expected = 1 - (2 / 3 + 3 / 5 + 1 / 2) / 3
    assert _value(RegionDiceLoss(), LABELS_4, probs) == pytest.approx(expected, rel=1e-6)


def test_region_dice_loss_matches_numpy():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(2, 6, 6)).astype(np.uint8)
    probs = rng.uniform(size=(2, 6, 6, 3)).astype(np.float32)
    for smooth in (1.0, 1e-5):
        expected = numpy_region_dice_loss(labels, probs, smooth)
        got = _value(RegionDiceLoss(smooth=smooth), labels, probs)
        assert got == pytest.approx(expected, rel=1e-5)


def test_build_loss_follows_the_output_and_ce_weight():
    loss = build_loss(TrainConfig(ce_weight=0.5), ModelConfig())
    assert isinstance(loss, GeneralizedDiceCE) and loss.ce_weight == 0.5
    assert isinstance(build_loss(TrainConfig(), ModelConfig(output="regions")), RegionDiceLoss)


@pytest.mark.parametrize(
    "loss", [GeneralizedDiceCE(ce_weight=0.3, epsilon=1e-6), RegionDiceLoss(smooth=0.5)],
    ids=["gdl_ce", "region_dice"],
)
def test_config_round_trip(loss):
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    labels = np.random.default_rng(4).integers(0, 4, size=(1, 4, 4))
    n = 4 if isinstance(loss, GeneralizedDiceCE) else 3
    probs = np.random.default_rng(5).uniform(0.05, 0.9, size=(1, 4, 4, n)).astype(np.float32)
    assert _value(restored, labels, probs) == pytest.approx(_value(loss, labels, probs))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GeneralizedDiceCE(ce_weight=-1), "ce_weight must be a number >= 0"),
        (lambda: GeneralizedDiceCE(epsilon=0), "epsilon must be > 0"),
        (lambda: RegionDiceLoss(smooth=0), "smooth must be > 0"),
        (lambda: RegionDiceLoss(smooth="1"), "smooth must be a number"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
