"""The fourth source, BRATS 2013 single axial slices (braintseg.sources.brats2013): finding,
loading (canvas padding, whole-tumour masks), errors naming the file, detection against the
other sources, write-back, and ``braintseg prepare`` on synthetic and (when present) real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.errors import DataError
from braintseg.sources import brats, brats2013, figshare, lgg
from braintseg.sources.brats2013 import CANVAS, find_cases, from_canvas, load_case
from braintseg.sources.registry import detect_format
from braintseg.sources.synthetic import write_case
from braintseg.store.read import open_store

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "brats2013_2d"
#: whole-tumour pixels (atropos_truth ≥ 4) of the real slices, counted with nibabel
REAL_TUMOUR = {"BRATS_HG0001": 2380, "BRATS_HG0002": 1483, "BRATS_HG0003": 3933,
               "BRATS_HG0005": 1538, "BRATS_HG0006": 3869, "BRATS_HG0008": 3652}
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
#: synthetic cases: id → {slice number: (H, W)}
CASES = {"BRATS_HG0001": {9: (12, 16), 10: (12, 16)}, "BRATS_LG0002": {4: (16, 20)},
         "BRATS_HG0003": {7: (20, 12)}}


def _save(path: Path, data: np.ndarray) -> None:
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(AFFINE, code=2)
    img.set_sform(AFFINE, code=1)
    nib.save(img, str(path))


def _truth(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, shape).astype(np.float32)
    truth[2:6, 3:7] = rng.integers(4, 8, (4, 4))  # a tumour block with all four labels + 3
    return truth


def write_slices(root: Path, cases: dict[str, dict[int, tuple[int, int]]] = CASES) -> Path:
    """Synthetic BRATS 2013 folders: channel c of slice k holds ``100 c + k + noise`` inside a
    nonzero brain, and ``truth`` is returned alongside in ``<case>_atropos_truth``."""
    for n, (case, slices) in enumerate(cases.items()):
        folder = root / case
        folder.mkdir(parents=True)
        for k, shape in slices.items():
            rng = np.random.default_rng(100 * n + k)
            for c, kind in enumerate(brats2013.KINDS):
                image = (100 * (c + 1) + k + rng.random(shape)).astype(np.float32)
                _save(folder / f"{case}_{kind}_slice{k}.nii.gz", image)
            _save(folder / f"{case}_atropos_truth_slice{k}.nii.gz", _truth(shape, n + k))
            _save(folder / f"{case}_MASK_slice{k}.nii.gz", np.ones((*shape, 1), np.float32))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_slices(tmp_path / "in")


def test_find_and_load_pad_onto_the_canvas(root: Path) -> None:
    cases = find_cases(root)
    assert [c.case_id for c in cases] == sorted(CASES)
    first = cases[0]
    assert first.slice_ids == ("BRATS_HG0001_9", "BRATS_HG0001_10")  # numeric order
    assert [c.grade for c in cases] == ["HGG", "HGG", "LGG"]
    assert first.extra["source_sizes"] == [[12, 16], [12, 16]]
    assert first.extra["pad_offsets"] == [[(240 - 12) // 2, (240 - 16) // 2]] * 2
    for files in cases:
        case = load_case(files)
        assert case.channels == ("flair", "t1", "t1ce", "t2")
        assert case.classes.tolist() == [0] * len(files.slice_ids)
        for k, (img, mask) in enumerate(zip(case.images, case.masks, strict=True)):
            assert img.shape == (*CANVAS, 4) and img.dtype == np.float32
            assert mask.shape == CANVAS and mask.dtype == np.uint8
            size, offset = files.extra["source_sizes"][k], files.extra["pad_offsets"][k]
            inner = from_canvas(img, size, offset)
            for c, kind in enumerate(brats2013.KINDS):  # channel order FLAIR, T1, T1C, T2
                name = files.images[k].name.replace("_FLAIR_", f"_{kind}_")
                raw = np.asanyarray(nib.load(files.images[k].parent / name).dataobj)
                np.testing.assert_array_equal(inner[..., c], raw)
            truth = np.asanyarray(nib.load(files.masks[k]).dataobj)
            np.testing.assert_array_equal(from_canvas(mask, size, offset), truth >= 4)
            assert int(mask.sum()) == int((truth >= 4).sum()) > 0  # nothing outside the slice
            assert int((img != 0).any(-1).sum()) == size[0] * size[1]


def test_detection_is_unique_and_claims_no_other_layout(root: Path, tmp_path: Path) -> None:
    assert detect_format(root) == "brats2013"
    assert brats.detect(root) is None  # NIfTI, but not BraTS volume names
    assert lgg.detect(root) is None and figshare.detect(root) is None
    volumes = tmp_path / "volumes"
    write_case(volumes / "HGG", "Brats18_X_1", shape=(8, 8, 8))
    assert brats2013.detect(volumes) is None and detect_format(volumes) == "brats"
    write_case(root, "Brats18_X_2", shape=(8, 8, 8))
    with pytest.raises(DataError, match=r"mixes input formats \(brats: .*, brats2013: "):
        detect_format(root)


def _break(root: Path, how: str) -> Path:
    folder = root / "BRATS_HG0003"
    name = {"missing": "T1C", "shape": "T2", "nan": "T1", "unreadable": "FLAIR",
            "labels": "atropos_truth", "fraction": "atropos_truth", "prefix": "T2",
            "empty": "T1"}[how]
    path = folder / f"BRATS_HG0003_{name}_slice7.nii.gz"
    if how == "missing":
        path.unlink()
    elif how == "shape":
        _save(path, np.ones((20, 14), np.float32))
    elif how == "nan":
        data = np.ones((20, 12), np.float32)
        data[3, 4] = np.nan
        _save(path, data)
    elif how == "unreadable":
        path.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 20)
    elif how in ("labels", "fraction"):
        data = _truth((20, 12), 1)
        data[0, 0] = 9 if how == "labels" else 2.5
        _save(path, data)
    elif how == "prefix":
        path = path.rename(folder / "BRATS_HG0004_T2_slice7.nii.gz")
    elif how == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("how", "pattern"), [
    ("missing", r"missing modality T1C of slice 7 beside BRATS_HG0003_FLAIR_slice7"),
    ("shape", r"shape 20x14 differs from BRATS_HG0003_FLAIR_slice7.nii.gz's 20x12"),
    ("nan", r"contains NaN or Inf"),
    ("unreadable", r"cannot read as NIfTI"),
    ("labels", r"label values \{9\}; expected integers 0-7"),
    ("fraction", r"label values \{2.5\}"),
    ("prefix", r"names case 'BRATS_HG0004'; expected 'BRATS_HG0003'"),
    ("empty", r"is empty \(0 bytes\)"),
])
def test_bad_input_is_one_line_naming_the_file(root: Path, how: str, pattern: str) -> None:
    path = _break(root, how)
    with pytest.raises(DataError, match=pattern) as info:
        for files in find_cases(root):
            load_case(files)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    cases, problems = brats2013.scan_cases(root)
    if problems:  # found while scanning: the other cases stay usable (--skip-invalid)
        assert [p[0] for p in problems] == ["BRATS_HG0003"] and len(cases) == 2


def test_labels_optional_and_oversized_slices(root: Path, tmp_path: Path) -> None:
    for truth in root.rglob("*atropos_truth*"):
        truth.unlink()
    with pytest.raises(DataError, match=r"missing label file atropos_truth .*--no-labels"):
        find_cases(root)
    case = load_case(find_cases(root, require_labels=False)[0])
    assert case.masks is None and case.files.masks is None
    big = write_slices(tmp_path / "big", {"BRATS_HG0009": {1: (12, 241)}})
    with pytest.raises(DataError, match=r"slice size 12x241 is larger than the 240x240 canvas"):
        find_cases(big)


def test_prediction_goes_back_to_the_slice_grid(root: Path, tmp_path: Path) -> None:
    files = find_cases(root)[2]  # BRATS_LG0002, 16x20
    case = load_case(files)
    out = brats2013.save_prediction(case.masks[0], files.extra, 0,
                                    tmp_path / "pred.nii.gz")
    saved = nib.load(out)
    source = nib.load(files.masks[0])
    assert saved.shape == (16, 20) and saved.get_data_dtype() == np.uint8
    np.testing.assert_allclose(saved.affine, source.affine)
    assert int(saved.header["qform_code"]) == 2 and int(saved.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj),
                                  np.asanyarray(source.dataobj) >= 4)
    with pytest.raises(DataError, match="expected the 240x240 canvas"):
        brats2013.save_prediction(np.zeros((16, 20)), files.extra, 0, tmp_path / "p.nii.gz")


def _prepare(root: Path, store: Path) -> None:
    result = CliRunner().invoke(cli, ["prepare", "-i", str(root), "-o", str(store),
                                      "-c", str(REPO / "configs" / "smoke.yaml"),
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output


def _tumour_pixels(store: Path) -> tuple[dict[str, int], tuple[int, int], int]:
    with open_store(store) as s:
        counts = {cid: int(s.read_case(i)[1].sum()) for i, cid in enumerate(s.case_ids)}
        return counts, s.slice_shape("slice"), s.n_channels


def test_prepare_synthetic(root: Path, tmp_path: Path) -> None:
    _prepare(root, tmp_path / "s.h5")
    counts, shape, channels = _tumour_pixels(tmp_path / "s.h5")
    expected = {c.case_id: sum(int((np.asanyarray(nib.load(m).dataobj) >= 4).sum())
                               for m in c.masks) for c in find_cases(root)}
    assert counts == expected and shape == CANVAS and channels == 4
    with open_store(tmp_path / "s.h5") as s:
        meta = s.case_meta(s.index_of("BRATS_HG0001"))
        assert meta["format"] == "brats2013" and meta["source_sizes"] == [[12, 16], [12, 16]]


@pytest.mark.skipif(not REAL.is_dir(), reason="shared BRATS 2013 slices not present")
def test_prepare_real_slices(tmp_path: Path) -> None:
    root = tmp_path / "brats2013_2d"
    shutil.copytree(REAL, root)
    assert detect_format(root) == "brats2013"
    _prepare(root, tmp_path / "real.h5")
    counts, shape, channels = _tumour_pixels(tmp_path / "real.h5")
    assert counts == REAL_TUMOUR and shape == CANVAS and channels == 4


def test_evaluate_and_report_take_the_source(root: Path, tmp_path: Path) -> None:
    import tifffile

    pred = tmp_path / "pred"
    for files in find_cases(root):  # perfect predictions, as predict writes them (canvas size)
        (pred / files.case_id).mkdir(parents=True)
        for sid, mask in zip(files.slice_ids, load_case(files).masks, strict=True):
            tifffile.imwrite(pred / files.case_id / f"{sid}_mask.tif", mask * np.uint8(255))
    result = CliRunner().invoke(cli, ["evaluate", "-p", str(pred), "-t", str(root)])
    assert result.exit_code == 0, result.output
    assert "3 patients, 4 slices" in result.output and "pooled Dice 100.00 %" in result.output
    result = CliRunner().invoke(cli, ["report", str(pred), "-t", str(root),
                                      "-o", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "rep").glob("*_montage.png")) == [
        f"{c}_montage.png" for c in sorted(CASES)]
