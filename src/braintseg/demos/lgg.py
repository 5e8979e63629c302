"""``braintseg demo --dataset lgg``: the 2D slice pipeline on the 2 LGG patients bundled with
the package (``sample_data/lgg``: kaggle_3m layout, with the data set's README and citation).

prepare (2 patients, 2 folds of one patient) → train on one patient (``train.monitor: last``:
the other, :data:`HOLDOUT`, is the validation fold only as a learning curve; nothing is chosen
on it) → predict the held-out patient from its TIFF folder → evaluate (per-patient Dice, slice
detection) → pictures (training curves, montage with contours, ROC curve).  Output
layout as for the BraTS demo (:mod:`braintseg.demos.demo`): ``DIR/store.h5``, ``DIR/run/``,
``DIR/predictions/<patient>/<patient>_<n>_mask.tif`` (+ ``predictions.csv``, ``metrics.*``),
``DIR/pictures/``, ``DIR/demo.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from braintseg.config import Config, from_dict, load_config
from braintseg.demos.demo import (
    DemoResult,
    _check_output,
    _clear_output,
    _write_json,
    dice_text,
    outside_text,
    validation_fold,
)
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

#: the held-out patient (the model is trained on the other bundled patient)
HOLDOUT = "TCGA_HT_7686_19950629"
#: ``braintseg demo --dataset lgg`` writes here by default (beside the BraTS demo's folder)
DEFAULT_LGG_OUTPUT = Path("braintseg-demo-lgg")
#: the LGG demo's configuration (a CPU run of a few minutes)
LGG_CONFIG: dict[str, dict[str, Any]] = {
    "data": {"n_folds": 2},
    "model": {"name": "unet", "levels": 4, "start_channels": 8, "norm": "group",
              "output": "binary"},
    "train": {"batch_size": 4, "epochs": 20, "steps_per_epoch": 10, "optimizer": "adam",
              "learning_rate": 0.003, "schedule": "cosine", "ce_weight": 1.0,
              "tumour_oversampling": 0.5, "monitor": "last"},
    "predict": {"batch_size": 16},
}
#: the held-out patient's Dice of the demo as shipped: seeds 100, 1, 2 gave 0.375 / 0.699 / 0.471
#: (docs/demo.md: one training patient of 20 slices, so the seed moves it widely), widened
EXPECTED_LGG_DICE: dict[str, tuple[float, float]] = {"tumour": (0.30, 0.78)}


def lgg_sample_dir() -> Path:
    """The bundled LGG patients (``<patient>/<patient>_<n>.tif`` + ``_mask.tif``)."""
    path = Path(str(resources.files("braintseg") / "sample_data" / "lgg"))
    if not path.is_dir():
        raise DataError(f"bundled LGG sample data not found at {path} (reinstall braintseg)")
    return path


def lgg_config(epochs: int | None = None, overrides: Sequence[str] = ()) -> Config:
    """:data:`LGG_CONFIG` with ``--set`` overrides; ``epochs`` wins."""
    cfg = load_config(None, overrides, base=from_dict(LGG_CONFIG, "LGG demo config"))
    return cfg.replace(train={"epochs": epochs}) if epochs is not None else cfg


def run_demo_lgg(out_dir: Path, *, overwrite: bool = False, epochs: int | None = None,
                 overrides: Sequence[str] = (), data_dir: Path | None = None,
                 holdout: str = HOLDOUT) -> DemoResult:
    """Run the LGG demo; see the module docstring.  ``dice`` holds ``{"tumour": ...}``."""
    from braintseg.inference.slices import run_predict_slices
    from braintseg.preparation.prepare import run_prepare
    from braintseg.reporting.report import plot_history
    from braintseg.reporting.slices import run_report_slices
    from braintseg.scoring.slices import run_evaluate_slices
    from braintseg.training.train import run_train

    out_dir = Path(out_dir)
    entries = _check_output(out_dir, overwrite)
    cases = Path(data_dir) if data_dir is not None else lgg_sample_dir()
    if not (cases / holdout).is_dir():
        raise DataError(f"demo data {cases}: no patient folder {holdout!r} to hold out")
    cfg = lgg_config(epochs, overrides)
    _clear_output(out_dir, entries)
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = round(now - clock[0], 1)
        clock[0] = now
        logger.info("demo: %s done in %.1f s", step, seconds[step])

    store = Path(run_prepare(cfg, cases, out_dir / "store.h5", overwrite=True, fmt="lgg"))
    lap("prepare")
    run_dir = out_dir / "run"
    run_train(cfg, store, validation_fold(store, holdout), run_dir, overwrite=True)
    lap("train")
    pred_dir = out_dir / "predictions"
    run_predict_slices([run_dir], cases, pred_dir, cases=[holdout])
    lap("predict")
    summary = run_evaluate_slices(pred_dir, cases, pred_dir / "metrics.csv", cases=[holdout])
    lap("evaluate")
    pics = out_dir / "pictures"
    pictures = [plot_history(run_dir, pics / "training_curves.png"),
                *run_report_slices(pred_dir, cases, pics)]
    lap("pictures")
    seconds["total"] = round(sum(seconds.values()), 1)
    dice = {"tumour": float(summary["cases"][0]["dice"])}
    as_shipped = epochs is None and not overrides and data_dir is None and holdout == HOLDOUT
    result = DemoResult(
        out_dir=out_dir, store=store, run_dir=run_dir, predictions=[pred_dir / holdout],
        metrics=pred_dir / "metrics.csv", pictures=pictures, dice=dice, holdout=holdout,
        expected=dict(EXPECTED_LGG_DICE) if as_shipped else {}, device="cpu", seconds=seconds)
    _write_json(result, cfg, out_dir / "demo.json")
    return result


def format_lgg_result(result: DemoResult) -> str:
    """The lines ``braintseg demo --dataset lgg`` prints."""
    lines = [
        f"braintseg demo (LGG) finished in {result.seconds.get('total', 0):.0f} s (steps: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total") + ")",
        f"  store        {result.store}",
        f"  run          {result.run_dir}  (model.keras, history.csv, config.yaml)",
        f"  predictions  {result.predictions[0]}  (<patient>_<n>_mask.tif, predictions.csv)",
        f"  metrics      {result.metrics}",
        *[f"  picture      {p}" for p in result.pictures],
        f"  summary      {result.out_dir / 'demo.json'}",
        f"held-out patient {result.holdout} (never trained on, nothing chosen on it): Dice "
        + dice_text(result.dice, result.expected),
    ]
    warning = outside_text(result.dice, result.expected)
    return "\n".join(lines + ([warning] if warning else []))
