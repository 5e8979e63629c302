"""``braintseg demo``: the whole pipeline on the four real BraTS cases bundled with the package.

The four cases have three roles: ``BraTS-GLI-00000-000`` (the BraTS 2023 case, so both label
conventions are exercised) is the *held-out* case, never seen in training nor used to choose
the model; ``Brats18_TCIA03_265_1`` is the *validation* case, on which the best epoch's model is
chosen; the other two BraTS 2018 cases are trained on.  prepare (the three non-held-out cases →
store, 3 folds of one case) → train (the fold validating on :data:`VALIDATION`) → predict the
held-out and the validation case from their NIfTI files → evaluate each against its ground
truth → pictures.  Both Dice figures are printed, each named as what it is: the validation Dice
is optimistic (the model was chosen on that case), the held-out Dice is not.  Output folder::

    DIR/cases/                         links to the three training/validation case folders
    DIR/store.h5 (+ .folds.json, ...)  the prepared store (those three cases)
    DIR/run/                           the training run (config.yaml, model.keras, history.csv)
    DIR/predictions/<case>.nii.gz      the held-out case's labels, in its geometry and convention
    DIR/predictions/metrics.csv        its Dice, HD95, sensitivity, specificity (+ .json, ...)
    DIR/validation/                    the same for the validation case
    DIR/pictures/*.png                 training curves and an overlay montage of the held-out case
    DIR/demo.json                      what was written where, Dice per region, timings

On a CPU the demo trains the small configuration :data:`CPU_CONFIG` (equal to
``configs/demo.yaml``) for a few minutes; with a GPU visible to Keras it trains the default (the
original method's) configuration with the demo's data section.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from braintseg.atomic import atomic_write_text
from braintseg.config import REGIONS, Config, from_dict, load_config, to_dict
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

#: the held-out (test) case: neither trained on nor used to choose the model
HOLDOUT = "BraTS-GLI-00000-000"
#: the validation case: the model of the best epoch on it is kept (never trained on)
VALIDATION = "Brats18_TCIA03_265_1"
DEFAULT_OUTPUT = Path("braintseg-demo")

#: the demo's configuration on a CPU (configs/demo.yaml holds the same keys; a test checks this)
CPU_CONFIG: dict[str, dict[str, Any]] = {
    "data": {"crop": "auto", "n_folds": 3},
    "model": {"levels": 3, "start_channels": 8},
    "train": {
        "batch_size": 8,
        "epochs": 6,
        "steps_per_epoch": 40,
        "optimizer": "adam",
        "learning_rate": 0.003,
        "schedule": "cosine",
        "tumour_oversampling": 0.5,
    },
    "predict": {"batch_size": 16},
}
#: with a GPU: the default configuration plus the demo's data section (3 folds of 1 case)
GPU_CONFIG: dict[str, dict[str, Any]] = {"data": dict(CPU_CONFIG["data"])}

#: top-level names the demo writes in its output folder (removed first by ``overwrite``)
OUTPUT_NAMES = ("cases", "run", "predictions", "validation", "pictures", "demo.json")


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` wrote and measured.

    Attributes:
        out_dir: the output folder.
        store: the prepared store (``.h5``).
        run_dir: the training run folder.
        predictions: the held-out case's predicted label NIfTI files.
        metrics: the held-out case's metrics CSV written by evaluate.
        pictures: PNG files (training curves, overlay montages).
        dice: held-out Dice per region, ``{"wt": .., "tc": .., "et": ..}`` (NaN if undefined).
        holdout: the held-out case id.
        validation: the validation case id (the model was chosen on it).
        validation_dice: the chosen model's Dice per region on the validation case (optimistic).
        validation_metrics: the validation case's metrics CSV.
        device: ``"cpu"`` or ``"gpu"`` (which configuration was trained).
        seconds: wall time per step and in total.
    """

    out_dir: Path
    store: Path
    run_dir: Path
    predictions: list[Path]
    metrics: Path
    pictures: list[Path]
    dice: dict[str, float]
    holdout: str
    validation: str
    validation_dice: dict[str, float]
    validation_metrics: Path
    device: str
    seconds: dict[str, float] = field(default_factory=dict)


def sample_data_dir() -> Path:
    """The folder of the bundled BraTS cases (``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``)."""
    path = Path(str(resources.files("braintseg") / "sample_data" / "brats"))
    if not path.is_dir():
        raise DataError(
            f"bundled sample data not found at {path}; expected the package's sample_data/brats "
            "folder (reinstall braintseg)"
        )
    return path


def gpu_visible() -> bool:
    """Whether the Keras backend sees a GPU (imports Keras)."""
    import keras

    return bool(keras.distribution.list_devices("gpu"))


def demo_config(
    gpu: bool = False, epochs: int | None = None, overrides: Sequence[str] = ()
) -> Config:
    """The demo's configuration: :data:`CPU_CONFIG` or (``gpu``) :data:`GPU_CONFIG`.

    ``epochs`` (``--epochs``) wins over ``overrides`` (``--set section.key=value``).
    """
    base = from_dict(GPU_CONFIG if gpu else CPU_CONFIG, "demo config")
    cfg = load_config(None, overrides, base=base)
    return cfg.replace(train={"epochs": epochs}) if epochs is not None else cfg


def _check_output(out_dir: Path, overwrite: bool) -> list[str]:
    """Refuse a file, or a non-empty folder unless ``overwrite``; return the folder's entries."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"demo output {out_dir} is a file; expected a new or empty folder")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise DataError(
            f"demo output folder {out_dir} is not empty ({len(entries)} entries: {shown}); "
            "expected a new or empty folder (use --overwrite to replace the demo's files in it)"
        )
    return entries


def _clear_output(out_dir: Path, entries: Sequence[str]) -> None:
    """Create ``out_dir``; remove the demo's own old outputs from it (other files are kept)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in entries:
        path = out_dir / name
        if name in OUTPUT_NAMES or name.startswith("store."):
            logger.info("removing old demo output %s", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def cases_except(cases_dir: Path, excluded: str, dest: Path) -> Path:
    """``dest`` holding every case folder of ``cases_dir`` except ``excluded``.

    The folders are symbolic links (copies where links cannot be made); a ``dest`` made by an
    earlier call is replaced.  Returns ``dest``, to give to ``prepare``.

    Raises:
        DataError: ``cases_dir`` has no case folder ``excluded``, or ``dest`` is a file.
    """
    cases_dir, dest = Path(cases_dir), Path(dest)
    names = sorted(p.name for p in cases_dir.iterdir() if p.is_dir())
    if excluded not in names:
        raise DataError(f"{cases_dir} has no case folder {excluded!r} to leave out; "
                        f"found {names}")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} is a file; expected a folder for links to the cases")
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in names:
        if name == excluded:
            continue
        try:
            (dest / name).symlink_to((cases_dir / name).resolve(), target_is_directory=True)
        except OSError:  # no symbolic links here (some Windows setups): copy
            shutil.copytree(cases_dir / name, dest / name)
    return dest


def validation_fold(store_path: Path, case: str) -> int:
    """Index of the fold whose validation cases are exactly ``[case]`` (or contain it)."""
    from braintseg.data.store import open_store

    store = open_store(store_path)
    try:
        folds = [list(f) for f in store.folds]
    finally:
        store.close()
    for exact in (True, False):
        for i, val in enumerate(folds):
            if (val == [case]) if exact else (case in val):
                return i
    raise DataError(f"store {store_path}: case {case} is in no validation fold; folds: {folds}")


def run_demo(
    out_dir: Path = DEFAULT_OUTPUT,
    *,
    overwrite: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    gpu: bool | None = None,
    data_dir: Path | None = None,
    holdout: str = HOLDOUT,
    validation: str = VALIDATION,
) -> DemoResult:
    """Prepare, train, predict, evaluate and draw on the bundled cases; see the module docstring.

    Args:
        out_dir: output folder; must be new or empty unless ``overwrite``.
        overwrite: replace the demo's outputs in a non-empty ``out_dir`` (other files are kept).
        epochs: training epochs (``--epochs``; wins over ``train.epochs`` in ``overrides``).
        overrides: ``"section.key=value"`` strings applied to the demo's configuration.
        gpu: train the GPU (default) configuration; ``None``: when Keras sees a GPU.
        data_dir: BraTS case folders to use instead of the bundled ones.
        holdout: the case kept out of training and validation, then predicted and evaluated.
        validation: the case the best model is chosen on (predicted and evaluated too).

    Returns:
        A :class:`DemoResult`; also written to ``out_dir/demo.json``.

    Raises:
        DataError: ``out_dir`` is a file or not empty, or a step's input is invalid.
        ConfigError: an override is invalid.
    """
    out_dir = Path(out_dir)
    entries = _check_output(out_dir, overwrite)
    cases = Path(data_dir) if data_dir is not None else sample_data_dir()
    for role, case in (("hold out", holdout), ("validate on", validation)):
        if not (cases / case).is_dir():
            raise DataError(f"demo data {cases}: no case folder {case!r} to {role}")
    if holdout == validation:
        raise DataError(f"demo: the held-out case {holdout} cannot also be the validation case")
    demo_config(False, epochs, overrides)  # bad overrides fail here, before Keras is imported
    use_gpu = gpu_visible() if gpu is None else gpu
    cfg = demo_config(use_gpu, epochs, overrides)
    _clear_output(out_dir, entries)
    logger.info("demo: %s configuration, holding out %s, validating on %s, writing to %s",
                "GPU (default)" if use_gpu else "CPU (configs/demo.yaml)", holdout, validation,
                out_dir)
    result = _run_steps(cfg, cases, out_dir, (holdout, validation), "gpu" if use_gpu else "cpu")
    _write_json(result, cfg, out_dir / "demo.json")
    return result


def _run_steps(cfg: Config, cases: Path, out_dir: Path, roles: tuple[str, str],
               device: str) -> DemoResult:
    """The pipeline itself, timed step by step; ``roles`` = (held-out, validation) case."""
    from braintseg.evaluate import run_evaluate
    from braintseg.predict import run_predict
    from braintseg.prepare import run_prepare
    from braintseg.train import run_train

    holdout, validation = roles
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = round(now - clock[0], 1)
        clock[0] = now
        logger.info("demo: %s done in %.1f s", step, seconds[step])

    train_cases = cases_except(cases, holdout, out_dir / "cases")
    store = Path(run_prepare(cfg, train_cases, out_dir / "store.h5", overwrite=True))
    lap("prepare")
    run_dir = out_dir / "run"
    run_train(cfg, store, validation_fold(store, validation), run_dir, overwrite=True)
    lap("train")
    pred_dir, val_dir = out_dir / "predictions", out_dir / "validation"
    predictions = [Path(p) for p in run_predict([run_dir], cases / holdout, pred_dir)]
    run_predict([run_dir], cases / validation, val_dir)
    lap("predict")
    metrics, val_metrics = pred_dir / "metrics.csv", val_dir / "metrics.csv"
    summary = run_evaluate(pred_dir, cases, metrics, cases=[holdout])
    val_summary = run_evaluate(val_dir, cases, val_metrics, cases=[validation])
    lap("evaluate")
    pictures = draw_pictures(run_dir, pred_dir, cases, out_dir / "pictures")
    lap("pictures")
    seconds["total"] = round(sum(seconds.values()), 1)
    return DemoResult(
        out_dir=out_dir, store=store, run_dir=run_dir, predictions=predictions, metrics=metrics,
        pictures=pictures, dice=case_dice(summary, holdout), holdout=holdout,
        validation=validation, validation_dice=case_dice(val_summary, validation),
        validation_metrics=val_metrics, device=device, seconds=seconds,
    )


def draw_pictures(run_dir: Path, pred_dir: Path, cases_dir: Path, out_dir: Path) -> list[Path]:
    """Training curves of ``run_dir`` and an overlay montage per prediction; the PNGs written.

    Args:
        run_dir: the training run (``history.csv``).
        pred_dir: ``<case>.nii.gz`` predictions (and ``metrics.csv`` for the Dice in the titles).
        cases_dir: BraTS case folders with the images (and ground truth) of the predicted cases.
        out_dir: where ``training_curves.png`` and ``<case>_overlay.png`` go.
    """
    from braintseg.report import plot_history, plot_prediction_overlays

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_history(Path(run_dir), out_dir / "training_curves.png")
    return [curves, *plot_prediction_overlays(Path(pred_dir), Path(cases_dir), out_dir)]


def case_dice(summary: dict[str, Any], case: str) -> dict[str, float]:
    """``{"wt", "tc", "et"} → Dice`` of ``case`` from a ``run_evaluate`` summary."""
    rows = [r for r in summary["cases"] if r["case"] == case]
    if not rows or rows[0]["status"] != "ok":
        raise DataError(f"evaluation has no scored prediction for case {case}")
    return {region: float(rows[0][f"{region}_dice"]) for region in REGIONS}


def _write_json(result: DemoResult, cfg: Config, path: Path) -> None:
    """Write ``result`` and the configuration as JSON (temporary name, then rename)."""
    raw = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    for key in ("predictions", "pictures"):
        raw[key] = [str(p) for p in raw[key]]
    raw["config"] = to_dict(cfg)
    atomic_write_text(path, json.dumps(raw, indent=2, allow_nan=True) + "\n")


def format_result(result: DemoResult) -> str:
    """The lines ``braintseg demo`` prints: what was written where, the validation Dice and
    (last) the held-out Dice."""
    out = result.out_dir
    lines = [
        f"braintseg demo finished in {result.seconds.get('total', 0):.0f} s "
        f"({result.device} configuration; steps: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total") + ")",
        f"  store        {result.store}",
        f"  run          {result.run_dir}  (model.keras, history.csv, config.yaml)",
        *[f"  prediction   {p}" for p in result.predictions],
        f"  metrics      {result.metrics}",
        f"  validation   {result.validation_metrics}",
        *[f"  picture      {p}" for p in result.pictures],
        f"  summary      {out / 'demo.json'}",
        f"validation case {result.validation} (the model was chosen on it: optimistic): Dice "
        + _dice_text(result.validation_dice),
        f"held-out case {result.holdout} (never trained on nor used to choose the model): Dice "
        + _dice_text(result.dice),
    ]
    return "\n".join(lines)


def _dice_text(dice: dict[str, float]) -> str:
    return "  ".join(f"{r.upper()} {v:.3f}" for r, v in dice.items())
