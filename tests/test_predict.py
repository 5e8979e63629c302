"""``braintseg predict`` on synthetic NIfTI cases and a store, with tiny untrained run folders.

Run folders are made here the way ``train`` writes them (``model.keras``, ``config.yaml``,
``run.json``, ``DONE``) so that most tests do not depend on training; the real-data test at the
end (slow) chains the real ``prepare → train → predict → evaluate``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.config import dump_config, load_config
from braintseg.errors import ConfigError, DataError
from braintseg.inference.cases import check_case_id
from braintseg.sources.synthetic import write_case

SHAPE = (48, 48, 32)
BOX = (8, 40, 8, 40, 0, 32)  # 32 x 32 x 32: every view's slice is 32 x 32 (divisible by 4)
OBLIQUE = np.array([[-0.9, 0.1, 0.0, 90.0], [0.1, -1.1, 0.05, 120.0], [0.0, 0.0, 1.5, -60.0],
                    [0, 0, 0, 1]])
CASE23, CASE18 = "BraTS-GLI-00007-000", "Brats18_TEST_1"


def make_run(folder: Path, view: str, box=BOX, seed: int = 0, et_bias: float = 0.0,
             extra: tuple[str, ...] = ()) -> Path:
    """A run folder with an untrained tiny model (levels 2, 4 start channels)."""
    import keras

    from braintseg.data.preprocess import VIEW_AXIS, box_shape
    from braintseg.model import build_model

    cfg = load_config(None, ["model.levels=2", "model.start_channels=4", f"train.view={view}",
                             "predict.batch_size=8", "model.noise_stddev=0.0", *extra])
    keras.utils.set_random_seed(seed)
    sizes = [s for a, s in enumerate(box_shape(box)) if a != VIEW_AXIS[view]]
    model = build_model(cfg.model, (*sizes, 4))
    if et_bias:
        logits = model.get_layer("logits")
        logits.bias.assign(np.array([0.0, 0.0, 0.0, et_bias], np.float32))
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    dump_config(cfg, folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({
        "schema_version": 1, "store": "synthetic.h5", "fold": 0, "view": view,
        "input_shape": [*sizes, 4], "n_channels": 4, "crop_box": list(box)}))
    (folder / "DONE").write_text("")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {v: make_run(root / v, v, seed=i) for i, v in enumerate(("axial", "sagittal", "coronal"))}
    out["et"] = make_run(root / "et", "axial", et_bias=50.0)
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    write_case(root, CASE23, SHAPE, seed=3, convention="brats2023", affine=OBLIQUE,
               seg_dtype="float32")
    write_case(root, CASE18, SHAPE, seed=4, convention="brats2018")
    return root


def _read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def _probs(run_dirs: list[Path], cases: Path, out: Path, **kw) -> dict[str, np.ndarray]:
    from braintseg.inference.predict import run_predict

    run_predict(run_dirs, cases, out, probabilities=True, **kw)
    return {c: _read(out / f"{c}_prob.nii.gz")[0] for c in (CASE23, CASE18)}


def test_geometry_and_convention_of_2023_case(runs, cases, tmp_path) -> None:
    from braintseg.inference.predict import run_predict

    written = run_predict([runs["axial"]], cases / CASE23, tmp_path / "out", probabilities=True)
    assert [p.name for p in written] == [f"{CASE23}.nii.gz"]
    labels, img = _read(written[0])
    src = nib.load(str(cases / CASE23 / f"{CASE23}-t2f.nii.gz"))
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    for form in ("qform", "sform"):
        np.testing.assert_allclose(getattr(img.header, f"get_{form}")(),
                                   getattr(src.header, f"get_{form}")(), atol=1e-5)
        assert int(img.header[f"{form}_code"]) == int(src.header[f"{form}_code"]) == 1
    np.testing.assert_allclose(img.header.get_zooms(), src.header.get_zooms(), atol=1e-6)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    probs, pimg = _read(tmp_path / "out" / f"{CASE23}_prob.nii.gz")
    assert probs.shape == (*SHAPE, 4)
    np.testing.assert_allclose(pimg.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    # labels are the argmax of the probabilities, in the 2023 convention (identity mapping)
    np.testing.assert_array_equal(labels, np.argmax(probs, -1))
    x0, x1, y0, y1, z0, z1 = BOX
    outside = np.ones(SHAPE, bool)
    outside[x0:x1, y0:y1, z0:z1] = False
    assert (labels[outside] == 0).all() and (probs[outside][:, 0] == 1).all()


def test_label_conventions_with_an_et_model(runs, cases, tmp_path, monkeypatch) -> None:
    """A model biased to ET everywhere: ET is 3 in the 2023 case and 4 in the 2018 case."""
    import braintseg.inference.volumes
    from braintseg.inference.predict import run_predict

    monkeypatch.setattr(braintseg.inference.volumes.os, "cpu_count",
                        lambda: 16)  # 2 cases read at once
    run_predict([runs["et"]], cases, tmp_path)
    x0, x1, y0, y1, z0, z1 = BOX
    for case, et in ((CASE23, 3), (CASE18, 4)):
        labels = _read(tmp_path / f"{case}.nii.gz")[0]
        assert set(np.unique(labels)) == {0, et}
        assert (labels[x0:x1, y0:y1, z0:z1] == et).all()
        assert (labels > 0).sum() == 32**3
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["case"] for r in rows] == [CASE23, CASE18]
    assert all(int(r["voxels_et"]) == 32**3 and float(r["seconds"]) > 0 for r in rows)
    assert all(int(r["voxels_background"]) == np.prod(SHAPE) - 32**3 for r in rows)


def test_multi_view_ensemble_is_the_mean_of_single_runs(runs, cases, tmp_path) -> None:
    views = ["axial", "sagittal", "coronal"]
    singles = [_probs([runs[v]], cases, tmp_path / v) for v in views]
    both = _probs([runs[v] for v in views], cases, tmp_path / "ensemble")
    for case in (CASE23, CASE18):
        mean = np.mean([s[case] for s in singles], axis=0)
        np.testing.assert_allclose(both[case], mean, atol=1e-5)
        # the runs really differ, so the check above is not vacuous
        assert np.abs(singles[0][case] - singles[1][case]).max() > 1e-3
    record = yaml.safe_load((tmp_path / "ensemble" / "predict_config.yaml").read_text())
    assert [r["view"] for r in record["runs"]] == views
    assert record["tta"] is False and record["postprocessing"]["enabled"] is False


def test_tta_is_flip_equivariant(runs, tmp_path) -> None:
    """Flipping the input along H (x for axial) flips the TTA prediction exactly."""
    from braintseg.inference.predict import run_predict

    root = tmp_path / "in"
    folder = write_case(root, "Brats18_A_1", SHAPE, seed=5)
    flipped = root / "Brats18_B_1"
    flipped.mkdir()
    for path in folder.iterdir():
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)[::-1, ::-1]  # flip x and y (H and W of axial slices)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine, img.header),
                 flipped / path.name.replace("_A_", "_B_"))
    results = {}
    for tta in (False, True):
        out = tmp_path / f"tta{tta}"
        run_predict([runs["axial"]], root, out, probabilities=True, tta=tta)
        a = _read(out / "Brats18_A_1_prob.nii.gz")[0]
        b = _read(out / "Brats18_B_1_prob.nii.gz")[0][::-1, ::-1]
        results[tta] = np.abs(a - b).max()
    assert results[True] < 1e-4
    assert results[False] > 1e-3  # the untrained model alone is not symmetric


def test_store_input_with_fold_matches_nifti_input(synthetic_store, synthetic_root,
                                                   tmp_path) -> None:
    from braintseg.inference.predict import run_predict
    from braintseg.store.read import open_store

    store = open_store(synthetic_store)
    run = make_run(tmp_path / "run", "coronal", box=tuple(store.crop_box))
    val = store.fold_cases(1)[1]
    written = run_predict([run], synthetic_store, tmp_path / "s", fold=1, probabilities=True)
    assert sorted(p.name for p in written) == sorted(f"{c}.nii.gz" for c in val)
    case = val[0]
    run_predict([run], synthetic_root, tmp_path / "n", cases=[case], probabilities=True)
    from_store, img = _read(tmp_path / "s" / f"{case}_prob.nii.gz")
    from_nifti, nimg = _read(tmp_path / "n" / f"{case}_prob.nii.gz")
    np.testing.assert_array_equal(from_store, from_nifti)  # normalised exactly as prepare does
    meta = store.case_meta(store.index_of(case))
    assert from_store.shape[:3] == tuple(meta["original_shape"])
    np.testing.assert_allclose(img.affine, np.array(meta["affine"]), atol=1e-5)


def test_postprocessing_set_and_recorded_via_cli(runs, cases, tmp_path) -> None:
    out = tmp_path / "pp"
    result = CliRunner().invoke(cli, [
        "predict", "-m", str(runs["et"]), "-i", str(cases), "-o", str(out), "--cases", CASE18,
        "--set", "predict.et_to_ncr_threshold=100000", "--set",
        "predict.output_pattern='{case}_seg.nii.gz'"])
    assert result.exit_code == 0, result.output
    labels = _read(out / f"{CASE18}_seg.nii.gz")[0]
    assert set(np.unique(labels)) == {0, 1}  # every ET voxel relabelled NCR
    record = yaml.safe_load((out / "predict_config.yaml").read_text())
    assert record["postprocessing"]["et_to_ncr_threshold"] == 100000
    assert record["postprocessing"]["enabled"] is True


def test_too_long_output_name_is_one_line(runs, cases, tmp_path) -> None:
    """A 300-character output_pattern: the file system's ENAMETOOLONG in one line naming the
    file (the temporary file's clean-up used to raise its own ENAMETOOLONG over it)."""
    out = tmp_path / "long"
    pattern = "x" * 290 + "{case}.nii.gz"
    result = CliRunner().invoke(cli, [
        "predict", "-m", str(runs["axial"]), "-i", str(cases), "-o", str(out), "--cases", CASE18,
        "--set", f"predict.output_pattern='{pattern}'"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip() and " INFO " not in ln]
    target = out / pattern.replace("{case}", CASE18)
    assert lines == [f"Error: cannot write {target} (File name too long)"], lines
    assert not out.exists()  # the folder predict made is removed again


def test_regions_head_to_labels_by_hand() -> None:
    from braintseg.inference.ensemble import probabilities_to_labels

    #                 WT   TC   ET  → label (ET > .5 → 3, else TC → 1, else WT → 2, else 0)
    probs = np.array([[0.9, 0.9, 0.9],   # 3
                      [0.9, 0.9, 0.2],   # 1
                      [0.9, 0.2, 0.2],   # 2
                      [0.2, 0.2, 0.2],   # 0
                      [0.2, 0.2, 0.7],   # 3: ET wins even when WT/TC are low
                      [0.5, 0.6, 0.5]],  # 1: 0.5 is not > 0.5
                     np.float32)
    assert probabilities_to_labels(probs, "regions").tolist() == [3, 1, 2, 0, 3, 1]
    classes = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    assert probabilities_to_labels(classes, "classes").tolist() == [3, 0]


def test_regions_model_end_to_end(cases, tmp_path) -> None:
    from braintseg.inference.ensemble import probabilities_to_labels
    from braintseg.inference.predict import run_predict

    run = make_run(tmp_path / "regions", "coronal", extra=("model.output=regions",))
    run_predict([run], cases, tmp_path / "out", probabilities=True, cases=[CASE18], tta=True)
    labels = _read(tmp_path / "out" / f"{CASE18}.nii.gz")[0]
    probs = _read(tmp_path / "out" / f"{CASE18}_prob.nii.gz")[0]
    assert probs.shape == (*SHAPE, 3)
    x0, x1, y0, y1, z0, z1 = BOX
    outside = np.ones(SHAPE, bool)
    outside[x0:x1, y0:y1, z0:z1] = False
    assert (probs[outside] == 0).all() and (labels[outside] == 0).all()
    expected = probabilities_to_labels(probs, "regions")
    expected[expected == 3] = 4  # 2018 convention
    np.testing.assert_array_equal(labels, expected)


# --------------------------------------------------------------------------- bad input


def _copy_run(src: Path, dst: Path, **run_json) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "run.json").read_text()) | run_json
    (dst / "run.json").write_text(json.dumps(meta))
    return dst


def _bad(run_dirs, input_path, out: Path, error=DataError, match: str = "", **kw) -> None:
    from braintseg.inference.predict import run_predict

    existed = out.exists()
    with pytest.raises(error, match=match) as info:
        run_predict(run_dirs, input_path, out, **kw)
    assert "\n" not in str(info.value)
    assert not out.is_dir() or not any(out.iterdir()), "nothing may be written"
    assert existed or not out.exists(), f"{out} was created and left behind"


def test_bad_runs(runs, cases, tmp_path) -> None:
    out = tmp_path / "out"
    _bad([tmp_path / "nope"], cases, out, match="does not exist")
    (tmp_path / "empty").mkdir()
    _bad([tmp_path / "empty"], cases, out, match="not a braintseg run: missing model.keras")
    chans = _copy_run(runs["axial"], tmp_path / "c3", n_channels=3)
    _bad([runs["axial"], chans], cases, out, ConfigError, match="n_channels differs")
    box = _copy_run(runs["sagittal"], tmp_path / "box", crop_box=[8, 40, 8, 40, 0, 28])
    _bad([runs["axial"], box], cases, out, ConfigError, match="crop_box differs")
    regions = make_run(tmp_path / "regions", "axial", extra=("model.output=regions",))
    _bad([runs["axial"], regions], cases, out, ConfigError, match="model.output differs")
    _bad([runs["axial"]], cases, out, ConfigError, match="only --set predict",
         overrides=["train.epochs=3"])


def test_model_keras_path_means_its_run_folder(runs, cases, tmp_path) -> None:
    args = ["-i", str(cases / CASE18), "--probabilities"]
    res = CliRunner().invoke(cli, ["predict", "-m", str(runs["axial"] / "model.keras"),
                                   "-o", str(tmp_path / "file"), *args])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["predict", "-m", str(runs["axial"]),
                                   "-o", str(tmp_path / "folder"), *args])
    assert res.exit_code == 0, res.output
    got, want = (_read(tmp_path / d / f"{CASE18}_prob.nii.gz")[0] for d in ("file", "folder"))
    np.testing.assert_array_equal(got, want)
    saved = yaml.safe_load((tmp_path / "file" / "predict_config.yaml").read_text())
    assert saved["runs"][0]["path"] == str(runs["axial"].resolve())
    res = CliRunner().invoke(cli, ["predict", "-m", str(runs["axial"] / "config.yaml"),
                                   "-o", str(tmp_path / "bad"), *args])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "config.yaml is a file; expected a run folder written by `braintseg train` or its " \
        "model.keras" in res.output
    assert not (tmp_path / "bad").exists()


def test_bad_cases_and_outputs(runs, cases, tmp_path) -> None:
    run, out = [runs["axial"]], tmp_path / "out"
    missing = tmp_path / "missing"
    shutil.copytree(cases / CASE18, missing / CASE18)
    (missing / CASE18 / f"{CASE18}_t1.nii.gz").unlink()
    _bad(run, missing, out, match=f"case {CASE18}: missing modality 't1'")
    small = tmp_path / "small"
    write_case(small, "Brats18_SMALL_1", (30, 48, 32), seed=1)
    _bad(run, small, out, match="does not contain the training crop box")
    odd = tmp_path / "odd"
    write_case(odd, "bad..case", SHAPE, seed=1)
    _bad(run, odd, out, match=r"case id 'bad\.\.case' is refused; expected a plain name")
    _bad(run, cases, out, match="not found", cases=["nope"])
    _bad(run, cases, out, ConfigError, match="needs a store", fold=0)
    _bad(run, tmp_path / "absent", out, match="does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _bad(run, cases, blocker / "sub", match="not writable")
    _bad(run, cases, blocker, match="is a file")
    assert blocker.read_text() == "x"


def _lambda_run(src: Path, dst: Path) -> Path:
    """A copy of run ``src`` whose model.keras holds a Lambda layer (refused by safe mode)."""
    import keras

    shutil.copytree(src, dst)
    model = keras.saving.load_model(str(src / "model.keras"), compile=False)
    inp = keras.Input(model.input_shape[1:])
    out = model(keras.layers.Lambda(lambda x: x * 1.0)(inp))
    keras.Model(inp, out).save(dst / "model.keras")
    return dst


def test_model_that_cannot_be_loaded_leaves_no_output_folder(runs, cases, tmp_path) -> None:
    bad = _lambda_run(runs["axial"], tmp_path / "lambda")
    out = tmp_path / "new" / "preds"
    result = CliRunner().invoke(cli, ["predict", "-m", str(bad), "-i", str(cases),
                                      "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot load model" in lines[0] and str(bad) in lines[0]
    assert not out.exists() and not out.parent.exists()
    existing = tmp_path / "existing"  # a folder the user made is kept, with what it held
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    _bad([bad], cases, tmp_path / "existing_empty", match="cannot load model")
    from braintseg.inference.predict import run_predict

    with pytest.raises(DataError, match="cannot load model"):
        run_predict([bad], cases, existing)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("pattern", ["{case.__class__}{case}.nii.gz", "{0}{case}.nii.gz",
                                     "{}{case}.nii.gz", "{case}{{x}}.nii.gz", "{{case}}.nii.gz",
                                     "{case}_{case}.nii.gz", "{case!r}.nii.gz"])
def test_output_pattern_with_any_other_brace_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"predict.output_pattern='{pattern}'"])
    message = str(info.value)
    assert "\n" not in message and "predict.output_pattern" in message and pattern in message


def test_output_pattern_is_substituted_literally(tmp_path: Path) -> None:
    from braintseg.config import output_name

    assert output_name("seg_{case}.nii.gz", "a{0}b") == "seg_a{0}b.nii.gz"
    assert check_case_id("x{case}y", "p_{case}.nii", tmp_path) == tmp_path / "p_x{case}y.nii"


@pytest.mark.parametrize("case_id", ["../x", "a/b", "..", ".", "", "a\\b", ".hidden"])
def test_unsafe_case_ids_rejected(case_id: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="would write outside"):
        check_case_id(case_id, "{case}.nii.gz", tmp_path)
    assert check_case_id("Brats18_1", "{case}.nii.gz", tmp_path) == tmp_path / "Brats18_1.nii.gz"


def test_cli_bad_input_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["predict", "-m", str(tmp_path / "nope"), "-i",
                                      str(tmp_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run folder" in lines[0] and "does not exist" in lines[0]


def test_real_case_keeps_its_geometry_and_convention(runs, real_brats, tmp_path) -> None:
    """A real BraTS 2023 case (bundled with the package, or the shared copy) through predict
    with a tiny untrained run: the source grid, affine, sform code and label convention."""
    from braintseg.inference.predict import run_predict

    case = "BraTS-GLI-00000-000"
    (written,) = run_predict([runs["axial"]], real_brats, tmp_path / "p", cases=[case])
    labels, img = _read(written)
    src = nib.load(str(real_brats / case / f"{case}-t2f.nii.gz"))
    assert labels.shape == src.shape == (240, 240, 155) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    assert int(img.header["sform_code"]) == int(src.header["sform_code"])
    assert not labels[:8].any() and not labels[40:].any()  # outside the run's crop box: 0


@pytest.mark.slow
def test_real_cases_prepare_train_predict_evaluate(real_brats, tmp_path) -> None:
    """Real BraTS 2018 + 2023 cases end to end with the smoke config (1 epoch, 2 steps)."""
    import os

    from braintseg.inference.predict import run_predict
    from braintseg.preparation.prepare import run_prepare
    from braintseg.scoring.evaluate import run_evaluate
    from braintseg.training.train import run_train

    root = tmp_path / "cases"
    root.mkdir()
    names = ("Brats18_2013_3_1", "BraTS-GLI-00000-000")
    for name in names:
        os.symlink(real_brats / name, root / name)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml",
                      ["train.view=sagittal"])
    store = run_prepare(cfg, root, tmp_path / "real.h5", workers=1)
    run = run_train(cfg, store, 0, tmp_path / "run")
    written = run_predict([run], root, tmp_path / "pred", probabilities=True)
    assert sorted(p.name for p in written) == sorted(f"{n}.nii.gz" for n in names)
    for name, labels_set in zip(names, ({0, 1, 2, 4}, {0, 1, 2, 3}), strict=True):
        labels, img = _read(tmp_path / "pred" / f"{name}.nii.gz")
        flair = f"{name}_flair.nii.gz" if "Brats18" in name else f"{name}-t2f.nii.gz"
        src = nib.load(str(root / name / flair))
        assert labels.shape == src.shape and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= labels_set
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
        assert int(img.header["sform_code"]) == int(src.header["sform_code"])
    # the store's validation case predicted from the store equals its NIfTI prediction
    from braintseg.store.read import open_store

    val = open_store(store).fold_cases(0)[1]
    run_predict([run], store, tmp_path / "from_store", fold=0, probabilities=True)
    for case in val:
        np.testing.assert_array_equal(_read(tmp_path / "from_store" / f"{case}_prob.nii.gz")[0],
                                      _read(tmp_path / "pred" / f"{case}_prob.nii.gz")[0])
    summary = run_evaluate(tmp_path / "pred", root, tmp_path / "metrics.csv")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert sorted(r["case"] for r in rows) == sorted(names)
    assert summary["n_missing"] == 0 and not summary["unmatched_predictions"]  # *_prob ignored


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_every_option_has_a_help_text(command: str) -> None:
    import click

    params = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    assert params and all(p.help for p in params), [p.name for p in params if not p.help]
    text = CliRunner().invoke(cli, [command, "--help"]).output
    assert "-o, --output" in text and ("-p, --predictions" in text or command == "predict")


def test_every_source_writes_predictions_back(tmp_path: Path) -> None:
    """Source.write_prediction: BraTS NIfTI in the source convention, slice sources mask TIFFs."""
    import tifffile

    from braintseg.sources.brats import probability_path
    from braintseg.sources.registry import FORMATS, source

    assert all(callable(getattr(source(name), "write_prediction", None)) for name in FORMATS)
    header = nib.Nifti1Header()
    geometry = type("G", (), {"header": header, "affine": OBLIQUE, "convention": "brats2018"})
    labels = np.array([0, 1, 2, 3], np.uint8).reshape(1, 2, 2)
    probs = np.ones((1, 2, 2, 4), np.float32) / 4
    target = tmp_path / "c.nii.gz"
    assert source("brats").write_prediction(target, labels, probs, geometry) == [target]
    assert _read(target)[0].ravel().tolist() == [0, 1, 2, 4]
    assert _read(probability_path(target))[0].shape == (1, 2, 2, 4)
    masks = [np.array([[0, 1]], np.uint8), np.zeros((2, 2), np.uint8)]
    tumour = [np.array([[0.2, 0.9]], np.float32), np.zeros((2, 2), np.float32)]
    for name in ("lgg", "figshare"):
        files = source(name).write_prediction(tmp_path / name, masks, tumour, ["a_1", "a_2"])
        assert [p.name for p in files] == ["a_1_mask.tif", "a_2_mask.tif"]
        assert tifffile.imread(files[0]).tolist() == [[0, 255]]
        assert tifffile.imread(tmp_path / name / "a_1_prob.tif").dtype == np.float32
