"""The demo's recipe learns every BraTS region on real data, fast (a regression floor).

The demo's tumour-core and enhancing-tumour Dice once collapsed to ~0.01 on some installs while
the whole tumour was fine: the recipe trained on two cases, only one of which has much tumour
core, and learned ET so late (epoch 5 of 6) that a CPU with other kernels (AVX-512 oneDNN paths)
or another dependency set tipped it over.  This test trains the demo's configuration
(``configs/demo.yaml``: network, loss, optimizer, schedule, oversampling) on the two bundled
cases with much tumour core, cropped around their tumours, for a small fixed budget with a
fixed seed, and asserts a Dice floor for WT, TC and ET on the training slices.
A recipe that learns TC/ET only at the edge of its budget, a broken label mapping, one-hot,
loss, metric, normalisation or optimizer, or a dependency release that changes any of them,
fails it.  CI runs it on the constrained set, on
JAX, and on the newest releases (``.ci/drift``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from braintseg.config import load_config
from braintseg.training.runs import read_json

REPO = Path(__file__).resolve().parents[1]
#: the two bundled real cases with much tumour core and ET (trained on), and the one with almost
#: none (the validation fold; the held-out BraTS 2023 case stays out)
TRAIN = ("Brats18_2013_3_1", "Brats18_TCIA03_265_1")
VALIDATE = "Brats18_TCIA01_425_1"
#: x0, x1, y0, y1, z0, z1 around the training cases' tumours (divisible by 2**3 in-plane)
CROP = "[48,192,80,208,40,104]"
#: Dice floors on the training slices after the budget below.  Measured (docs/demo.md): 0.855,
#: 0.584, 0.465; the same run without train.bn_recalibration (the moving averages): 0.308, 0.172,
#: 0.069, which fails every floor
FLOOR = {"wt": 0.6, "tc": 0.35, "et": 0.25}
BUDGET = ("train.epochs=3", "train.steps_per_epoch=20", "train.validation_steps=1")


REGIONS = (("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,)))


def _region_masks(probs: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` bool WT/TC/ET masks from softmax classes (4) or region sigmoids (3)."""
    if probs.shape[-1] == 3:
        return probs > 0.5
    labels = np.argmax(probs, -1)
    return np.stack([np.isin(labels, lab) for _, lab in REGIONS], -1)


def _region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of WT {1,2,3}, TC {1,3}, ET {3} over all the slices (``pred``: region masks,
    ``truth``: internal labels)."""
    out = {}
    for i, (name, labels) in enumerate(REGIONS):
        p, t = pred[..., i], np.isin(truth, labels)
        out[name] = float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))
    return out


def test_demo_recipe_learns_tc_and_et_on_real_cases(tmp_path: Path) -> None:
    """The demo's configuration on two real cases with tumour core, cropped around the tumours,
    60 steps, seed 100: Dice of ``model.keras`` in inference mode on the training slices (its
    BatchNorm statistics re-estimated: ``train.bn_recalibration`` of the demo's config)."""
    import keras

    import braintseg.model  # noqa: F401
    import braintseg.training.losses  # noqa: F401 - registers the custom objects
    import braintseg.training.metrics  # noqa: F401
    from braintseg.demos.demo import sample_data_dir, validation_fold
    from braintseg.preparation.prepare import run_prepare
    from braintseg.training.generator import SliceDataset
    from braintseg.training.train import run_train

    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.crop={CROP}", "data.n_folds=3", "train.seed=100", *BUDGET])
    cases = tmp_path / "cases"
    cases.mkdir()
    for case in (*TRAIN, VALIDATE):
        (cases / case).symlink_to(sample_data_dir() / case, target_is_directory=True)
    store = run_prepare(cfg, cases, tmp_path / "store.h5", workers=1)
    run = tmp_path / "run"
    run_train(cfg, store, validation_fold(store, VALIDATE), run)
    train_cases = read_json(run / "run.json")["train_cases"]
    assert sorted(train_cases) == sorted(TRAIN)
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    data = SliceDataset(store, train_cases, view="axial", batch_size=16, shuffle=False,
                        cache="ram")
    preds, truths = [], []
    for i in range(len(data)):
        x, y = data[i]
        probs = np.asarray(model(np.asarray(x, "float32"), training=False))
        preds.append(_region_masks(probs))
        truths.append(np.asarray(y))
    dice = _region_dice(np.concatenate(preds), np.concatenate(truths))
    print("training-slice Dice", {k: round(v, 3) for k, v in dice.items()},
          "backend", keras.backend.backend(), "threads", os.cpu_count())
    for region, floor in FLOOR.items():
        assert dice[region] >= floor, (region, dice)
