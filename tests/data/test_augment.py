"""Augmentation: seeded, label-preserving, free when disabled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from braintseg.config import Config
from braintseg.training.augment import Augmenter, apply_affine, device_transforms, gather_flipped


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


def test_draws_are_those_of_the_per_sample_loop() -> None:
    """draw() consumes the generator exactly as the old loop (angle, scale, two flip coins per
    sample), so flips alone give the old batches bit for bit."""
    aug = Augmenter(True, 20.0, 0.2)
    d = aug.draw(np.random.default_rng(9), 5)
    rng = np.random.default_rng(9)
    for b in range(5):
        angle, scale = rng.uniform(-20.0, 20.0), rng.uniform(0.8, 1.2)
        flip_h, flip_w = rng.random(2) < 0.5
        assert d.angle[b] == np.radians(angle) and d.scale[b] == scale
        assert (d.flip_h[b], d.flip_w[b]) == (flip_h, flip_w)
    f = Augmenter(True).draw(np.random.default_rng(9), 5)
    coins = np.random.default_rng(9).random((5, 2)) < 0.5
    np.testing.assert_array_equal(np.stack([f.flip_h, f.flip_w], 1), coins)


def test_gather_flipped_is_gather_then_flip() -> None:
    x, _ = _batch()
    index = np.array([5, 0, 0, 3, 2])
    d = Augmenter(True).draw(np.random.default_rng(4), len(index))
    out = gather_flipped(x, index, d)
    for j, i in enumerate(index):
        ref = x[i][::-1] if d.flip_h[j] else x[i]
        ref = ref[:, ::-1] if d.flip_w[j] else ref
        np.testing.assert_array_equal(out[j], ref)
    np.testing.assert_array_equal(gather_flipped(x, index, None), x[index])


def test_device_rotation_zoom_matches_host_reference() -> None:
    """Flips on the host, then rotation/zoom as keras ops (the compiled step's half), give the
    host reference's rotate/zoom-then-flip up to interpolation rounding."""
    from keras import ops

    x, y = _batch()
    aug = Augmenter(True, 30.0, 0.2)
    hx, hy = aug(x, y, np.random.default_rng(3))
    d = aug.draw(np.random.default_rng(3), len(x))
    assert d.flip_h.any() and (d.flip_h != d.flip_w).any()  # both conjugation cases covered
    index = np.arange(len(x))
    t = device_transforms(d, *x.shape[1:3])
    dx, dy = apply_affine(gather_flipped(x, index, d), gather_flipped(y, index, d), t)
    dx, dy = ops.convert_to_numpy(dx), ops.convert_to_numpy(dy)
    assert dx.dtype == np.float16 and dy.dtype == np.uint8 and dy.shape == y.shape
    assert (dy == hy).mean() > 0.99, (dy == hy).mean()
    assert np.abs(dx.astype(np.float32) - hx.astype(np.float32)).mean() < 0.05
    assert not np.array_equal(dy, gather_flipped(y, index, d))  # something actually moved


def test_device_affine_in_a_real_fit() -> None:
    """install_device_affine: a model trains on ``((x, transforms), y)`` batches, evaluates on
    plain ones and saves/loads unchanged."""
    import keras

    from braintseg.training.augment import install_device_affine

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> object:
            x, y = _batch(i)
            d = Augmenter(True, 20.0, 0.1).draw(np.random.default_rng(i), len(x))
            index = np.arange(len(x))
            return ((gather_flipped(x, index, d), device_transforms(d, *x.shape[1:3])),
                    gather_flipped(y, index, d))

    inp = keras.Input((32, 24, 4))
    model = keras.Model(inp, keras.layers.Conv2D(4, 1, activation="softmax")(inp))
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _batch()
    install_device_affine(model, (x, y))
    history = model.fit(Batches(), validation_data=(x, y), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])


@pytest.mark.slow
def test_run_train_with_rotation_zoom_on_the_device(synthetic_store: Path, smoke_cfg: Config,
                                                    tmp_path: Path) -> None:
    """``braintseg train`` with rotation/zoom: batches carry transforms, the compiled step
    applies them, validation and the saved model are plain."""
    import csv

    from braintseg.training.train import run_train

    cfg = smoke_cfg.replace(train={"epochs": 1, "steps_per_epoch": 2, "validation_steps": 1,
                                   "batch_size": 2, "rotate_degrees": 20.0, "zoom": 0.1})
    run = run_train(cfg, synthetic_store, 0, tmp_path / "rot")
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))
    assert (run / "model.keras").is_file() or (run / "last.keras").is_file()
