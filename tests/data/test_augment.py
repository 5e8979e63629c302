"""Augmentation: seeded, label-preserving, free when disabled."""

from __future__ import annotations

import numpy as np
import pytest

from braintseg.data.augment import Augmenter


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 32, 24, 4)).astype(np.float16)
    y = np.zeros((6, 32, 24), np.uint8)
    y[:, 8:20, 5:15] = 2
    y[:, 10:16, 7:12] = 1
    y[:, 12:14, 8:10] = 3
    return x, y


def test_disabled_returns_inputs_unchanged() -> None:
    x, y = _batch()
    ox, oy = Augmenter(flip=False)(x, y, np.random.default_rng(0))
    assert ox is x and oy is y


def test_flips_move_images_and_labels_together() -> None:
    x, y = _batch()
    x[..., 0] = y  # channel 0 carries the labels: any flip must keep them aligned
    ox, oy = Augmenter(flip=True)(x, y, np.random.default_rng(1))
    np.testing.assert_array_equal(ox[..., 0].astype(np.uint8), oy)
    flipped = [not np.array_equal(oy[b], y[b]) for b in range(len(y))]
    assert any(flipped)
    for b in range(len(y)):  # each sample is one of the four flips of its input
        options = [y[b], y[b, ::-1], y[b, :, ::-1], y[b, ::-1, ::-1]]
        assert any(np.array_equal(oy[b], o) for o in options)


@pytest.mark.parametrize("aug", [Augmenter(True, 0, 0), Augmenter(True, 20.0, 0.2)])
def test_same_seed_same_result_other_seed_differs(aug: Augmenter) -> None:
    x, y = _batch()
    a = aug(x, y, np.random.default_rng(5))
    b = aug(x, y, np.random.default_rng(5))
    c = aug(x, y, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_rotation_zoom_keep_label_set_and_dtypes() -> None:
    x, y = _batch()
    ox, oy = Augmenter(False, 30.0, 0.25)(x, y, np.random.default_rng(2))
    assert ox.dtype == np.float16 and oy.dtype == np.uint8
    assert ox.shape == x.shape and oy.shape == y.shape
    assert set(np.unique(oy)) <= {0, 1, 2, 3}
    assert set(np.unique(oy)) == {0, 1, 2, 3}  # nearest neighbour: no class vanishes here
    assert not np.array_equal(oy, y)  # something actually moved
