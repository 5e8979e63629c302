"""Slice-level classification head (``model.classification_head``): model outputs, targets,
joint training, predictions.csv columns, evaluate's two detection scores, config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.config import ModelConfig, load_config
from braintseg.errors import ConfigError
from braintseg.sources.synthetic import write_figshare, write_lgg

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
HEAD = ["--set", "model.output=binary", "--set", "model.classification_head=tumour"]


@pytest.fixture(scope="module")
def lgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from braintseg.preparation.prepare import run_prepare

    tmp = tmp_path_factory.mktemp("head")
    root = write_lgg(tmp / "lgg", n_patients=4, n_slices=9, size=32)
    return root, run_prepare(load_config(SMOKE), root, tmp / "lgg.h5", workers=1)


@pytest.mark.parametrize(("name", "head", "k"), [("unet", "tumour_type", 3),
                                                 ("attention_unet", "tumour", 1)])
def test_head_outputs_and_safe_mode_round_trip(name: str, head: str, k: int,
                                               tmp_path: Path) -> None:
    import keras

    from braintseg.inference.runs import load_model
    from braintseg.model import build_model
    from braintseg.model.head import has_head, split_head

    cfg = ModelConfig(name=name, levels=2, start_channels=4, output="binary",
                      classification_head=head)
    model = build_model(cfg, (32, 32, 3))
    x = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype(np.float32)
    out = model.predict_on_batch(x)
    assert out["probabilities"].shape == (5, 32, 32, 2) and out["classification"].shape == (5, k)
    if k == 3:
        assert np.allclose(out["classification"].sum(-1), 1.0, atol=1e-5)
    assert ((out["classification"] >= 0) & (out["classification"] <= 1)).all()
    plain = build_model(ModelConfig(name=name, levels=2, start_channels=4, output="binary"),
                        (32, 32, 3))
    assert not has_head(plain) and plain.count_params() < model.count_params()
    model.save(tmp_path / "model.keras")

    class Run:  # what load_model reads of a run folder
        path, output, n_channels = tmp_path, "binary", 3

    loaded = load_model(Run())  # type: ignore[arg-type]
    again = loaded.predict_on_batch(x)
    assert np.allclose(again["classification"], out["classification"], atol=1e-6)
    seg, cls = split_head(loaded)
    assert isinstance(seg, keras.Model) and cls is not None
    assert np.allclose(cls.predict_on_batch(x), out["classification"], atol=1e-6)
    assert np.allclose(seg.predict_on_batch(x), out["probabilities"], atol=1e-6)


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_tumour_type_targets_are_the_classes_of_the_batch_slices(tmp_path: Path,
                                                                 cache: str) -> None:
    from braintseg.preparation.prepare import run_prepare
    from braintseg.store.read import SliceStore
    from braintseg.training.head_targets import HeadSliceDataset

    root = write_figshare(tmp_path / "fig", {
        "A1": [(1, 32, 1), (2, 32, 1), (3, 32, 1)], "B2": [(4, 32, 2), (5, 32, 2)],
        "C3": [(6, 32, 3), (7, 32, 3), (8, 32, 3)], "D4": [(9, 32, 2), (10, 32, 3)]})
    path = run_prepare(load_config(SMOKE), root, tmp_path / "fig.h5", workers=1)
    store = SliceStore(path)
    ids = store.case_ids
    images = np.concatenate([store.read_view(store.index_of(c), "slice")[0] for c in ids])
    classes = np.concatenate([store.slice_classes(store.index_of(c)) for c in ids])
    ds = HeadSliceDataset(path, ids, "slice", 3, shuffle=True, seed=5, cache=cache,
                          block_slices=2, buffer_blocks=2, tumour_oversampling=0.3,
                          head="tumour_type")
    seen = []
    for i in range(len(ds)):
        x, y = ds.batch(1, i)
        rows = ds.batch_ids(1, i)
        assert np.array_equal(x, images[rows])  # batch_ids name the slices of the batch
        assert np.array_equal(y["classification"], classes[rows].astype(np.int32) - 1)
        assert y["probabilities"].shape == (len(rows), 32, 32)
        seen += y["classification"].tolist()
    assert set(seen) == {0, 1, 2}
    ds.close()
    store.close()


def test_head_on_a_store_without_types_is_one_line(lgg: tuple[Path, Path]) -> None:
    from braintseg.errors import DataError
    from braintseg.store.read import SliceStore
    from braintseg.training.head_targets import HeadSliceDataset

    first = SliceStore(lgg[1]).case_ids[0]
    with pytest.raises(DataError, match=f"^case {first} of .*tumour_type needs a tumour_type"):
        HeadSliceDataset(lgg[1], [first], "slice", 2, head="tumour_type")


def test_joint_training_reduces_the_head_loss(lgg: tuple[Path, Path]) -> None:
    import keras

    from braintseg.model import build_model
    from braintseg.store.read import SliceStore
    from braintseg.training import fit
    from braintseg.training.head_targets import HeadSliceDataset

    cfg = load_config(SMOKE, ["model.output=binary", "model.classification_head=tumour",
                              "train.learning_rate=0.01", "train.classification_weight=1.0"])
    keras.utils.set_random_seed(0)
    ids = SliceStore(lgg[1]).case_ids
    ds = HeadSliceDataset(lgg[1], ids, "slice", 12, shuffle=False, cache="ram", head="tumour")
    batches = [ds.batch(0, i) for i in range(len(ds))]
    x = np.concatenate([b[0] for b in batches])
    t = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    assert 0 < t["classification"].sum() < len(x)  # both kinds of slices
    model = build_model(cfg.model, (32, 32, 3))
    model.compile(optimizer=keras.optimizers.Adam(0.01), **fit.compile_args(cfg))
    before = model.evaluate(x, t, verbose=0, return_dict=True)
    model.fit(ds, epochs=8, verbose=0, shuffle=False)
    after = model.evaluate(x, t, verbose=0, return_dict=True)
    assert after["classification_loss"] < 0.7 * before["classification_loss"]
    assert "probabilities_dice_mean" in after and "classification_accuracy" in after
    logs = {"val_probabilities_dice_mean": 0.5, "val_probabilities_loss": 1.0}
    fit.UnprefixSegmentationLogs().on_epoch_end(0, logs)
    assert logs["val_dice_mean"] == 0.5 and "val_loss" not in logs
    ds.close()


def test_train_predict_evaluate_with_head(lgg: tuple[Path, Path], tmp_path: Path) -> None:
    root, store = lgg
    run, pred = tmp_path / "run", tmp_path / "pred"
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "-c", str(SMOKE), *HEAD, "-i", str(store), "--fold", "0",
                              "-o", str(run)])
    assert res.exit_code == 0, res.output
    from braintseg.store.read import SliceStore

    meta = json.loads((run / "run.json").read_text())
    with SliceStore(store) as st:
        ids = [st.index_of(c) for c in meta["train_cases"]]
        tumour = sum(len(st.tumour_slices(i, "slice")) for i in ids)
        assert meta["train_tumour_fraction"] == tumour / sum(st.n_slices(i, "slice") for i in ids)
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert "val_dice_mean" in history and "val_classification_accuracy" in history
    res = runner.invoke(cli, ["predict", "-m", str(run), "-i", str(store), "--fold", "0",
                              "-o", str(pred), "--tta"])
    assert res.exit_code == 0, res.output
    with (pred / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(0.0 <= float(r["head_probability"]) <= 1.0 for r in rows)
    assert "tumour_probability" in rows[0]
    res = runner.invoke(cli, ["evaluate", "-p", str(pred), "-t", str(root)])
    assert res.exit_code == 0, res.output
    assert "(classification head)" in res.output and "better slice score:" in res.output
    s = json.loads((pred / "metrics.json").read_text())["summary"]
    n = s["n_slices"]
    assert sum(s["detection_head"]["confusion"].values()) == n
    positive = sum(float(r["head_probability"]) > 0.5 for r in rows)
    c = s["detection_head"]["confusion"]
    assert c["tp"] + c["fp"] == positive
    assert s["detection_better"] in ("head", "derived", "equal")
    res = runner.invoke(cli, ["report", str(pred), "-t", str(root), "-o", str(tmp_path / "pics")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pics" / "roc.png").stat().st_size > 0


def test_better_score() -> None:
    from braintseg.scoring.detection import better_score

    assert better_score({"auc": 0.8, "accuracy": 0.9}, {"auc": 0.9, "accuracy": 0.5}) == "head"
    assert better_score({"auc": 0.8, "accuracy": 0.9}, {"auc": 0.8, "accuracy": 0.5}) == "derived"
    assert better_score({"auc": None, "accuracy": 0.9}, {"auc": None, "accuracy": 0.9}) == "equal"


@pytest.mark.parametrize(("override", "match"), [
    ("model.classification_head=maybe",
     r"^model\.classification_head must be one of 'none' \| 'tumour' \| 'tumour_type'; "
     r"received 'maybe'$"),
    ("train.classification_weight=-1", r"^train\.classification_weight must be >= 0"),
    ("train.loss=focal", r"^train\.loss must be one of 'gdl_ce' \| 'dice_ce'"),
])
def test_bad_head_config_is_one_line(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_head_needs_binary_output_cli(lgg: tuple[Path, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["train", "-c", str(SMOKE), "--set",
                                   "model.classification_head=tumour", "-i", str(lgg[1]),
                                   "--fold", "0", "-o", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "model.classification_head needs model.output: binary" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_type_figures_by_hand() -> None:
    from braintseg.scoring.classes import type_figures

    truth = np.array([1, 1, 1, 2, 2, 3, 0])
    pred = np.array([1, 1, 2, 2, 3, 3, 1])  # the class-0 slice is left out
    t = type_figures(truth, pred)
    assert t["n"] == 6 and t["accuracy"] == pytest.approx(4 / 6)
    assert t["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    g = t["per_class"]["glioma"]
    assert g["precision"] == 0.5 and g["recall"] == 0.5 and g["specificity"] == 0.75
    m = t["per_class"]["meningioma"]
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    assert t["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_evaluate_tumour_type_head_columns(tmp_path: Path) -> None:
    import tifffile

    from braintseg.inference.slices import HEAD_COLUMNS
    from braintseg.scoring.evaluate import format_summary, run_evaluate

    root = write_figshare(tmp_path / "fig", {"A1": [(1, 16, 1), (2, 16, 1)],
                                             "B2": [(3, 16, 2)], "C3": [(4, 16, 3)]})
    pred = tmp_path / "pred"
    head_class = {"1": 1, "2": 2, "3": 2, "4": 3}
    lines = [",".join(["case", "slice", "file", "tumour_probability", "predicted_area",
                       "height", "width", *HEAD_COLUMNS["tumour_type"]])]
    for cid, sids in {"A1": ["1", "2"], "B2": ["3"], "C3": ["4"]}.items():
        (pred / cid).mkdir(parents=True)
        for sid in sids:
            tifffile.imwrite(pred / cid / f"{sid}_mask.tif", np.zeros((16, 16), np.uint8))
            scores = ["0.1", "0.1", "0.1"]
            scores[head_class[sid] - 1] = "0.8"
            lines.append(f"{cid},{sid},{cid}/{sid}_mask.tif,0.2,0,16,16,{','.join(scores)},"
                         f"{head_class[sid]}")
    (pred / "predictions.csv").write_text("\n".join(lines) + "\n")
    result = run_evaluate(pred, root)
    t = result["summary"]["tumour_type_head"]
    assert t["n"] == 4 and t["accuracy"] == 0.75 and t["confusion"][0] == [1, 1, 0]
    assert t["per_class"]["meningioma"]["recall"] == 0.5
    assert "detection_head" not in result["summary"]  # no head_probability column
    assert "tumour type (classification head): accuracy 75.00 %" in format_summary(result)


def test_head_probability_prior_correction() -> None:
    from types import SimpleNamespace

    from braintseg.inference.slices import prior_corrected

    cfg = load_config(None, ["train.tumour_oversampling=0.5"])
    run = SimpleNamespace(cfg=cfg, tumour_fraction=0.25)  # batches: q = 0.5 + 0.5 * 0.25
    p = np.array([[0.625], [0.0], [1.0], [0.9]], np.float32)
    out = prior_corrected(p, run)  # type: ignore[arg-type]
    assert out[:3, 0] == pytest.approx([0.25, 0.0, 1.0])  # the batches' prior -> the data's
    assert out[3, 0] == pytest.approx(0.9 * 0.4 / (0.9 * 0.4 + 0.1 * 2.0))
    assert prior_corrected(p, SimpleNamespace(cfg=cfg, tumour_fraction=None)) is p  # type: ignore[arg-type]
    plain = SimpleNamespace(cfg=load_config(None), tumour_fraction=0.25)
    assert prior_corrected(p, plain) is p  # type: ignore[arg-type]
