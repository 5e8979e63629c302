"""Normalisation, crop boxes and label conventions on small hand-checkable arrays."""

from __future__ import annotations

import numpy as np
import pytest

from braintseg.data.preprocess import (
    VIEW_AXIS,
    auto_crop_box,
    crop,
    nonzero_box,
    normalize,
    to_internal,
    to_source,
    uncrop,
    validate_box,
)
from braintseg.errors import ConfigError, DataError


def test_label_round_trip_both_conventions() -> None:
    raw18 = np.array([[0, 1], [2, 4]], np.int16)
    np.testing.assert_array_equal(to_internal(raw18, "brats2018"), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(to_source(to_internal(raw18, "brats2018"), "brats2018"), raw18)
    raw23 = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    np.testing.assert_array_equal(to_internal(raw23, "brats2023"), [0, 1, 2, 3])
    assert to_internal(raw23, "brats2023").dtype == np.uint8


@pytest.mark.parametrize(("raw", "convention", "bad"), [
    ([0, 3], "brats2018", "[3]"), ([0, 4], "brats2023", "[4]"), ([0, 7, -1], "brats2018", "-1"),
    ([0, 300], "brats2023", "300"),
])
def test_labels_outside_convention(raw: list[int], convention: str, bad: str) -> None:
    with pytest.raises(DataError, match=rf"label values .*{bad[1:-1] if bad[0] == '[' else bad}"):
        to_internal(np.array(raw), convention)


def test_normalize_zscore_on_brain_only() -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((10, 10, 10, 2), np.float32)
    img[2:8, 2:8, 2:8] = rng.normal(500, 50, size=(6, 6, 6, 2))
    img[2, 2, 2, 0] = 1e6  # outlier: clipped to the 99th percentile before mean/std
    out, stats = normalize(img, (1, 99), modalities=("flair", "t1"))
    brain = img[..., 0] != 0
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.all(out[~brain] == 0)
    assert abs(out[brain, 0].mean()) < 1e-3 and abs(out[brain, 0].std() - 1) < 1e-3
    assert stats[0]["clip_hi"] < 1e6 and stats[0]["n_brain"] == 216
    assert stats[1]["modality"] == "t1"


def test_normalize_errors() -> None:
    img = np.random.default_rng(1).uniform(1, 2, size=(4, 4, 4, 2)).astype(np.float32)
    img[..., 1] = 0
    with pytest.raises(DataError, match="modality 't1' is all zero"):
        normalize(img, modalities=("flair", "t1"))
    with pytest.raises(DataError, match="constant brain intensity"):
        normalize(np.ones((4, 4, 4, 1), np.float32), modalities=("flair",))


def test_crop_uncrop_round_trip() -> None:
    vol = np.arange(6 * 8 * 10).reshape(6, 8, 10)
    box = (1, 5, 2, 6, 3, 9)
    c = crop(vol, box)
    assert c.shape == (4, 4, 6) and c[0, 0, 0] == vol[1, 2, 3]
    back = uncrop(c, box, vol.shape)
    np.testing.assert_array_equal(back[1:5, 2:6, 3:9], c)
    assert back.sum() == c.sum()


def test_validate_box_messages() -> None:
    assert validate_box((0, 8, 0, 16, 8, 16), (10, 20, 30), 8, "case A") == (0, 8, 0, 16, 8, 16)
    with pytest.raises(ConfigError, match=r"outside the volume of case A: z range 8:40"):
        validate_box((0, 8, 0, 16, 8, 40), (10, 20, 30), 8, "case A")
    with pytest.raises(ConfigError, match=r"y size 12 is not a multiple of 8"):
        validate_box((0, 8, 0, 12, 8, 16), (10, 20, 30), 8, "case A")


def test_default_box_is_divisible() -> None:
    box = (42, 194, 29, 221, 2, 146)
    assert validate_box(box, (240, 240, 155), 8, "x") == box


def test_auto_crop_box_grows_and_clamps() -> None:
    vol = np.zeros((20, 30, 12))
    vol[3:9, 0:5, 1:11] = 1
    b = nonzero_box(vol)
    assert b == (3, 9, 0, 5, 1, 11)
    box = auto_crop_box([b, (5, 10, 2, 4, 1, 2)], (20, 30, 12), 4)
    assert box == (3, 11, 0, 8, 0, 12)  # x 3:10 → 8 wide; y 0:5 → 8 clamped at 0; z fills
    with pytest.raises(ConfigError, match="grows to 16"):
        auto_crop_box([(0, 13, 0, 4, 0, 4)], (14, 30, 12), 8)
    assert nonzero_box(np.zeros((3, 3, 3))) is None


def test_view_axes() -> None:
    assert VIEW_AXIS == {"sagittal": 0, "coronal": 1, "axial": 2}
