"""The PyTables store: round trip against the source NIfTI, views, metadata, safety."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tables

from braintseg.config import Config
from braintseg.data.preprocess import apply_normalization, crop, normalization_stats, normalize
from braintseg.errors import DataError
from braintseg.preparation.prepare import run_prepare
from braintseg.sources.brats import find_cases, header_from_hex, load_case
from braintseg.sources.synthetic import write_case
from braintseg.store.codec import Int16Decoder, encode_int16, int16_bounds, move_to_front
from braintseg.store.read import SCHEMA_VERSION, SliceStore, open_store


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
    assert not clone.is_open and clone.case_ids == store.case_ids
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


# --------------------------------------------------------------------------- int16 stores


@pytest.fixture(scope="module")
def int16_store(synthetic_root: Path, smoke_cfg: Config,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = smoke_cfg.replace(store={"dtype": "int16"})
    return run_prepare(cfg, synthetic_root, tmp_path_factory.mktemp("i16") / "s.h5", workers=1)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))  # bit for bit


def test_int16_store_reads_like_float16(synthetic_store: Path, int16_store: Path) -> None:
    f16, i16 = open_store(synthetic_store), open_store(int16_store)
    assert (f16.image_dtype, i16.image_dtype) == ("float16", "int16")
    assert i16.case_ids == f16.case_ids and i16.crop_box == f16.crop_box
    for i in range(f16.n_cases):
        (a, la), (b, lb) = f16.read_case(i), i16.read_case(i)
        _same(a, b)
        np.testing.assert_array_equal(la, lb)
        assert np.abs(a.astype(np.float32)).max() > 1.0  # really normalised intensities
        for view, size in zip(("sagittal", "coronal", "axial"), f16.volume_shape, strict=True):
            _same(f16.read_view(i, view)[0], i16.read_view(i, view)[0])
            for start, stop in ((0, 1), (3, 19), (size - 5, size)):
                (a, la), (b, lb) = f16.read_slices(i, view, start, stop), \
                    i16.read_slices(i, view, start, stop)
                _same(a, b)
                np.testing.assert_array_equal(la, lb)
    f16.close()
    i16.close()


def test_int16_store_holds_clipped_source(synthetic_root: Path, int16_store: Path) -> None:
    store = open_store(int16_store)
    cases = {c.case_id: c for c in find_cases(synthetic_root)}
    with tables.open_file(str(int16_store), "r") as f:  # h5py has no blosc filter
        assert f.root.images.dtype == np.int16
        raw = f.root.images[0]
    source = crop(load_case(cases[store.case_ids[0]]).images, store.crop_box)
    for c, stat in enumerate(store.case_meta(0)["normalization"]):
        lo, hi = int16_bounds(stat)  # type: ignore[misc]
        expected = np.where(source[..., c] != 0, np.clip(source[..., c], lo, hi), 0)
        np.testing.assert_array_equal(raw[..., c], expected)
        assert (raw[..., c] == lo).any() and (raw[..., c] == hi).any()  # clipping happened
    assert int16_store.stat().st_size < Path(store.path).stat().st_size * 1.01
    store.close()


def test_int16_none_normalization_keeps_source(synthetic_root: Path, smoke_cfg: Config,
                                               tmp_path: Path) -> None:
    cfg = smoke_cfg.replace(data={"normalization": "none"}, store={"dtype": "int16"})
    store = open_store(run_prepare(cfg, synthetic_root, tmp_path / "s.h5", workers=1))
    case = {c.case_id: c for c in find_cases(synthetic_root)}[store.case_ids[2]]
    images, _ = store.read_case(2)
    expected = crop(load_case(case).images, store.crop_box).astype(np.float16)
    _same(images, np.ascontiguousarray(expected))
    store.close()


@pytest.mark.parametrize(("scale", "pattern"), [
    (0.37, r"case Brats18_F_0_1: modality 'flair' \(Brats18_F_0_1_flair.nii.gz\): non-integer "
           r"intensities .*use store.dtype float16"),
    (3.0e3, r"case Brats18_F_0_1: modality 'flair' \(Brats18_F_0_1_flair.nii.gz\): brain "
            r"intensities .* do not fit int16 .*use store.dtype float16"),
])
def test_int16_rejects_inexact_sources(tmp_path: Path, smoke_cfg: Config, scale: float,
                                       pattern: str) -> None:
    folder = write_case(tmp_path / "in", "Brats18_F_0_1", (24, 24, 16), seed=3)
    flair = folder / "Brats18_F_0_1_flair.nii.gz"
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.float32) * scale, img.affine),
             flair)
    write_case(tmp_path / "in", "Brats18_F_1_1", (24, 24, 16), seed=4)
    cfg = smoke_cfg.replace(store={"dtype": "int16"})
    with pytest.raises(DataError, match=pattern):
        run_prepare(cfg, tmp_path / "in", tmp_path / "s.h5", workers=1)
    assert not (tmp_path / "s.h5").exists()
    # the float16 store takes the same input
    assert open_store(run_prepare(smoke_cfg, tmp_path / "in", tmp_path / "s.h5",
                                  workers=1)).n_cases == 2


@pytest.mark.parametrize("channels", [4, 3])
def test_decoder_matches_apply_normalization(channels: int) -> None:
    """Every storable value, background and both clip ends, for the packed (4 channels) and the
    per-channel (3) paths."""
    rng = np.random.default_rng(7)
    source = rng.integers(-40, 3000, size=(30, 20, 70, channels)).astype(np.float32)
    source[rng.random(source.shape) < 0.3] = 0
    stats = normalization_stats(source, (2.5, 97.5), [f"m{c}" for c in range(channels)])
    bounds = [(0.4, 2500.5), (-12.5, 2999.0), (100.25, 1800.75), (7.0, 2000.5)]
    for stat, (lo, hi) in zip(stats, bounds, strict=False):  # fractional, in [0, 1), negative
        stat.update(clip_lo=lo, clip_hi=hi)
    raw = encode_int16(source, stats, [f"m{c}" for c in range(channels)])
    expected = apply_normalization(source, stats, np.float16)
    _same(Int16Decoder(stats)(raw), expected)
    for axis in (1, 2):  # the transpose folded into decoding
        _same(Int16Decoder(stats)(raw, axis), np.ascontiguousarray(np.moveaxis(expected, axis, 0)))


@pytest.mark.parametrize(("dtype", "channels"), [(np.float16, 4), (np.float32, 4),
                                                 (np.float16, 3), (np.uint8, 1)])
def test_move_to_front_is_moveaxis(dtype: type, channels: int) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**8, size=(9, 7, 5, channels * np.dtype(dtype).itemsize), dtype=np.uint8)
    a = a.view(dtype)  # arbitrary bit patterns, NaN payloads included, must survive unchanged
    for axis in range(3):
        moved = move_to_front(a, axis)
        assert moved.flags.c_contiguous and moved.dtype == a.dtype
        np.testing.assert_array_equal(moved.view(np.uint8), np.ascontiguousarray(
            np.moveaxis(a, axis, 0)).view(np.uint8))
