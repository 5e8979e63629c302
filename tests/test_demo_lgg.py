"""``braintseg demo --dataset lgg`` on the 2 bundled LGG patients (a tiny configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.demos.demo import DEMOS, demo_spec, run_demo
from braintseg.demos.flow import DemoResult, format_text
from braintseg.demos.lgg import (
    DEFAULT_LGG_OUTPUT,
    EXPECTED_LGG_DICE,
    HOLDOUT,
    LGG,
    LGG_CONFIG,
    lgg_config,
)
from braintseg.errors import ConfigError, DataError

TINY = ("model.levels=2", "model.start_channels=2", "train.batch_size=4",
        "train.steps_per_epoch=1", "train.validation_steps=1", "predict.batch_size=32")


def test_lgg_config_is_a_binary_slice_config() -> None:
    cfg = lgg_config(3, ["model.start_channels=4"])
    assert cfg.model.output == "binary" and cfg.train.epochs == 3
    assert cfg.model.start_channels == 4 and LGG_CONFIG["data"]["n_folds"] == 2


def test_lgg_spec_is_the_lgg_demo() -> None:
    assert demo_spec("lgg") is LGG and sorted(DEMOS) == ["brats", "lgg"]
    assert LGG.default_output == DEFAULT_LGG_OUTPUT == Path("braintseg-demo-lgg")
    assert LGG.holdout == HOLDOUT and LGG.configure(Path("."), 2, (), True).device == "cpu"
    with pytest.raises(ConfigError, match="no demo data set 'kaggle'"):
        demo_spec("kaggle")


def test_lgg_lines_name_the_patient_folder_and_flag_a_dice_outside_its_range() -> None:
    out = Path("d")
    result = DemoResult(out, out / "store.h5", out / "run", [out / "predictions" / HOLDOUT],
                        out / "predictions" / "metrics.csv", [out / "pictures" / "roc.png"],
                        {"tumour": 0.1}, HOLDOUT, dict(EXPECTED_LGG_DICE), "cpu",
                        {"prepare": 1.2, "train": 30.4, "total": 31.6})
    lines = format_text(result, LGG).splitlines()
    assert lines[:4] == [
        "braintseg demo (LGG) finished in 32 s (steps: prepare 1 s, train 30 s)",
        f"  store        {out / 'store.h5'}",
        f"  run          {out / 'run'}  (model.keras, history.csv, config.yaml)",
        f"  predictions  {out / 'predictions' / HOLDOUT}  (<patient>_<n>_mask.tif, "
        "predictions.csv)"]
    assert lines[-2] == (f"held-out patient {HOLDOUT} (never trained on, nothing chosen on it):"
                         " Dice TUMOUR 0.100 (expected 0.30-0.78)")
    assert lines[-1].startswith("warning: held-out Dice of TUMOUR outside the range")


def test_lgg_demo_refuses_a_non_empty_folder_and_data_without_the_patient(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(cli, ["demo", "--dataset", "lgg", "-o", str(tmp_path)])
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=f"no patient folder '{HOLDOUT}' to hold out"):
        run_demo(tmp_path / "out", dataset="lgg", data_dir=tmp_path / "data")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_lgg_demo_runs_end_to_end(tmp_path: Path) -> None:
    args = ["demo", "--dataset", "lgg", "-o", str(tmp_path / "d"), "--epochs", "1"]
    for kv in TINY:
        args += ["--set", kv]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert f"held-out patient {HOLDOUT} (never trained on, nothing chosen on it): Dice TUMOUR" \
        in res.output and "expected" not in res.output  # --epochs: no range stated
    summary = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert 0.0 <= summary["dice"]["tumour"] <= 1.0
    masks = sorted((tmp_path / "d" / "predictions" / HOLDOUT).glob("*_mask.tif"))
    assert len(masks) == 20
    pictures = {Path(p).name for p in summary["pictures"]}
    assert {"training_curves.png", f"{HOLDOUT}_montage.png", "roc.png"} <= pictures
