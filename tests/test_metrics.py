"""Region Dice metrics: hand-computed cases, pooling over batches, numpy cross-check, configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from braintseg.config import ModelConfig
from braintseg.training.metrics import MeanRegionDice, RegionDice, build_metrics

LABELS_4 = np.array([[[0, 1], [2, 3]]], np.uint8)  # background, NCR/NET, edema, ET


def _onehot(classes):
    return np.eye(4, dtype=np.float32)[np.asarray(classes)]


def _result(metric) -> float:
    return float(keras.ops.convert_to_numpy(metric.result()))


def numpy_region_dice(labels, pred_classes):
    """Hard Dice per region (WT, TC, ET) of two label maps; 1 when both are empty."""
    out = []
    for members in ((1, 2, 3), (1, 3), (3,)):
        t, p = np.isin(labels, members), np.isin(pred_classes, members)
        total = t.sum() + p.sum()
        out.append(1.0 if total == 0 else 2 * (t & p).sum() / total)
    return np.array(out)


def test_hand_computed_classes_case():
    pred = _onehot([[[1, 1], [2, 0]]]) * 0.7 + 0.075  # argmax = [[1, 1], [2, 0]]
    # WT: T = {(0,1),(1,0),(1,1)}, P = {(0,0),(0,1),(1,0)}: 2 * 2 / (3 + 3) = 2/3
    # TC: T = {(0,1),(1,1)},       P = {(0,0),(0,1)}:       2 * 1 / (2 + 2) = 1/2
    # ET: T = {(1,1)},             P = {}:                  2 * 0 / (1 + 0) = 0
    expected = {"wt": 2 / 3, "tc": 0.5, "et": 0.0}
    for region, value in expected.items():
        metric = RegionDice(region)
        metric.update_state(LABELS_4, pred)
        assert metric.name == f"dice_{region}"
        assert _result(metric) == pytest.approx(value, rel=1e-6)
    mean = MeanRegionDice()
    mean.update_state(LABELS_4, pred)
    assert _result(mean) == pytest.approx((2 / 3 + 0.5) / 3, rel=1e-6)


def test_hand_computed_regions_case():
    # sigmoid head: WT, TC, ET probabilities thresholded at 0.5
    pred = np.zeros((1, 2, 2, 3), np.float32)
    pred[0, :, :, 0] = [[0.2, 0.9], [0.6, 0.51]]  # WT P = {(0,1),(1,0),(1,1)} = T -> 1
    pred[0, :, :, 2] = [[0.7, 0.1], [0.1, 0.4]]  # ET P = {(0,0)}, T = {(1,1)} -> 0
    # TC: P = {} , T = {(0,1),(1,1)} -> 0
    values = []
    for region in ("wt", "tc", "et"):
        metric = RegionDice(region, output="regions")
        metric.update_state(LABELS_4, pred)
        values.append(_result(metric))
    assert values == pytest.approx([1.0, 0.0, 0.0])


def test_epoch_value_pools_batches_instead_of_averaging_them():
    metric = RegionDice("et")
    a = np.array([[[3, 0], [0, 0]]], np.uint8)  # batch A: ET found exactly -> batch Dice 1
    b = np.array([[[3, 3], [3, 0]]], np.uint8)  # batch B: 3 ET pixels, none found -> Dice 0
    metric.update_state(a, _onehot(a))
    metric.update_state(b, _onehot(np.zeros_like(b)))
    # pooled: 2 * 1 / (4 + 1) = 0.4, not the mean of batch Dices (0.5)
    assert _result(metric) == pytest.approx(0.4, rel=1e-6)
    metric.reset_state()
    metric.update_state(b, _onehot(b))
    assert _result(metric) == pytest.approx(1.0)


def test_region_absent_from_targets_and_predictions_scores_one():
    labels = np.zeros((2, 4, 4), np.uint8)
    metric = RegionDice("tc")
    assert _result(metric) == 1.0  # nothing seen yet
    metric.update_state(labels, _onehot(labels))
    assert _result(metric) == 1.0
    metric.update_state(labels, _onehot(np.full_like(labels, 2)))  # edema predicted: not TC
    assert _result(metric) == 1.0
    metric.update_state(labels, _onehot(np.full_like(labels, 1)))  # false-positive TC
    assert _result(metric) == 0.0


def test_matches_numpy_on_random_batches():
    rng = np.random.default_rng(11)
    metrics = build_metrics(ModelConfig())
    all_labels, all_pred = [], []
    for _ in range(3):
        labels = rng.integers(0, 4, size=(2, 8, 8)).astype(np.uint8)
        probs = rng.dirichlet(np.ones(4), size=(2, 8, 8)).astype(np.float32)
        for m in metrics:
            m.update_state(labels, probs)
        all_labels.append(labels)
        all_pred.append(probs.argmax(-1))
    expected = numpy_region_dice(np.concatenate(all_labels), np.concatenate(all_pred))
    got = [_result(m) for m in metrics]
    assert got[:3] == pytest.approx(expected, rel=1e-6)
    assert got[3] == pytest.approx(expected.mean(), rel=1e-6)


def test_sample_weight_excludes_zero_weighted_slices():
    labels = np.array([[[3, 3], [0, 0]], [[3, 0], [0, 0]]], np.uint8)
    pred = _onehot(np.array([[[3, 3], [0, 0]], [[0, 0], [0, 3]]]))
    metric = RegionDice("et")
    metric.update_state(labels, pred, sample_weight=np.array([1.0, 0.0], np.float32))
    assert _result(metric) == pytest.approx(1.0)  # only the perfect first slice counts


def test_build_metrics_names_and_output():
    metrics = build_metrics(ModelConfig(output="regions"))
    assert [m.name for m in metrics] == ["dice_wt", "dice_tc", "dice_et", "dice_mean"]
    assert all(m.output == "regions" for m in metrics)


@pytest.mark.parametrize(
    "metric", [RegionDice("tc", output="regions"), MeanRegionDice(name="val_mean")],
    ids=["region", "mean"],
)
def test_config_round_trip(metric):
    config = metric.get_config()
    clone = type(metric).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is type(metric) and restored.get_config() == config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"region": "edema"}, "region must be one of wt, tc, et; received 'edema'"),
        ({"output": "logits"}, "output must be one of classes, regions, binary; received 'logits'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegionDice(**kwargs)
