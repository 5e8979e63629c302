"""``braintseg demo`` on the bundled real cases: config, refusal, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from braintseg.cli import cli
from braintseg.config import REGIONS, load_config, to_dict
from braintseg.demos.brats import (
    BRATS,
    CPU_CONFIG,
    DEFAULT_OUTPUT,
    EXPECTED_DICE,
    GPU_CONFIG,
    HOLDOUT,
    demo_config,
    sample_data_dir,
)
from braintseg.demos.demo import demo_spec, format_result, run_demo
from braintseg.demos.flow import DemoResult, clear_output, dice_text, outside_text
from braintseg.errors import DataError
from braintseg.store.read import open_store

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data/brats")
BUNDLED = ("Brats18_TCIA03_265_1", "Brats18_2013_3_1", "Brats18_TCIA01_425_1", HOLDOUT)

#: a tiny configuration: the real bundled data, a minute of CPU at most
TINY = (
    "model.levels=2", "model.start_channels=4", "train.batch_size=4",
    "train.steps_per_epoch=2", "train.validation_steps=1", "predict.batch_size=32",
)


# --------------------------------------------------------------------------- configuration


def test_built_in_cpu_config_equals_configs_demo_yaml():
    assert load_config(REPO / "configs" / "demo.yaml") == demo_config(gpu=False)


def test_gpu_config_is_the_default_with_the_demo_data_section():
    default = to_dict(load_config(None))
    gpu = to_dict(demo_config(gpu=True))
    assert gpu["model"] == default["model"]
    assert gpu["train"] == {**default["train"], "monitor": "last"}  # nothing chosen on the case
    assert gpu["data"]["crop"] == "auto" and gpu["data"]["n_folds"] == len(BUNDLED)
    assert GPU_CONFIG["data"] == CPU_CONFIG["data"] and CPU_CONFIG["train"]["monitor"] == "last"


def test_epochs_flag_wins_over_set():
    cfg = demo_config(epochs=3, overrides=["train.epochs=9", "model.start_channels=16"])
    assert (cfg.train.epochs, cfg.model.start_channels) == (3, 16)


# --------------------------------------------------------------------------- bundled data


def test_bundled_cases_are_the_four_named_and_small():
    root = sample_data_dir()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(BUNDLED)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert 20e6 < total <= 40e6
    readme = (root.parent / "README.md").read_text()
    for needle in ("Menze", "Bakas", "1811.02629", "BraTS 2023", "DeepBrainSeg", "BraSyn"):
        assert needle in readme


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared real data absent")
def test_bundled_files_are_byte_copies_of_the_shared_data():
    for case in BUNDLED:
        files = sorted((sample_data_dir() / case).iterdir())
        assert [f.name for f in files] == sorted(f.name for f in (SHARED / case).iterdir())
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            assert digest == hashlib.sha256((SHARED / case / f.name).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- bad input


def test_non_empty_output_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not empty" in lines[0] and "--overwrite" in lines[0]
    assert str(tmp_path) in lines[0]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "demo"
    target.write_text("x")
    result = CliRunner().invoke(cli, ["demo", "-o", str(target), "--overwrite"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_bad_override_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "-o", str(out), "--set", "train.epoch=2"])
    assert result.exit_code == 1 and "did you mean 'train.epochs'" in result.output
    assert not out.exists()


def test_overwrite_removes_only_the_demos_own_outputs(tmp_path):
    for name in ("cases", "run", "predictions", "validation", "pictures"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "old.txt").write_text("old")
    for name in ("store.h5", "store.folds.json", "demo.json", "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / "mine").mkdir()
    clear_output(tmp_path, sorted(p.name for p in tmp_path.iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]


# --------------------------------------------------------------------------- tiny end to end


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """``braintseg demo`` on the bundled real cases with a tiny model, 1 epoch of 2 steps."""
    out = tmp_path_factory.mktemp("demo") / "out"
    args = ["demo", "-o", str(out), "--epochs", "1"] + [a for kv in TINY for a in ("--set", kv)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tiny_demo_store_holds_the_four_cases_one_fold_each(tiny_demo):
    out, _ = tiny_demo
    with open_store(out / "store.h5") as store:
        assert sorted(store.case_ids) == sorted(BUNDLED)
        assert sorted(store.folds) == sorted([c] for c in store.case_ids)
        assert store.conventions["Brats18_2013_3_1"] == "brats2018"
        x0, x1, y0, y1, z0, z1 = store.crop_box
        assert (x1 - x0) % 4 == 0 and (y1 - y0) % 4 == 0  # auto crop, 2**levels with levels=2


def test_tiny_demo_holdout_is_not_trained_on_and_nothing_is_chosen_on_it(tiny_demo):
    out, _ = tiny_demo
    run_info = json.loads((out / "run" / "run.json").read_text())
    assert run_info["val_cases"] == [HOLDOUT]  # a learning curve on it, nothing more
    assert sorted(run_info["train_cases"]) == sorted(set(BUNDLED) - {HOLDOUT})
    assert load_config(out / "run" / "config.yaml").train.monitor == "last"
    state = json.loads((out / "run" / "checkpoint" / "state.json").read_text())
    assert state["best_epoch"] == state["epochs_done"] == 1  # model.keras = the last epoch


def test_tiny_demo_run_folder_holds_the_model_history_and_resolved_config(tiny_demo):
    out, _ = tiny_demo
    run = out / "run"
    assert (run / "model.keras").stat().st_size > 10_000 and (run / "DONE").is_file()
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) == 2 and "val_loss" in history[0]  # header + 1 epoch
    expected = demo_config(gpu=False, epochs=1, overrides=TINY)
    assert load_config(run / "config.yaml") == expected


def test_tiny_demo_prediction_has_the_holdout_geometry_and_convention(tiny_demo):
    out, _ = tiny_demo
    pred = nib.load(out / "predictions" / f"{HOLDOUT}.nii.gz")
    flair = nib.load(sample_data_dir() / HOLDOUT / f"{HOLDOUT}-t2f.nii.gz")
    assert pred.shape == flair.shape == (240, 240, 155)
    np.testing.assert_allclose(pred.affine, flair.affine)
    labels = np.unique(np.asanyarray(pred.dataobj))
    assert set(labels.tolist()) <= {0, 1, 2, 3}  # BraTS 2023 convention: ET = 3, never 4


def test_tiny_demo_metrics_and_summary_agree_with_what_is_printed(tiny_demo):
    out, printed = tiny_demo
    rows = list(csv.DictReader((out / "predictions" / "metrics.csv").open()))
    assert [r["case"] for r in rows] == [HOLDOUT] and rows[0]["status"] == "ok"
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())
    assert metrics["n_cases"] == 1 and metrics["n_missing"] == 0
    summary = json.loads((out / "demo.json").read_text())
    dice = {r: float(rows[0][f"{r}_dice"]) for r in REGIONS}
    assert summary["dice"] == pytest.approx(dice, nan_ok=True)
    assert summary["holdout"] == HOLDOUT and summary["device"] in ("cpu", "gpu")
    assert summary["config"]["train"]["epochs"] == 1
    assert summary["expected"] == {}  # --epochs/--set: not the demo as shipped, no range
    assert set(summary["seconds"]) == {"prepare", "train", "predict", "evaluate", "pictures",
                                       "total"}
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"held-out case {HOLDOUT} (never trained on, nothing chosen on it)")
    assert f"WT {dice['wt']:.3f}" in last and f"ET {dice['et']:.3f}" in last
    assert "expected" not in last and "warning" not in printed
    for path in (out / "store.h5", out / "run", out / "predictions" / "metrics.csv"):
        assert str(path) in printed


def test_dice_is_printed_beside_its_range_and_a_figure_outside_is_flagged():
    inside = {"wt": 0.8, "tc": 0.8, "et": 0.8}
    text = dice_text(inside, EXPECTED_DICE)
    lo, hi = EXPECTED_DICE["tc"]
    assert f"TC 0.800 (expected {lo:.2f}-{hi:.2f})" in text and text.count("expected") == 3
    assert outside_text(inside, EXPECTED_DICE) == ""
    collapsed = {**inside, "tc": 0.011, "et": float("nan")}
    warning = outside_text(collapsed, EXPECTED_DICE)
    assert warning.startswith("warning: held-out Dice of TC, ET outside the range")
    assert "constraints.txt" in warning and "WT" not in warning
    assert dice_text(inside, {}) == "WT 0.800  TC 0.800  ET 0.800"


def test_printed_lines_name_each_file_and_the_configuration(tmp_path):
    out = tmp_path / "d"
    result = DemoResult(out, out / "store.h5", out / "run", [out / "predictions" / "c.nii.gz"],
                        out / "predictions" / "metrics.csv", [out / "pictures" / "a.png"],
                        {"wt": 0.8, "tc": 0.8, "et": 0.8}, HOLDOUT, {}, "gpu",
                        {"prepare": 1.2, "train": 30.4, "total": 31.6})
    assert format_result(result).splitlines() == [
        "braintseg demo finished in 32 s (gpu configuration; steps: prepare 1 s, train 30 s)",
        f"  store        {out / 'store.h5'}",
        f"  run          {out / 'run'}  (model.keras, history.csv, config.yaml)",
        f"  prediction   {out / 'predictions' / 'c.nii.gz'}",
        f"  metrics      {out / 'predictions' / 'metrics.csv'}",
        f"  picture      {out / 'pictures' / 'a.png'}",
        f"  summary      {out / 'demo.json'}",
        f"held-out case {HOLDOUT} (never trained on, nothing chosen on it): Dice "
        "WT 0.800  TC 0.800  ET 0.800"]
    assert demo_spec("brats") is BRATS and BRATS.default_output == DEFAULT_OUTPUT


def test_missing_holdout_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "data" / "other").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no case folder '{HOLDOUT}' to hold out"):
        run_demo(tmp_path / "out", data_dir=tmp_path / "data", gpu=False)
    assert not (tmp_path / "out").exists()


def test_tiny_demo_pictures_decode(tiny_demo):
    out, printed = tiny_demo
    pngs = sorted((out / "pictures").glob("*.png"))
    assert [p.name for p in pngs] == [f"{HOLDOUT}_overlay.png", "training_curves.png"]
    for png in pngs:
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # a picture, not a blank canvas
        assert str(png) in printed


# --------------------------------------------------------------------------- real size


@pytest.mark.slow
def test_full_cpu_demo_segments_the_held_out_tumour(tmp_path):
    """The demo as a user runs it (CPU configuration): several minutes on 2 cores."""
    result = run_demo(tmp_path / "demo", gpu=False)
    assert result.seconds["total"] > 0 and len(result.pictures) == 2
    assert result.expected == EXPECTED_DICE
    for region, (lo, hi) in EXPECTED_DICE.items():  # the figures the README states
        assert lo <= result.dice[region] <= hi, result.dice


@pytest.mark.slow
def test_demo_api_script_runs_the_steps_through_the_api(tmp_path):
    out = tmp_path / "api"
    args = [sys.executable, str(REPO / "scripts" / "demo_api.py"), str(out), "--epochs", "1"]
    args += [a for kv in TINY for a in ("--set", kv)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "predictions" / "metrics.csv").open()))
    assert [r["case"] for r in rows] == [HOLDOUT] and rows[0]["status"] == "ok"
    assert sorted(p.name for p in (out / "pictures").glob("*.png")) == [
        f"{HOLDOUT}_overlay.png", "training_curves.png"]
    assert "1 scored against a prediction, 0 missing predictions" in done.stdout
    assert f"held-out case {HOLDOUT} Dice {{'wt': " in done.stdout
    run_json = json.loads((out / "run" / "run.json").read_text())
    assert run_json["val_cases"] == [HOLDOUT] and HOLDOUT not in run_json["train_cases"]
