"""``train.bn_recalibration``: BatchNorm statistics of the current weights before validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from braintseg.config import Config
from braintseg.errors import ConfigError
from conftest import TINY_TRAIN as TINY


def test_recalibrate_sets_the_average_of_the_batch_statistics_and_keeps_momentum() -> None:
    import keras

    from braintseg.training.precise_bn import batchnorm_layers, recalibrate

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(k, 1 + k, (5, 4, 4, 3)).astype("float32") for k in range(3)]
    recalibrate(model, batches)
    (bn,) = batchnorm_layers(model)
    means = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    variances = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), variances, rtol=1e-4)
    assert bn.momentum == 0.99


def test_nested_batchnorm_layers_are_found() -> None:
    from braintseg.config import ModelConfig
    from braintseg.model import build_model
    from braintseg.training.precise_bn import batchnorm_layers

    model = build_model(ModelConfig(levels=2, start_channels=4), (16, 16, 4))
    # 2 per residual unit: 2 encoder levels, the bottleneck, 2 decoder levels; + the head's
    assert len(batchnorm_layers(model)) == 2 * 5 + 1


def test_training_is_unchanged_and_the_saved_statistics_are_the_recalibrated_ones(
        synthetic_store: Path, smoke_cfg: Config, tmp_path: Path) -> None:
    import keras

    import braintseg.training.losses  # noqa: F401 - registers the custom objects
    import braintseg.training.metrics  # noqa: F401
    from braintseg.training.augment import Augmenter
    from braintseg.training.generator import SliceDataset
    from braintseg.training.precise_bn import batchnorm_layers, recalibrate
    from braintseg.training.runs import read_json
    from braintseg.training.train import run_train

    def cfg(n: int) -> Config:
        return smoke_cfg.replace(train={**TINY, "bn_recalibration": n},
                                 model={"noise_stddev": 0.0})

    plain, precise = tmp_path / "plain", tmp_path / "precise"
    run_train(cfg(0), synthetic_store, 0, plain)
    run_train(cfg(2), synthetic_store, 0, precise)
    a = keras.saving.load_model(plain / "last.keras", safe_mode=True)
    b = keras.saving.load_model(precise / "last.keras", safe_mode=True)
    for va, vb in zip(a.trainable_weights, b.trainable_weights, strict=True):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))  # training untouched
    ema = np.concatenate([np.asarray(v).ravel() for v in a.non_trainable_weights
                          if "moving" in v.path])
    precise_stats = np.concatenate([np.asarray(v).ravel() for v in b.non_trainable_weights
                                    if "moving" in v.path])
    assert np.abs(ema - precise_stats).max() > 0.05  # the statistics did change
    # the saved statistics are those of the last epoch's first 2 batches through the weights
    t = cfg(2).train
    run = read_json(precise / "run.json")
    data = SliceDataset(synthetic_store, run["train_cases"], view=t.view, batch_size=t.batch_size,
                        seed=t.seed, augment=Augmenter(t.flip, t.rotate_degrees, t.zoom),
                        tumour_oversampling=t.tumour_oversampling, max_batches=t.steps_per_epoch,
                        cache="ram")
    recalibrate(a, [data.batch(t.epochs - 1, i)[0] for i in range(2)])
    for x, y in zip(batchnorm_layers(a), batchnorm_layers(b), strict=True):  # (no input
        # noise in these runs: its draws would differ between fit's passes and these)
        np.testing.assert_allclose(np.asarray(x.moving_mean), np.asarray(y.moving_mean),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(x.moving_variance),
                                   np.asarray(y.moving_variance), rtol=1e-5, atol=1e-6)


def test_bn_recalibration_refuses_negative_and_distributed(smoke_cfg: Config) -> None:
    with pytest.raises(ConfigError, match="train.bn_recalibration must be >= 0"):
        smoke_cfg.replace(train={"bn_recalibration": -1})
    with pytest.raises(ConfigError, match="one-device runs"):
        smoke_cfg.replace(train={"bn_recalibration": 4, "distribution": "data_parallel"})
