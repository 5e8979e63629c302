"""evaluate: BraTS metrics on hand-computed masks, label conventions, folders, bad input, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.errors import DataError
from braintseg.scoring.evaluate import format_summary, run_evaluate
from braintseg.scoring.regions import HD95_EMPTY, dice, hd95, region_metrics
from braintseg.scoring.volumes import find_predictions, to_internal_auto
from braintseg.sources.synthetic import write_case


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]: lo[0] + size, lo[1]: lo[1] + size, lo[2]: lo[2] + size] = True
    return m


def _save(path: Path, labels: np.ndarray, zooms=(1.0, 1.0, 1.0), dtype="uint8") -> Path:
    img = nib.Nifti1Image(labels.astype(dtype), np.diag([*zooms, 1.0]))
    nib.save(img, path)
    return path


# --------------------------------------------------------------------------- metrics


def test_dice_of_two_overlapping_cubes() -> None:
    # two 10^3 cubes shifted by 5 voxels along x: overlap 5*10*10 = 500,
    # Dice = 2*500 / (1000 + 1000) = 0.5
    a = _cube((30, 30, 30), (5, 5, 5), 10)
    b = _cube((30, 30, 30), (10, 5, 5), 10)
    assert dice(a, b) == pytest.approx(0.5)
    # shifted along x and y by 5: overlap 5*5*10 = 250 → Dice 0.25
    c = _cube((30, 30, 30), (10, 10, 5), 10)
    assert dice(a, c) == pytest.approx(0.25)


def test_hd95_of_shifted_cube_uses_anisotropic_spacing() -> None:
    # A 20^3 cube shifted by 2 voxels along x with spacing (2.5, 1, 1) mm.  Every surface distance
    # is <= 5 mm, and the whole face x=a0 of A (400 voxels) lies exactly 2 voxels = 5 mm from B's
    # face (likewise B's far face from A): 2*400 of the 2*(20^3-18^3) = 4336 distances (18%)
    # equal the maximum 5 mm, so the 95th percentile is exactly 5 mm.  Ignoring the spacing
    # would give 2.
    a = _cube((40, 40, 40), (5, 10, 10), 20)
    b = _cube((40, 40, 40), (7, 10, 10), 20)
    assert hd95(a, b, (2.5, 1.0, 1.0)) == pytest.approx(5.0)
    # the same shift along y (1 mm) gives 2 mm; along z with 3 mm spacing gives 6 mm
    assert hd95(a, _cube((40, 40, 40), (5, 12, 10), 20), (2.5, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(a, _cube((40, 40, 40), (5, 10, 12), 20), (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hd95(a, a, (2.5, 1.0, 1.0)) == 0.0


def test_empty_masks_follow_brats_convention() -> None:
    empty = np.zeros((12, 12, 12), bool)
    cube = _cube((12, 12, 12), (2, 2, 2), 4)
    both = region_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0
    assert both["specificity"] == 1.0 and np.isnan(both["sensitivity"])
    for p, t in ((cube, empty), (empty, cube)):
        one = region_metrics(p, t, (1, 1, 1))
        assert one["dice"] == 0.0 and one["hd95_mm"] == HD95_EMPTY == 373.13
    fn = region_metrics(empty, cube, (1, 1, 1))
    assert fn["sensitivity"] == 0.0 and fn["true_voxels"] == 64 and fn["pred_voxels"] == 0


def test_sensitivity_specificity_volumes_by_hand() -> None:
    # truth 4^3 = 64 voxels, prediction = truth minus one 4x4 layer (48) plus 4 false voxels
    truth = _cube((10, 10, 10), (2, 2, 2), 4)
    pred = truth.copy()
    pred[2] = False
    pred[8, 8, 5:9] = True
    m = region_metrics(pred, truth, (1.0, 1.0, 2.0))
    assert m["sensitivity"] == pytest.approx(48 / 64)
    assert m["specificity"] == pytest.approx((1000 - 64 - 4) / (1000 - 64))
    assert m["dice"] == pytest.approx(2 * 48 / (52 + 64))
    assert m["pred_voxels"] == 52 and m["true_ml"] == pytest.approx(64 * 2.0 / 1000)


def test_case_metrics_on_the_tumour_box_equal_whole_volume_metrics() -> None:
    # evaluate_case scores a crop around the tumour; every number must equal the whole-volume one
    from braintseg.scoring.regions import region_mask
    from braintseg.scoring.volumes import Labels, evaluate_case

    rng = np.random.default_rng(7)
    truth = np.zeros((30, 26, 22), np.uint8)
    truth[8:20, 6:18, 5:15] = rng.integers(0, 4, size=(12, 12, 10))
    pred = np.roll(truth, (2, -1, 1), axis=(0, 1, 2))
    pred[0, 0, 0] = 3  # a false positive in the corner, at the image border
    spacing = (1.2, 0.9, 2.5)
    row = evaluate_case("c", Labels(pred, spacing, "brats2023", "p"),
                        Labels(truth, spacing, "brats2023", "t"))
    for r in ("wt", "tc", "et"):
        full = region_metrics(region_mask(pred, r), region_mask(truth, r), spacing)
        for key, value in full.items():
            assert row[f"{r}_{key}"] == pytest.approx(value, rel=1e-12), (r, key)


def _surface_points(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    pad = np.pad(mask, 1)
    inner = pad[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (1, -1):
            inner &= np.roll(pad, step, axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * spacing


def test_hd95_matches_brute_force_on_random_blobs() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    spacing = np.array([0.8, 1.3, 2.0])
    for trial in range(4):
        shape = (14, 12, 10)
        a = ndimage.binary_opening(rng.random(shape) > 0.45)
        b = ndimage.binary_opening(rng.random(shape) > 0.55)
        if trial == 3:  # blobs touching the image border
            a[0], b[:, -1] = True, True
        pa, pb = _surface_points(a, spacing), _surface_points(b, spacing)
        d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        expected = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
        assert hd95(a, b, tuple(spacing)) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- labels


def test_label_conventions_detected_per_file() -> None:
    internal, conv = to_internal_auto(np.array([0, 1, 2, 4]), "x")
    assert conv == "brats2018" and internal.tolist() == [0, 1, 2, 3]
    internal, conv = to_internal_auto(np.array([0, 1, 2, 3], np.float32), "x")
    assert conv == "brats2023" and internal.tolist() == [0, 1, 2, 3]
    assert to_internal_auto(np.array([0, 2, 1]), "x")[1] == "either"
    with pytest.raises(DataError, match=r"file\.nii\.gz.*both 3 and 4"):
        to_internal_auto(np.array([0, 3, 4]), "file.nii.gz")
    with pytest.raises(DataError, match="range 0..7"):
        to_internal_auto(np.array([0, 7]), "x")
    with pytest.raises(DataError, match="whole numbers"):
        to_internal_auto(np.array([0, 1.5]), "x")


def test_either_convention_scores_the_same(tmp_path: Path) -> None:
    # truth in the 2018 convention (ET=4) as a case folder, prediction in 2023 (ET=3), float32
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[4:12, 4:12, 4:12] = 2
    labels[6:10, 6:10, 6:10] = 4
    labels[7:9, 7:9, 7:9] = 1
    (tmp_path / "truth" / "c1").mkdir(parents=True)
    _save(tmp_path / "truth" / "c1" / "c1_seg.nii.gz", labels)
    (tmp_path / "pred").mkdir()
    _save(tmp_path / "pred" / "c1.nii.gz", np.where(labels == 4, 3, labels), dtype="float32")
    summary = run_evaluate(tmp_path / "pred", tmp_path / "truth")
    row = summary["cases"][0]
    assert (row["truth_convention"], row["pred_convention"]) == ("brats2018", "brats2023")
    for r in ("wt", "tc", "et"):
        assert row[f"{r}_dice"] == 1.0 and row[f"{r}_hd95_mm"] == 0.0
    assert row["et_true_voxels"] == 4**3 - 2**3 and row["tc_true_voxels"] == 4**3


# --------------------------------------------------------------------------- folders and files


@pytest.fixture()
def flat(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """truth/ and pred/ flat folders; case a perfect, case b ET missed, case c not predicted."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 2
    lab[8:12, 8:12, 8:12] = 3
    for case in ("a", "b", "c"):
        _save(truth / f"{case}.nii.gz", lab, zooms=(1.0, 1.0, 2.0))
    _save(pred / "a.nii.gz", lab)
    _save(pred / "b.nii.gz", np.where(lab == 3, 2, lab))
    _save(pred / "b_prob.nii.gz", np.zeros((20, 20, 20, 4)), dtype="float32")
    _save(pred / "orphan.nii.gz", lab)
    return truth, pred, lab


def test_missing_prediction_counts_as_failure_and_files_are_written(flat) -> None:
    truth, pred, lab = flat
    summary = run_evaluate(pred, truth)
    rows = {r["case"]: r for r in summary["cases"]}
    assert set(rows) == {"a", "b", "c"}  # b_prob ignored, orphan has no truth
    assert summary["missing"] == ["c"] and summary["unmatched_predictions"] == ["orphan"]
    assert rows["c"]["status"] == "missing"
    assert rows["c"]["wt_dice"] == 0.0 and rows["c"]["et_hd95_mm"] == HD95_EMPTY
    assert rows["b"]["et_dice"] == 0.0 and rows["b"]["wt_dice"] == 1.0
    # ET Dice over the 3 cases: 1, 0, 0 → mean 1/3, median 0
    et = summary["summary"]["dice"]["et"]
    assert et["mean"] == pytest.approx(1 / 3) and et["median"] == 0.0 and et["n"] == 3
    with open(pred / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["case"] for r in csv_rows] == ["a", "b", "c"]
    assert float(csv_rows[0]["wt_true_ml"]) == pytest.approx(1000 * 2.0 / 1000)
    saved = json.loads((pred / "metrics.json").read_text())
    assert saved["summary"]["dice"]["wt"]["mean"] == pytest.approx(2 / 3)
    with open(pred / "metrics_summary.csv") as f:
        stats = {(r["metric"], r["region"]): r for r in csv.DictReader(f)}
    assert float(stats[("dice", "et")]["p75"]) == pytest.approx(0.5)
    assert not list(pred.glob(".tmp-*"))
    assert summary["n_scored"] == 2
    text = format_summary(summary)
    assert text.splitlines()[0] == ("3 cases evaluated: 2 scored against a prediction, "
                                    "1 missing predictions (scored as failures: c)")
    assert "0.667" in text


def test_partial_overlap_says_how_many_were_scored(flat, caplog) -> None:
    truth, pred, _ = flat
    with caplog.at_level("WARNING", logger="braintseg.scoring.volumes"):
        run_evaluate(pred, truth)
    assert "scored 2 of 3 truth cases against a prediction; 1 have none" in caplog.text


def test_no_shared_case_is_an_error_naming_both_folders(flat, tmp_path: Path) -> None:
    truth, pred, lab = flat
    other = tmp_path / "other"
    other.mkdir()
    _save(other / "zz.nii.gz", lab)
    with pytest.raises(DataError) as info:
        run_evaluate(other, truth)
    message = str(info.value)
    assert "\n" not in message and str(other) in message and str(truth) in message
    assert "share no case" in message and "'zz'" in message and "swapped" in message
    assert not (other / "metrics.csv").exists()


def test_cli_swapped_folders_exit_1_with_one_line(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    write_case(cases, "Brats18_X_1", shape=(16, 16, 8), seed=1)
    preds = tmp_path / "preds"
    preds.mkdir()
    seg = next(cases.rglob("*seg.nii.gz"))
    (preds / "Brats18_X_1.nii.gz").write_bytes(seg.read_bytes())
    result = CliRunner().invoke(cli, ["evaluate", "-p", str(cases), "-t", str(preds)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert str(cases) in lines[0] and str(preds) in lines[0] and "-p and -t swapped" in lines[0]
    assert not list(cases.glob("metrics*")) and not list(preds.glob("metrics*"))


def test_grid_mismatch_names_case_and_shapes(flat, tmp_path: Path) -> None:
    truth, pred, _ = flat
    _save(pred / "a.nii.gz", np.zeros((20, 20, 19), np.uint8))
    with pytest.raises(DataError, match=r"case a: prediction grid \(20, 20, 19\).*\(20, 20, 20\)"):
        run_evaluate(pred, truth, tmp_path / "out" / "m.csv")
    assert not (tmp_path / "out" / "m.csv").exists()


def test_unwritable_output_is_a_data_error(flat, tmp_path: Path) -> None:
    truth, pred, _ = flat
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create output folder"):
        run_evaluate(pred, truth, blocker / "metrics.csv")
    with pytest.raises(DataError, match="does not exist"):
        run_evaluate(tmp_path / "nowhere", truth)


def test_predict_output_pattern_is_honoured(tmp_path: Path) -> None:
    saved = "predict:\n  output_pattern: 'seg_{case}.nii.gz'\n"
    (tmp_path / "predict_config.yaml").write_text(saved)
    _save(tmp_path / "seg_x1.nii.gz", np.zeros((4, 4, 4)))
    _save(tmp_path / "other.nii.gz", np.zeros((4, 4, 4)))
    assert list(find_predictions(tmp_path)) == ["x1"]


def test_store_truth_is_uncropped(synthetic_store: Path, synthetic_root: Path, tmp_path: Path):
    # truth = seg files of the case folders, written as predictions: against the store's
    # (cropped, then uncropped) labels every region present must score Dice 1 and HD95 0
    for seg in sorted(synthetic_root.rglob("*seg.nii.gz")):
        case = seg.name[: -len("_seg.nii.gz")]
        (tmp_path / f"{case}.nii.gz").symlink_to(seg)
    summary = run_evaluate(tmp_path, synthetic_store, tmp_path / "m.csv")
    assert summary["n_cases"] == 4 and summary["n_missing"] == 0
    for row in summary["cases"]:
        for r in ("wt", "tc", "et"):
            assert row[f"{r}_dice"] == 1.0 and row[f"{r}_hd95_mm"] == 0.0


# --------------------------------------------------------------------------- CLI and imports


def test_cli_truth_against_itself(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    write_case(cases, "Brats18_X_1", shape=(32, 32, 24), seed=1)
    write_case(cases, "BraTS-GLI-00001-000", shape=(32, 32, 24), seed=2, convention="brats2023",
               seg_dtype="float32")
    write_case(cases, "Brats18_X_2", shape=(32, 32, 24), seed=3, tumour=False)
    preds = tmp_path / "preds"
    preds.mkdir()
    for seg in cases.rglob("*seg.nii.gz"):
        (preds / (seg.parent.name + ".nii.gz")).write_bytes(seg.read_bytes())
    result = CliRunner().invoke(cli, ["evaluate", "-p", str(preds), "-t", str(cases),
                                      "-o", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "3 cases evaluated: 3 scored against a prediction, 0 missing" in result.output
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert len(rows) == 3
    for row in rows:
        for r in ("wt", "tc", "et"):
            assert float(row[f"{r}_dice"]) == 1.0 and float(row[f"{r}_hd95_mm"]) == 0.0
    assert {r["case"]: r["wt_true_voxels"] for r in rows}["Brats18_X_2"] == "0"


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "-p", str(tmp_path), "-t", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "does not exist" in result.output


def test_evaluate_never_imports_keras(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    _save(tmp_path / "t" / "c.nii.gz", np.ones((5, 5, 5)))
    code = (
        "import sys; from pathlib import Path; import braintseg.scoring.evaluate as e;"
        f"s = e.run_evaluate(Path({str(tmp_path / 't')!r}), Path({str(tmp_path / 't')!r}));"
        "assert s['cases'][0]['wt_dice'] == 1.0;"
        "print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_real_cases_against_themselves(real_brats: Path, tmp_path: Path) -> None:
    segs = sorted(real_brats.rglob("*_seg.nii.gz"))[:1]
    segs += sorted(real_brats.rglob("*-seg.nii.gz"))
    truth = tmp_path / "truth"
    for seg in segs:
        (truth / seg.parent.name).mkdir(parents=True)
        (truth / seg.parent.name / seg.name).symlink_to(seg)
        (tmp_path / f"{seg.parent.name}.nii.gz").symlink_to(seg)
    summary = run_evaluate(tmp_path, truth, tmp_path / "out" / "m.csv")
    assert summary["n_cases"] == 2 and summary["n_missing"] == 0
    for row in summary["cases"]:
        for r in ("wt", "tc", "et"):
            assert row[f"{r}_dice"] == 1.0 and row[f"{r}_hd95_mm"] == 0.0
        assert row["wt_true_voxels"] > 1000
    assert {r["truth_convention"] for r in summary["cases"]} == {"brats2018", "brats2023"}
