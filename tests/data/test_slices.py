"""2D slice data sets: LGG TIFF and figshare .mat readers, format detection, slice store,
patient-level folds, bad input (each a one-line DataError naming the file)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tables
import tifffile
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.config import Config, load_config
from braintseg.data.preprocess import apply_normalization
from braintseg.errors import ConfigError, DataError
from braintseg.preparation.prepare import run_prepare
from braintseg.sources.base import from_store_size, to_stack
from braintseg.sources.figshare import find_cases as find_mat_cases
from braintseg.sources.figshare import folds_from_cvind, read_cvind, read_slice
from braintseg.sources.lgg import find_cases, load_case
from braintseg.sources.registry import detect_format
from braintseg.sources.synthetic import write_figshare, write_lgg, write_mat_slice
from braintseg.store.read import SliceStore

REPO = Path(__file__).resolve().parents[2]
SHARED = next((p for p in (REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data")
               if p.is_dir()), REPO.parent / "shared" / "data")
LGG = SHARED / "lgg_kaggle_3m"
CVIND = SHARED / "figshare_cheng" / "cvind.mat"


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(REPO / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def lgg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lgg(tmp_path_factory.mktemp("lgg"), n_patients=4, n_slices=12, size=32)


def _copy(root: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(root, tmp / "copy"))


def _stored_equals_direct_read(store_path: Path, root: Path, cfg: Config) -> None:
    store = SliceStore(store_path)
    cases = find_cases(root)
    assert store.layout == "slices" and store.case_ids == [c.case_id for c in cases]
    for i, files in enumerate(cases):
        meta = store.case_meta(i)
        numbers = [int(s.rsplit("_", 1)[1]) for s in meta["slice_ids"]]
        assert numbers == sorted(numbers) == list(range(1, len(numbers) + 1))
        direct = np.stack([tifffile.imread(p) for p in files.images])
        masks = np.stack([tifffile.imread(p) for p in files.masks]) > 0
        images, labels = store.read_case(i)
        assert labels is not None and np.array_equal(labels, masks.astype(np.uint8))
        expected = apply_normalization(direct.astype(np.float32), meta["normalization"],
                                       np.float16)
        assert np.array_equal(images, expected)
        # the one reading API: a block of slices equals the same rows of the whole case
        x, y = store.read_slices(i, "slice", 2, 5)
        assert np.array_equal(x, images[2:5]) and np.array_equal(y, labels[2:5])
        assert list(store.tumour_slices(i, "slice")) == list(np.flatnonzero(masks.any((1, 2))))
    folds = [set(f) for f in store.folds]
    assert sum(len(f) for f in folds) == store.n_cases == len(set().union(*folds))
    store.close()


def test_lgg_store_matches_tifffile_synthetic(lgg_root: Path, cfg: Config,
                                              tmp_path: Path) -> None:
    out = run_prepare(cfg, lgg_root, tmp_path / "lgg.h5", workers=1)
    _stored_equals_direct_read(out, lgg_root, cfg)
    store = SliceStore(out)
    assert store.grades["TCGA_XX_1000_20000100"] == "1"  # from data.csv
    assert store.slice_shape("axial") == (32, 32) and store.views == ("slice",)
    with pytest.raises(DataError, match="only view is 'slice'"):
        store.read_view(0, "sagittal")
    store.close()


@pytest.mark.skipif(not LGG.is_dir(), reason="shared LGG kaggle_3m data not present")
def test_lgg_store_matches_tifffile_real(cfg: Config, tmp_path: Path) -> None:
    out = run_prepare(cfg.replace(data={"n_folds": 4}), LGG, tmp_path / "lgg.h5", workers=1)
    store = SliceStore(out)
    assert store.n_cases == 12 and sum(store.n_slices(i, "slice") for i in range(12)) == 409
    assert store.slice_shape("slice") == (256, 256) and store.n_channels == 3
    store.close()
    _stored_equals_direct_read(out, LGG, cfg)


def test_folds_by_patient_stratified_and_validation_list(lgg_root: Path, cfg: Config,
                                                         tmp_path: Path) -> None:
    ids = [c.case_id for c in find_cases(lgg_root)]
    listing = tmp_path / "val.txt"
    listing.write_text(f"# the validation patients\n{ids[1]}\n\n{ids[3]}\n")
    out = run_prepare(cfg, lgg_root, tmp_path / "v.h5", workers=1, validation_cases=listing)
    store = SliceStore(out)
    assert store.fold_cases(0) == (sorted([ids[0], ids[2]]), sorted([ids[1], ids[3]]))
    store.close()
    listing.write_text(f"{ids[1]}_3\n")
    with pytest.raises(DataError, match="is a slice of patient .*folds are by patient"):
        run_prepare(cfg, lgg_root, tmp_path / "w.h5", workers=1, validation_cases=listing)
    listing.write_text("nobody\n")
    with pytest.raises(DataError, match="'nobody' is not in the input"):
        run_prepare(cfg, lgg_root, tmp_path / "w.h5", workers=1, validation_cases=listing)


def test_numeric_slice_order(tmp_path: Path) -> None:
    root = write_lgg(tmp_path / "r", n_patients=1, n_slices=11, size=16, data_csv=False)
    (files,) = find_cases(root)
    assert [s.rsplit("_", 1)[1] for s in files.slice_ids] == [str(n) for n in range(1, 12)]
    assert files.grade is None


# --------------------------------------------------------------------------- bad input
def _patient(root: Path) -> Path:
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


@pytest.mark.parametrize("breakage, message", [
    ("drop_mask", "image without its mask"),
    ("drop_image", "mask without its image"),
    ("mask_size", "mask size 16x8 differs from its image's 16x16"),
    ("mask_values", r"mask values \{0, 7\}; expected 0/255"),
    ("not_tiff", "not a readable TIFF image"),
    ("empty_folder", "holds no slices"),
])
def test_lgg_bad_input_names_the_file(tmp_path: Path, breakage: str, message: str) -> None:
    root = write_lgg(tmp_path / "r", n_patients=2, n_slices=3, size=16)
    folder = _patient(root)
    name = f"{folder.name}_2"
    culprit = folder
    if breakage == "drop_mask":
        (folder / f"{name}_mask.tif").unlink()
        culprit = folder / f"{name}.tif"
    elif breakage == "drop_image":
        (folder / f"{name}.tif").unlink()
        culprit = folder / f"{name}_mask.tif"
    elif breakage == "mask_size":
        culprit = folder / f"{name}_mask.tif"
        tifffile.imwrite(culprit, np.zeros((16, 8), np.uint8))
    elif breakage == "mask_values":
        culprit = folder / f"{name}_mask.tif"
        tifffile.imwrite(culprit, np.array([[0, 7]] * 16 * 8, np.uint8).reshape(16, 16))
    elif breakage == "not_tiff":
        culprit = folder / f"{name}.tif"
        culprit.write_text("this is not an image\n")
    else:
        culprit = root / "TCGA_ZZ_9999_20000101"
        culprit.mkdir()
    with pytest.raises(DataError, match=message) as info:
        for files in find_cases(root):
            load_case(files)
    assert str(culprit) in str(info.value) and "\n" not in str(info.value)


def test_detection_none_mixed_and_forced(tmp_path: Path, lgg_root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="nor any other input format it matches"):
        detect_format(empty)
    assert detect_format(lgg_root) == "lgg"
    mixed = _copy(lgg_root, tmp_path)
    write_figshare(mixed, {"P1": [(1, 16, 1)]})
    with pytest.raises(DataError, match=r"mixes input formats \(figshare: .*1\.mat.*, lgg: "):
        detect_format(mixed)
    assert detect_format(mixed, "lgg") == "lgg"
    with pytest.raises(ConfigError, match="--format must be one of"):
        detect_format(mixed, "dicom")


# --------------------------------------------------------------------------- figshare
def test_mat_slice_round_trip_both_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for size in (64, 32):
        image = rng.integers(-5, 3000, (size, size)).astype(np.int16)
        mask = np.zeros((size, size), np.uint8)
        mask[2:9, 5:size - 3] = 1  # not symmetric: a missing transpose shows
        path = write_mat_slice(tmp_path / f"{size}.mat", image, mask, 3, "PID-0042")
        assert path.read_bytes()[:10] == b"MATLAB 7.3" and path.read_bytes()[126:128] == b"IM"
        got_image, got_mask, label, pid = read_slice(path)
        assert np.array_equal(got_image, image) and got_image.dtype == np.int16
        assert np.array_equal(got_mask, mask) and label == 3 and pid == "PID-0042"


def test_figshare_prepare_groups_by_pid_mixed_sizes(tmp_path: Path, cfg: Config) -> None:
    root = write_figshare(tmp_path / "fig", {
        "A1": [(1, 64, 1), (2, 64, 1)], "B2": [(3, 32, 2), (4, 32, 2)],
        "C3": [(5, 64, 3)], "D4": [(6, 64, 3), (7, 32, 3)]})
    out = run_prepare(cfg, root, tmp_path / "fig.h5", workers=1)
    store = SliceStore(out)
    assert store.case_ids == ["A1", "B2", "C3", "D4"] and store.slice_shape("slice") == (64, 64)
    assert store.conventions["B2"] == "tumour_type" and store.grades["B2"] == "2"
    b2 = store.index_of("B2")
    assert store.slice_sizes(b2).tolist() == [[32, 32], [32, 32]]
    assert store.slice_classes(b2).tolist() == [2, 2]
    _, labels = store.read_case(b2)
    _, mask, _, _ = read_slice(root / "3.mat")
    assert labels is not None and np.array_equal(labels[0], mask.repeat(2, 0).repeat(2, 1))
    assert "integer pixel repeat" in store.config.get("resize_rule", store._header["resize_rule"])
    store.close()


def test_pixel_repeat_and_back() -> None:
    from braintseg.sources.base import SliceCase, SliceFiles

    img = np.arange(16, dtype=np.int16).reshape(4, 4, 1)
    case = SliceCase(SliceFiles("p", "figshare", "tumour_type", ("1",), (Path("1.mat"),), None),
                     [img], None, np.array([1], np.uint8), ("t1ce",))
    stack, masks, shapes = to_stack(case, (8, 8))
    assert stack.shape == (1, 8, 8, 1) and shapes == [[4, 4]] and masks is None
    assert np.array_equal(from_store_size(stack[0].astype(np.float32), (4, 4)), img)
    with pytest.raises(DataError, match="integer pixel repeat"):
        to_stack(case, (6, 6))


@pytest.mark.parametrize("breakage, message", [
    ("no_cjdata", "no 'cjdata' struct"),
    ("label", r"cjdata.label is \[7.0\]; expected 1"),
    ("not_hdf5", "not a MATLAB v7.3"),
])
def test_mat_bad_input_names_the_file(tmp_path: Path, breakage: str, message: str) -> None:
    import h5py

    path = tmp_path / "5.mat"
    if breakage == "no_cjdata":
        with h5py.File(path, "w", userblock_size=512) as h:
            h["other"] = np.zeros(3)
    elif breakage == "label":
        write_mat_slice(path, np.ones((8, 8), np.int16), np.zeros((8, 8), np.uint8), 7, "P")
    else:
        path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(DataError, match=message) as info:
        read_slice(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(not CVIND.is_file(), reason="shared figshare cvind.mat not present")
def test_real_cvind_opens() -> None:
    cvind = read_cvind(CVIND)
    assert cvind.size == 3064 and np.bincount(cvind).tolist() == [0, 542, 679, 572, 628, 643]


def test_folds_from_cvind_by_patient(tmp_path: Path, cfg: Config) -> None:
    import h5py

    root = write_figshare(tmp_path / "fig", {"A": [(1, 16, 1), (2, 16, 1)], "B": [(3, 16, 2)]})
    cv = tmp_path / "cvind.mat"
    with h5py.File(cv, "w", userblock_size=512) as h:
        h["cvind"] = np.array([[2.0], [2.0], [1.0]])
    out = run_prepare(cfg, root, tmp_path / "f.h5", workers=1, folds_from=cv)
    assert SliceStore(out).folds == [["B"], ["A"]]
    cases = find_mat_cases(root)
    with pytest.raises(DataError, match="patient A has slices in folds \\[1, 2\\].*refused"):
        folds_from_cvind(cases, np.array([1, 2, 1]), "cv")


def test_schema_1_store_still_opens(synthetic_store: Path, tmp_path: Path) -> None:
    old = Path(shutil.copy(synthetic_store, tmp_path / "old.h5"))
    with tables.open_file(str(old), "a") as h:
        h.root._v_attrs.schema_version = 1
    store = SliceStore(old)
    assert store.schema_version == 1 and store.layout == "volumes"
    assert store.n_slices(0, "axial") == store.volume_shape[2]
    store.close()


def test_bundled_lgg_patients_decode_like_the_shared_copies() -> None:
    from braintseg.demos.lgg import HOLDOUT, lgg_sample_dir

    bundled = find_cases(lgg_sample_dir())
    assert [c.case_id for c in bundled] == ["TCGA_CS_6667_20011105", HOLDOUT]
    assert [c.grade for c in bundled] == ["1", "2"]
    size = sum(p.stat().st_size for p in lgg_sample_dir().rglob("*") if p.is_file())
    assert size < 3.2e6
    if not LGG.is_dir():
        pytest.skip("shared LGG data not present: decoded-equality check skipped")
    for case in bundled:
        for p in (*case.images, *(case.masks or ())):
            original = LGG / case.case_id / p.name
            assert np.array_equal(tifffile.imread(p), tifffile.imread(original))


def test_evaluate_figshare_truth_folder_and_store(tmp_path: Path, cfg: Config) -> None:
    from braintseg.scoring.evaluate import run_evaluate

    root = write_figshare(tmp_path / "fig", {"A": [(1, 32, 1), (2, 32, 1)], "B": [(3, 16, 2)]})
    store = run_prepare(cfg.replace(data={"n_folds": 2}), root, tmp_path / "f.h5", workers=1)
    pred = tmp_path / "pred"
    for pid, numbers in (("A", (1, 2)), ("B", (3,))):
        (pred / pid).mkdir(parents=True)
        for n in numbers:
            _, mask, _, _ = read_slice(root / f"{n}.mat")
            out = mask * 255 if n != 2 else np.zeros_like(mask)  # slice 2: tumour missed
            tifffile.imwrite(pred / pid / f"{n}_mask.tif", out.astype(np.uint8))
    for truth in (root, store):
        result = run_evaluate(pred, truth)
        by_case = {r["case"]: r for r in result["cases"]}
        assert by_case["B"]["dice"] == 1.0 and 0 < by_case["A"]["dice"] < 1
        d = result["summary"]["detection"]
        assert d["confusion"] == {"tp": 2, "fp": 0, "fn": 1, "tn": 0}
    shutil.rmtree(pred / "B")  # a patient without predictions: a failure, never dropped
    for truth in (root, store):
        out = tmp_path / f"m_{truth.name}" / "metrics.csv"
        res = CliRunner().invoke(cli, ["evaluate", "-p", str(pred), "-t", str(truth),
                                       "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert "2 patients" in res.output and "scored as failures (Dice 0): B" in res.output
        result = json.loads(out.with_suffix(".json").read_text())
        by_case = {r["case"]: r for r in result["cases"]}
        assert by_case["B"]["status"] == "missing" and by_case["B"]["dice"] == 0.0
        assert by_case["B"]["truth_pixels"] > 0 and by_case["A"]["status"] == "ok"
        s = result["summary"]
        assert (s["n_patients"], s["n_scored"], s["n_missing"], s["missing"]) == (2, 1, 1, ["B"])
        assert s["dice_per_patient_mean"] == pytest.approx(by_case["A"]["dice"] / 2)
        assert s["n_slices"] == 2 and sum(s["detection"]["confusion"].values()) == 2
        with out.open() as fh:
            rows = {r["case"]: r for r in csv.DictReader(fh)}
        assert rows["B"]["status"] == "missing" and float(rows["B"]["dice"]) == 0.0
    (pred / "A" / "2_mask.tif").unlink()
    with pytest.raises(DataError, match=r"patient A: no prediction 2_mask.tif"):
        run_evaluate(pred, root)
    shutil.rmtree(pred / "A")
    (pred / "Z").mkdir()
    tifffile.imwrite(pred / "Z" / "99_mask.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"no patient of .* has predictions"):
        run_evaluate(pred, root)
