"""ResidualUnit, SqueezeExcite and the norm choice: shapes, hand-computed outputs, configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from braintseg.model.blocks import ResidualUnit, SqueezeExcite, make_norm, norm_groups


def _np(value):
    """A backend tensor as a numpy array."""
    return keras.ops.convert_to_numpy(value)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    ("norm", "channels", "groups"),
    [
        pytest.param("batch", 64, None, id="batch"),
        pytest.param("group", 64, 8, id="group-64"),
        pytest.param("group", 4, 4, id="group-4-fewer-than-8"),
        pytest.param("group", 12, 6, id="group-12-largest-divisor"),
        pytest.param("instance", 12, 12, id="instance"),
    ],
)
def test_norm_groups(norm, channels, groups):
    assert norm_groups(norm, channels) == groups
    layer = make_norm(norm, channels)
    layers = keras.layers
    expected = layers.BatchNormalization if groups is None else layers.GroupNormalization
    assert isinstance(layer, expected)
    if groups is not None:
        assert layer.groups == groups


def test_unknown_norm_is_an_error():
    message = "norm must be one of batch, group, instance; received 'layer'"
    with pytest.raises(ValueError, match=message):
        norm_groups("layer", 8)


def test_residual_unit_parameter_count_matches_hand_count():
    unit = ResidualUnit(64)
    unit.build((None, 8, 8, 64))
    # per half: BN 4*64 = 256 (128 trainable), PReLU 64, Conv 3x3 64->64: 9*64*64 + 64 = 36,928
    # two halves: 2 * (256 + 64 + 36,928) = 74,496
    assert unit.count_params() == 74_496
    assert unit.act1.alpha.shape == (1, 1, 64)  # one slope per channel, shared over H, W


def test_decoder_unit_has_bias_free_projection_shortcut():
    unit = ResidualUnit(4, projection=True)
    unit.build((None, 8, 8, 8))
    assert unit.shortcut.kernel.shape == (1, 1, 8, 4)
    assert not unit.shortcut.use_bias


def test_identity_shortcut_adds_the_input():
    unit = ResidualUnit(4)
    x = _x((2, 8, 8, 4))
    unit(x)
    # with the second conv zeroed the residual branch is 0, so the unit is the identity
    unit.conv2.kernel.assign(np.zeros(unit.conv2.kernel.shape, np.float32))
    unit.conv2.bias.assign(np.zeros(unit.conv2.bias.shape, np.float32))
    np.testing.assert_allclose(_np(unit(x)), x, atol=1e-6)
    unit.conv2.bias.assign(np.full(4, 0.5, np.float32))  # and now x + 0.5
    np.testing.assert_allclose(_np(unit(x)), x + 0.5, atol=1e-6)


def test_projection_shortcut_is_a_1x1_conv():
    unit = ResidualUnit(3, projection=True)
    x = _x((1, 4, 4, 5))
    unit(x)
    unit.conv2.kernel.assign(np.zeros(unit.conv2.kernel.shape, np.float32))
    unit.conv2.bias.assign(np.zeros(3, np.float32))
    kernel = unit.shortcut.get_weights()[0][0, 0]  # (5, 3)
    np.testing.assert_allclose(_np(unit(x)), x @ kernel, rtol=1e-5, atol=1e-6)


def test_identity_unit_rejects_a_channel_mismatch():
    with pytest.raises(ValueError, match="needs 8 input channels"):
        ResidualUnit(8)(np.zeros((1, 4, 4, 4), np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": 0}, "filters must be a positive int"),
        ({"filters": 4, "norm": "layer"}, "norm must be one of"),
        ({"filters": 4, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_residual_unit_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResidualUnit(**kwargs)


def test_spatial_dropout_only_in_training():
    keras.utils.set_random_seed(1)
    unit = ResidualUnit(8, norm="group", dropout=0.5)
    x = _x((2, 8, 8, 8))
    a = _np(unit(x, training=False))
    b = _np(unit(x, training=False))
    c = _np(unit(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_squeeze_excite_matches_numpy():
    se = SqueezeExcite(2)
    x = np.abs(_x((2, 3, 3, 4), seed=3))
    se(x)
    assert se.squeeze.kernel.shape == (4, 2) and se.excite.kernel.shape == (2, 4)
    assert not se.squeeze.use_bias and not se.excite.use_bias
    w1 = se.squeeze.get_weights()[0]
    w2 = se.excite.get_weights()[0]
    pooled = x.mean(axis=(1, 2))  # (2, 4)
    scale = 1.0 / (1.0 + np.exp(-(np.maximum(pooled @ w1, 0.0) @ w2)))
    expected = x * scale[:, None, None, :]
    np.testing.assert_allclose(_np(se(x)), expected, rtol=1e-5, atol=1e-6)


def test_squeeze_excite_validates_ratio_and_keeps_one_unit():
    with pytest.raises(ValueError, match="ratio must be a positive int; received 0"):
        SqueezeExcite(0)
    se = SqueezeExcite(8)
    se.build((None, 4, 4, 4))  # 4 // 8 == 0 -> at least one unit
    assert se.squeeze.units == 1


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(
            lambda: ResidualUnit(4, norm="instance", dropout=0.2, projection=True), id="res"
        ),
        pytest.param(lambda: SqueezeExcite(4), id="se"),
    ],
)
def test_from_config_round_trip_gives_the_same_layer(layer):
    original = layer()
    x = _x((1, 4, 4, 8))
    y = _np(original(x))
    config = original.get_config()
    clone = type(original).from_config(config)
    clone(x)
    clone.set_weights(original.get_weights())
    assert clone.get_config() == config
    np.testing.assert_allclose(_np(clone(x)), y, rtol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(restored) is type(original) and restored.get_config() == config
