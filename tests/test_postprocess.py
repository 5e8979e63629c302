"""Post-processing on hand-made label volumes (internal labels 0 bg, 1 NCR, 2 ED, 3 ET)."""

from __future__ import annotations

import numpy as np
import pytest

from braintseg.inference.postprocess import (
    describe,
    et_to_ncr,
    keep_large_components,
    postprocess,
    remove_small_components,
)


def _volume() -> np.ndarray:
    """A big tumour (edema shell, NCR core with a 2x2x2 ET blob) and a lone 1-voxel ET speck."""
    v = np.zeros((20, 20, 20), np.uint8)
    v[2:12, 2:12, 2:12] = 2  # 1000 voxels of WT
    v[4:10, 4:10, 4:10] = 1  # TC core, 216 voxels
    v[5:7, 5:7, 5:7] = 3  # ET blob: 8 voxels (inside TC)
    v[7:9, 7:9, 7:9] = 3  # a second ET blob: 8 voxels, touching the first only at a corner
    v[16, 16, 16] = 3  # isolated speck: WT, TC and ET component of 1 voxel
    v[16, 2:5, 16] = 2  # isolated edema line of 3 voxels
    return v


def test_keep_large_components_uses_26_connectivity() -> None:
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touching by a corner: one component of 2
    mask[4, 4, 0] = True  # alone
    kept = keep_large_components(mask, 2)
    assert kept[1, 1, 1] and kept[2, 2, 2]
    assert not kept[4, 4, 0]
    assert kept.sum() == 2


def test_slice_masks_lose_small_8_connected_components(tmp_path) -> None:
    import tifffile

    from braintseg.inference.slices import write_patient
    from braintseg.sources.registry import source

    probs = np.zeros((1, 16, 16, 2), np.float32)
    probs[..., 0] = 1.0
    probs[0, 2:8, 2:8] = (0.1, 0.9)  # a 36-pixel tumour
    probs[0, 12, 12] = probs[0, 13, 13] = (0.2, 0.8)  # 2 pixels touching by a corner
    probs[0, 14, 2] = (0.3, 0.7)  # a lone pixel at the edge
    sizes = np.array([[16, 16]], np.int32)
    masks, scores = {}, {}
    for min_size in (0, 2, 3, 40):
        rows, files = write_patient(source("lgg"), tmp_path / str(min_size), "P", ["1"], probs,
                                    sizes, False, min_size)
        masks[min_size] = tifffile.imread(files[0]) > 0
        scores[min_size] = float(rows[0]["tumour_probability"])
    assert masks[0].sum() == 39 and masks[2].sum() == 38 and masks[3].sum() == 36
    assert masks[2][12, 12] and masks[2][13, 13] and not masks[2][14, 2]
    assert masks[3][2:8, 2:8].all() and not masks[40].any()
    # the slice score: the largest probability left; below 0.5 once nothing is left
    assert scores[0] == scores[3] == pytest.approx(0.9) and scores[40] == 0.0


def test_small_components_removed_per_region_and_nested() -> None:
    v = _volume()
    out = remove_small_components(v, 10)
    assert out.dtype == np.uint8
    # the speck (1 voxel) and the edema line (3 voxels) are gone entirely
    assert out[16, 16, 16] == 0 and not out[16, 2:5, 16].any()
    # the two ET blobs touch at a corner → one ET component of 16 voxels ≥ 10 → kept
    assert (out == 3).sum() == 16
    # everything else of the big tumour unchanged
    np.testing.assert_array_equal(out[:13, :13, :13], v[:13, :13, :13])


def test_small_et_component_becomes_ncr_and_small_tc_becomes_edema() -> None:
    v = np.zeros((12, 12, 12), np.uint8)
    v[1:11, 1:11, 1:11] = 2  # WT 1000
    v[2:5, 2:5, 2:5] = 1  # TC component of 27 voxels (NCR + ET below)
    v[3, 3, 3] = 3  # ET of 1 voxel inside it
    v[8, 8, 8] = 1  # TC component of 1 voxel
    out = remove_small_components(v, 5)
    assert out[3, 3, 3] == 1  # small ET inside kept TC → NCR
    assert out[8, 8, 8] == 2  # small TC inside kept WT → edema
    assert (out > 0).sum() == 1000  # WT unchanged


def test_min_size_zero_or_one_is_identity() -> None:
    v = _volume()
    for size in (0, 1):
        np.testing.assert_array_equal(remove_small_components(v, size), v)


@pytest.mark.parametrize(("threshold", "expected_et"), [(0, 17), (17, 17), (18, 0), (1000, 0)])
def test_et_to_ncr_threshold(threshold: int, expected_et: int) -> None:
    v = _volume()  # 17 ET voxels in all
    out = et_to_ncr(v, threshold)
    assert (out == 3).sum() == expected_et
    if expected_et == 0:
        assert (out == 1).sum() == (v == 1).sum() + 17
    assert ((out > 0) == (v > 0)).all()  # WT never changes


def test_postprocess_order_components_then_et_rule() -> None:
    v = _volume()
    # components first: the ET speck goes, leaving 16 ET voxels; threshold 17 then relabels them
    out = postprocess(v, min_component_size=10, et_to_ncr_threshold=17)
    assert (out == 3).sum() == 0
    assert out[16, 16, 16] == 0
    # off by default: unchanged
    np.testing.assert_array_equal(postprocess(v), v)
    assert describe(0, 0)["enabled"] is False and describe(10, 0)["enabled"] is True
