"""``braintseg demo --dataset lgg`` on the 2 bundled LGG patients (a tiny configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.demos.lgg import HOLDOUT, LGG_CONFIG, lgg_config

TINY = ("model.levels=2", "model.start_channels=2", "train.batch_size=4",
        "train.steps_per_epoch=1", "train.validation_steps=1", "predict.batch_size=32")


def test_lgg_config_is_a_binary_slice_config() -> None:
    cfg = lgg_config(3, ["model.start_channels=4"])
    assert cfg.model.output == "binary" and cfg.train.epochs == 3
    assert cfg.model.start_channels == 4 and LGG_CONFIG["data"]["n_folds"] == 2


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
