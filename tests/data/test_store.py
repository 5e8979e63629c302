"""The PyTables store: round trip against the source NIfTI, views, metadata, safety."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from braintseg.data import open_store
from braintseg.data.nifti import find_cases, header_from_hex, load_case
from braintseg.data.preprocess import crop, normalize
from braintseg.data.store import SCHEMA_VERSION, SliceStore
from braintseg.errors import DataError


def test_round_trip_matches_source(synthetic_root: Path, synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    cases = {c.case_id: c for c in find_cases(synthetic_root)}
    assert store.case_ids == sorted(cases)
    box = store.crop_box
    for i, cid in enumerate(store.case_ids):
        loaded = load_case(cases[cid])
        expected, _ = normalize(loaded.images)
        images, labels = store.read_case(i)
        assert images.dtype == np.float16 and labels.dtype == np.uint8
        np.testing.assert_allclose(images, crop(expected, box), atol=2e-3, rtol=1e-3)
        np.testing.assert_array_equal(labels, crop(loaded.labels, box))
        assert labels.sum() > 0
    store.close()


def test_views_are_transposes(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    images, labels = store.read_case(1)
    X, Y, Z = store.volume_shape
    ax_i, ax_l = store.read_view(1, "axial")
    co_i, _ = store.read_view(1, "coronal")
    sa_i, sa_l = store.read_view(1, "sagittal")
    assert ax_i.shape == (Z, X, Y, 4) and co_i.shape == (Y, X, Z, 4) and sa_i.shape == (X, Y, Z, 4)
    np.testing.assert_array_equal(ax_i[5], images[:, :, 5])
    np.testing.assert_array_equal(co_i[7], images[:, 7, :])
    np.testing.assert_array_equal(sa_l[9], labels[9])
    blk_i, blk_l = store.read_slices(1, "axial", 3, 9)
    np.testing.assert_array_equal(blk_i, ax_i[3:9])
    np.testing.assert_array_equal(blk_l, ax_l[3:9])
    assert blk_i.flags.c_contiguous and ax_i.flags.c_contiguous
    with pytest.raises(DataError, match="out of range"):
        store.read_slices(1, "axial", 0, Z + 1)
    with pytest.raises(DataError, match="unknown view"):
        store.read_view(1, "transverse")


def test_tumour_slices_match_labels(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    for i in range(store.n_cases):
        _, labels = store.read_case(i)
        for view, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
            other = tuple(a for a in range(3) if a != axis)
            expected = np.flatnonzero(labels.any(axis=other))
            np.testing.assert_array_equal(store.tumour_slices(i, view), expected)
            assert 0 < len(expected) < labels.shape[axis]


def test_metadata_and_geometry(synthetic_root: Path, synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    assert store.schema_version == SCHEMA_VERSION
    assert store.conventions["BraTS-GLI-00003-000"] == "brats2023"
    assert store.grades == {"BraTS-GLI-00003-000": None, "Brats18_SYN_000_1": "HGG",
                            "Brats18_SYN_001_1": "LGG", "Brats18_SYN_002_1": "HGG"}
    meta = store.case_meta(store.index_of("Brats18_SYN_001_1"))  # the oblique-affine case
    src = nib.load(meta["source_files"]["flair"])
    np.testing.assert_allclose(meta["affine"], src.affine)
    assert not np.allclose(meta["affine"], np.diag(np.diag(meta["affine"])))
    assert meta["original_shape"] == [48, 48, 32]
    assert meta["crop_box"] == list(store.crop_box)
    assert header_from_hex(meta["header_hex"]).binaryblock == src.header.binaryblock
    assert [s["modality"] for s in meta["normalization"]] == ["flair", "t1", "t1ce", "t2"]


def test_pickles_as_path_and_reopens(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    first = store.read_slices(0, "sagittal", 0, 4)[0]
    clone = pickle.loads(pickle.dumps(store))
    assert clone._h is None and clone.case_ids == store.case_ids
    np.testing.assert_array_equal(clone.read_slices(0, "sagittal", 0, 4)[0], first)
    assert len(pickle.dumps(store)) < 500


def test_nothing_pickled_in_file(synthetic_store: Path) -> None:
    """Every attribute is a number or a string and no dataset is opaque (pickles are)."""
    seen: list[str] = []

    def visit(name: str, obj: object) -> None:
        for key, value in obj.attrs.items():  # type: ignore[attr-defined]
            arr = np.asarray(value)
            assert arr.dtype.kind in "biufSUO", (name, key, arr.dtype)
            if arr.dtype.kind in "SO":
                raw = value if isinstance(value, bytes) else str(value).encode()
                assert not raw.startswith(b"\x80"), (name, key)
            seen.append(key)
        if isinstance(obj, h5py.Dataset):
            assert obj.dtype.kind != "V", name

    with h5py.File(synthetic_store, "r") as f:
        visit("/", f)
        f.visititems(visit)
        header = json.loads(f.attrs["braintseg_json"])
    assert "braintseg_json" in seen and header["schema_version"] == SCHEMA_VERSION


def test_open_store_errors(tmp_path: Path, synthetic_store: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_store(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="not an HDF5 file"):
        open_store(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not a finished braintseg store"):
        open_store(other)
    old = tmp_path / "old.h5"
    old.write_bytes(synthetic_store.read_bytes())
    with h5py.File(old, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DataError, match="schema version 99"):
        open_store(old)


def test_fold_cases(synthetic_store: Path) -> None:
    store = SliceStore(synthetic_store)
    assert len(store.folds) == 2
    train, val = store.fold_cases(1)
    assert set(train) | set(val) == set(store.case_ids) and not set(train) & set(val)
    with pytest.raises(DataError, match=r"valid folds: 0\.\.1"):
        store.fold_cases(2)
