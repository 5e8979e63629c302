"""2D slice data sets end to end (synthetic LGG): generator, train, predict, evaluate, report;
slice-level figures against hand-computed values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.scoring.detection import detection, dice, roc_auc, roc_points
from braintseg.sources.synthetic import write_lgg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from braintseg.config import load_config
    from braintseg.preparation.prepare import run_prepare

    tmp = tmp_path_factory.mktemp("lgg_pipeline")
    root = write_lgg(tmp / "lgg", n_patients=4, n_slices=9, size=32)
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    return root, run_prepare(cfg, root, tmp / "lgg.h5", workers=1)


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_generator_reads_every_slice_of_variable_length_cases(lgg: tuple[Path, Path],
                                                              cache: str) -> None:
    from braintseg.store.read import SliceStore
    from braintseg.training.generator import SliceDataset

    _, store_path = lgg
    store = SliceStore(store_path)
    ids = store.case_ids[1:]
    ds = SliceDataset(store_path, ids, "slice", 4, shuffle=False, cache=cache, block_slices=4)
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    expected = [store.read_view(store.index_of(c), "slice") for c in ids]
    assert np.array_equal(np.concatenate(xs), np.concatenate([e[0] for e in expected]))
    assert np.array_equal(np.concatenate(ys), np.concatenate([e[1] for e in expected]))
    shuffled = SliceDataset(store_path, ids, "axial", 4, shuffle=True, cache=cache, seed=3)
    got = np.concatenate([shuffled.batch(0, i)[1] for i in range(len(shuffled))])
    assert got.shape[0] == ds.n_slices == 27 and got.sum() == np.concatenate(ys).sum()
    ds.close()
    shuffled.close()
    store.close()


def test_train_predict_evaluate_report_cli(lgg: tuple[Path, Path], tmp_path: Path) -> None:
    root, store = lgg
    run, pred = tmp_path / "run", tmp_path / "pred"
    smoke = str(REPO / "configs" / "smoke.yaml")
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "-c", smoke, "-i", str(store), "--fold", "0", "-o",
                              str(run)])
    assert res.exit_code == 1 and "set model.output: binary" in res.output
    res = runner.invoke(cli, ["train", "-c", smoke, "--set", "model.output=binary", "-i",
                              str(store), "--fold", "0", "-o", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["predict", "-m", str(run), "-i", str(root), "-o", str(pred),
                              "--probabilities"])
    assert res.exit_code == 0, res.output
    patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
    mask = tifffile.imread(pred / patient.name / f"{patient.name}_9_mask.tif")
    assert mask.shape == (32, 32) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    prob = tifffile.imread(pred / patient.name / f"{patient.name}_9_prob.tif")
    assert prob.dtype == np.float32 and prob.shape == (32, 32)
    with (pred / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 36 and rows[0]["slice"] == f"{patient.name}_1"
    assert int(rows[8]["predicted_area"]) == int((mask > 0).sum())
    res = runner.invoke(cli, ["evaluate", "-p", str(pred), "-t", str(root)])
    assert res.exit_code == 0, res.output
    assert "Dice per patient: mean" in res.output and "AUC" in res.output
    summary = json.loads((pred / "metrics.json").read_text())["summary"]
    assert summary["n_patients"] == 4 and summary["n_slices"] == 36
    assert sum(summary["detection"]["confusion"].values()) == 36
    res = runner.invoke(cli, ["report", str(pred), "-t", str(root), "-o", str(tmp_path / "pics")])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "pics").glob("*.png"))
    assert f"{patient.name}_montage.png" in pngs and "roc.png" in pngs


def test_dice_detection_and_auc_by_hand() -> None:
    assert dice(0, 0, 0) == 1.0 and dice(0, 5, 0) == 0.0 and dice(3, 4, 4) == 0.75
    truth = np.array([True, True, False, False, False])
    pred = np.array([True, False, True, False, False])
    scores = np.array([0.9, 0.3, 0.6, 0.1, 0.3])
    d = detection(truth, pred, scores)
    assert d["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 2}
    assert d["accuracy"] == 0.6 and d["sensitivity"] == 0.5 and d["specificity"] == 2 / 3
    # pairs (pos, neg): 0.9 beats all 3; 0.3 beats 0.1, ties 0.3 (half), loses to 0.6
    assert roc_auc(scores, truth) == pytest.approx((3 + 1.5) / 6)
    assert np.isnan(roc_auc(scores, np.zeros(5, bool)))
    pts = roc_points(scores, truth)
    assert pts["fpr"][0] == 0.0 and pts["tpr"][-1] == 1.0 and pts["fpr"][-1] == 1.0


def test_binary_head_loss_and_metrics() -> None:
    from braintseg.config import ModelConfig, TrainConfig
    from braintseg.training.losses import GeneralizedDiceCE, build_loss
    from braintseg.training.metrics import build_metrics

    cfg = ModelConfig(output="binary")
    loss = build_loss(TrainConfig(ce_weight=1.0), cfg)
    assert isinstance(loss, GeneralizedDiceCE)
    y = np.zeros((2, 8, 8), np.uint8)
    y[:, 2:5, 2:5] = 1
    perfect = np.stack([1.0 - y, y.astype(np.float64)], -1).astype(np.float32)
    assert float(loss(y, perfect)) < 1e-3 < float(loss(y, perfect[..., ::-1]))
    metrics = build_metrics(cfg)
    assert [m.name for m in metrics] == ["dice_tumour", "dice_mean"]
    for m in metrics:
        m.update_state(y, perfect)
        assert float(m.result()) == 1.0
