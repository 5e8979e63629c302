"""Finding and loading BraTS cases; writing labels back in the source geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from braintseg.data.preprocess import to_source
from braintseg.errors import DataError
from braintseg.sources.brats import find_cases, load_case, save_labels, scan_cases
from braintseg.sources.synthetic import make_case_arrays, write_case

SHAPE = (24, 24, 16)


def test_find_nested_and_flat(synthetic_root: Path) -> None:
    cases = find_cases(synthetic_root)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00003-000", "Brats18_SYN_000_1",
                                          "Brats18_SYN_001_1", "Brats18_SYN_002_1"]
    by_id = {c.case_id: c for c in cases}
    assert by_id["Brats18_SYN_001_1"].grade == "LGG" and by_id["Brats18_SYN_000_1"].grade == "HGG"
    c23 = by_id["BraTS-GLI-00003-000"]
    assert c23.convention == "brats2023" and c23.grade is None
    assert c23.images["flair"].name.endswith("-t2f.nii.gz")
    assert c23.images["t1"].name.endswith("-t1n.nii.gz")
    # a case folder given directly as the root
    one = find_cases(by_id["Brats18_SYN_000_1"].folder)
    assert [c.case_id for c in one] == ["Brats18_SYN_000_1"]


def test_exact_suffix_t1_vs_t1ce_and_plain_nii(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "Brats18_X_1", SHAPE, seed=3)
    t1 = folder / "Brats18_X_1_t1.nii.gz"
    nib.save(nib.load(t1), folder / "Brats18_X_1_t1.nii")  # .nii works too...
    t1.unlink()
    (case,) = find_cases(tmp_path)
    assert case.images["t1"].name == "Brats18_X_1_t1.nii"
    assert case.images["t1ce"].name == "Brats18_X_1_t1ce.nii.gz"
    loaded = load_case(case)
    t1ce = np.asanyarray(nib.load(case.images["t1ce"]).dataobj)
    np.testing.assert_array_equal(loaded.images[..., 2], t1ce)
    assert not np.array_equal(loaded.images[..., 1], loaded.images[..., 2])


def test_load_case_matches_nibabel(synthetic_root: Path) -> None:
    for case in find_cases(synthetic_root):
        loaded = load_case(case)
        assert loaded.images.shape == (48, 48, 32, 4) and loaded.images.dtype == np.float32
        for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
            ref = nib.load(case.images[m])
            np.testing.assert_array_equal(loaded.images[..., c], ref.get_fdata())
        raw = nib.load(case.seg).get_fdata()
        np.testing.assert_array_equal(to_source(loaded.labels, case.convention), raw)
        np.testing.assert_allclose(loaded.affine, nib.load(case.images["flair"]).affine)


def test_missing_seg_allowed_without_labels(tmp_path: Path) -> None:
    write_case(tmp_path, "Brats18_Y_1", SHAPE, with_seg=False)
    with pytest.raises(DataError, match=r"case Brats18_Y_1: missing label file 'seg'"):
        find_cases(tmp_path)
    (case,) = find_cases(tmp_path, require_labels=False)
    assert case.seg is None and load_case(case).labels is None


def test_scan_collects_problems(tmp_path: Path) -> None:
    write_case(tmp_path, "Brats18_A_1", SHAPE)
    bad = write_case(tmp_path, "Brats18_B_1", SHAPE)
    (bad / "Brats18_B_1_t2.nii.gz").unlink()
    cases, problems = scan_cases(tmp_path)
    assert [c.case_id for c in cases] == ["Brats18_A_1"]
    assert problems == [("Brats18_B_1", problems[0][1])]
    assert "missing modality 't2'" in problems[0][1] and "Brats18_B_1_t2.nii.gz" in problems[0][1]


def test_duplicate_case_ids(tmp_path: Path) -> None:
    write_case(tmp_path / "HGG", "Brats18_A_1", SHAPE)
    shutil.copytree(tmp_path / "HGG", tmp_path / "LGG")
    with pytest.raises(DataError, match=r"case ids \['Brats18_A_1'\] occur in more than one"):
        find_cases(tmp_path)


def test_save_labels_keeps_geometry(tmp_path: Path) -> None:
    oblique = np.array([[-0.9, 0.1, 0, 90], [0.1, -1.1, 0.05, 120], [0, 0, 1.5, -60], [0, 0, 0, 1]])
    folder = write_case(tmp_path, "Brats18_O_1", SHAPE, affine=oblique)
    src = nib.load(folder / "Brats18_O_1_flair.nii.gz")
    _, labels = make_case_arrays(SHAPE, seed=0)
    out = save_labels(to_source(labels, "brats2018"), src.header, src.affine,
                      tmp_path / "x.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, oblique, atol=1e-5)
    assert img.get_data_dtype() == np.uint8
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_zooms(), src.header.get_zooms(), rtol=1e-5)
    assert set(np.unique(np.asanyarray(img.dataobj))) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), to_source(labels, "brats2018"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("klass", [nib.Nifti1Image, nib.Nifti2Image])
def test_one_call_gunzip_equals_nibabel(tmp_path: Path, klass: type) -> None:
    """The fast reader (whole-file gunzip, ISA-L when installed) gives nibabel's own image:
    NIfTI-1 and NIfTI-2, scaled int16 data, a non-identity affine and the header fields."""
    from braintseg.sources.brats import load_image

    rng = np.random.default_rng(0)
    affine = np.array([[-0.9, 0.1, 0, 90], [0, 1.1, 0, -120], [0, 0, 2.5, 5], [0, 0, 0, 1]])
    img = klass(rng.integers(-300, 3000, SHAPE).astype(np.int16), affine)
    img.header.set_slope_inter(0.5, 10.0)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=4)
    path = tmp_path / "x_t1.nii.gz"
    nib.save(img, path)
    ours, ref = load_image(path), nib.load(path)
    assert type(ours) is type(ref) is klass
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(ref.dataobj))
    np.testing.assert_array_equal(ours.affine, ref.affine)
    assert ours.header.get_qform(coded=True)[1] == 1 and ours.header.get_sform(coded=True)[1] == 4
    assert bytes(ours.header.binaryblock) == bytes(ref.header.binaryblock)
