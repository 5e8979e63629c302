"""The demo's shared flow, once for every bundled data set: what a data set's demo is
(:class:`DemoSpec`), the steps (prepare → train → predict → evaluate → pictures, timed), what
they wrote (:class:`DemoResult`, ``demo.json``) and the lines ``braintseg demo`` prints.

A data set's demo is one module that declares a :class:`DemoSpec` (:mod:`.brats`, :mod:`.lgg`;
:mod:`.demo` names them for ``--dataset`` and holds the entry point ``run_demo``).  The steps
call the stages' public entry points only; those pick the volume or the slice path by the data's
layout, so the spec says no more than where the data is, which case is held out, the
configuration, and how the figures are named.  Output folder ``DIR``::

    DIR/store.h5 (+ .folds.json, ...)  the prepared store (every case of the data folder)
    DIR/run/                           the training run (config.yaml, model.keras, history.csv)
    DIR/predictions/                   the held-out case's prediction, metrics.csv (+ .json, ...)
    DIR/pictures/*.png                 training curves, pictures of the held-out case
    DIR/demo.json                      the :class:`DemoResult` and the configuration
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from braintseg.atomic import atomic_write_text
from braintseg.config import Config, to_dict
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

#: top-level names a demo writes in its output folder (removed first by ``overwrite``)
OUTPUT_NAMES = ("cases", "run", "predictions", "validation", "pictures", "demo.json")
#  ("cases" and "validation": written by earlier versions, removed too)


class Setup(NamedTuple):
    """A demo's configuration as chosen by :attr:`DemoSpec.configure`.

    Attributes:
        cfg: the configuration trained and predicted with.
        device: ``"cpu"`` or ``"gpu"``: which configuration it is.
        label: logged as ``demo: <label> configuration, ...`` ('' logs nothing).
    """

    cfg: Config
    device: str
    label: str = ""


@dataclass(frozen=True)
class DemoSpec:
    """What one data set's demo is; everything else is the shared flow of this module.

    Attributes:
        name: the ``--dataset`` value (``"brats"``, ``"lgg"``).
        title: the first printed line's start (``"braintseg demo"``).
        default_output: the output folder when ``-o`` is not given.
        holdout: the case held out of training, then predicted and evaluated.
        unit: what a case is called in messages (``"case"``, ``"patient"``).
        sample_dir: the bundled data folder (raises DataError when missing).
        configure: ``(data folder, epochs, overrides, gpu) → Setup``; runs before anything is
            written, so a bad override is refused first.
        expected_dice: held-out Dice range per name of the demo as shipped (the bundled data,
            ``holdout``, no ``--epochs``/``--set``, the CPU configuration).
        dice_columns: ``{name: column}``: the Dice figures of the held-out case's row in
            :func:`~braintseg.scoring.evaluate.run_evaluate`'s summary, in printed order.
        prepare_format: ``fmt`` of :func:`~braintseg.preparation.prepare.run_prepare`
            (``None``: detected).
        predict_input: ``"case"``: predict from the held-out case's own folder; ``"data"``:
            from the data folder with ``cases=[holdout]``.
        predictions: ``"files"``: the result lists the label files predict returns;
            ``"folder"``: the held-out case's folder of predictions (``predictions/<holdout>``).
        prediction_line: printed per entry of ``predictions`` (``{}``: the path).
        show_device: name the configuration (cpu/gpu) in the first printed line.
    """

    name: str
    title: str
    default_output: Path
    holdout: str
    unit: str
    sample_dir: Callable[[], Path]
    configure: Callable[[Path, int | None, Sequence[str], bool | None], Setup]
    expected_dice: Mapping[str, tuple[float, float]]
    dice_columns: Mapping[str, str]
    prepare_format: str | None = None
    predict_input: Literal["case", "data"] = "case"
    predictions: Literal["files", "folder"] = "files"
    prediction_line: str = "  prediction   {}"
    show_device: bool = True


@dataclass(frozen=True)
class DemoResult:
    """What a demo wrote and measured (also ``DIR/demo.json``).

    Attributes:
        out_dir: the output folder.
        store: the prepared store (``.h5``).
        run_dir: the training run folder.
        predictions: the held-out case's predictions (label files, or its folder of masks).
        metrics: the held-out case's metrics CSV written by evaluate.
        pictures: PNG files (training curves, then the held-out case's pictures).
        dice: held-out Dice per name of :attr:`DemoSpec.dice_columns` (NaN if undefined).
        holdout: the held-out case id.
        expected: the range of each Dice of the demo as shipped, or empty when the run
            differs from it (``--epochs``, ``--set``, a GPU, other data or case).
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
    expected: dict[str, tuple[float, float]]
    device: str
    seconds: dict[str, float] = field(default_factory=dict)


def run_spec(
    spec: DemoSpec,
    out_dir: Path | None = None,
    *,
    overwrite: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    gpu: bool | None = None,
    data_dir: Path | None = None,
    holdout: str | None = None,
) -> DemoResult:
    """Prepare, train, predict, evaluate and draw on ``spec``'s data; see the module docstring.

    Args:
        spec: the data set's demo.
        out_dir: output folder (default ``spec.default_output``); must be new or empty unless
            ``overwrite``.
        overwrite: replace the demo's outputs in a non-empty ``out_dir`` (other files are kept).
        epochs: training epochs (``--epochs``; wins over ``train.epochs`` in ``overrides``).
        overrides: ``"section.key=value"`` strings applied to the demo's configuration.
        gpu: passed to ``spec.configure`` (BraTS: train the GPU configuration; ``None``: when
            Keras sees a GPU).
        data_dir: case folders to use instead of the bundled ones.
        holdout: the case kept out of training (default ``spec.holdout``).

    Returns:
        A :class:`DemoResult`; also written to ``out_dir/demo.json``.

    Raises:
        DataError: ``out_dir`` is a file or not empty, no ``holdout`` folder in the data, or a
            step's input is invalid.
        ConfigError: an override is invalid.
    """
    out_dir = Path(out_dir) if out_dir is not None else spec.default_output
    holdout = spec.holdout if holdout is None else holdout
    entries = check_output(out_dir, overwrite)
    cases = Path(data_dir) if data_dir is not None else spec.sample_dir()
    if not (cases / holdout).is_dir():
        raise DataError(f"demo data {cases}: no {spec.unit} folder {holdout!r} to hold out")
    setup = spec.configure(cases, epochs, overrides, gpu)
    as_shipped = (setup.device == "cpu" and epochs is None and not overrides
                  and data_dir is None and holdout == spec.holdout)
    clear_output(out_dir, entries)
    if setup.label:
        logger.info("demo: %s configuration, holding out %s, writing to %s",
                    setup.label, holdout, out_dir)
    result = run_steps(spec, setup, cases, out_dir, holdout,
                       dict(spec.expected_dice) if as_shipped else {})
    write_json(result, setup.cfg, out_dir / "demo.json")
    return result


def run_steps(spec: DemoSpec, setup: Setup, cases: Path, out_dir: Path, holdout: str,
              expected: dict[str, tuple[float, float]]) -> DemoResult:
    """The pipeline itself, timed step by step, into ``out_dir`` (already checked)."""
    from braintseg.inference.predict import run_predict
    from braintseg.preparation.prepare import run_prepare
    from braintseg.scoring.evaluate import run_evaluate
    from braintseg.training.train import run_train

    cfg = setup.cfg
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = round(now - clock[0], 1)
        clock[0] = now
        logger.info("demo: %s done in %.1f s", step, seconds[step])

    store = Path(run_prepare(cfg, cases, out_dir / "store.h5", overwrite=True,
                             fmt=spec.prepare_format))
    lap("prepare")
    run_dir = out_dir / "run"
    run_train(cfg, store, validation_fold(store, holdout), run_dir, overwrite=True)
    lap("train")
    pred_dir = out_dir / "predictions"
    if spec.predict_input == "case":
        written = run_predict([run_dir], cases / holdout, pred_dir)
    else:
        written = run_predict([run_dir], cases, pred_dir, cases=[holdout])
    predictions = ([Path(p) for p in written] if spec.predictions == "files"
                   else [pred_dir / holdout])
    lap("predict")
    metrics = pred_dir / "metrics.csv"
    summary = run_evaluate(pred_dir, cases, metrics, cases=[holdout])
    lap("evaluate")
    pictures = draw_pictures(run_dir, pred_dir, cases, out_dir / "pictures")
    lap("pictures")
    seconds["total"] = round(sum(seconds.values()), 1)
    return DemoResult(
        out_dir=out_dir, store=store, run_dir=run_dir, predictions=predictions, metrics=metrics,
        pictures=pictures, dice=held_out_dice(summary, holdout, spec.dice_columns),
        holdout=holdout, expected=expected, device=setup.device, seconds=seconds,
    )


def check_output(out_dir: Path, overwrite: bool) -> list[str]:
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


def clear_output(out_dir: Path, entries: Sequence[str]) -> None:
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


def validation_fold(store_path: Path, case: str) -> int:
    """Index of the fold whose validation cases are exactly ``[case]`` (or contain it)."""
    from braintseg.store.read import open_store

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


def draw_pictures(run_dir: Path, pred_dir: Path, cases_dir: Path, out_dir: Path) -> list[Path]:
    """Training curves of ``run_dir``, then :func:`~braintseg.reporting.report.run_report`'s
    pictures of the predictions (BraTS: an overlay montage per case; 2D slices: a montage per
    patient and the ROC curve); the PNGs written.

    Args:
        run_dir: the training run (``history.csv``).
        pred_dir: the predictions (and ``metrics.csv`` for the Dice in the titles).
        cases_dir: the case folders with the images (and ground truth) of the predicted cases.
        out_dir: where ``training_curves.png`` and the prediction pictures go.
    """
    from braintseg.reporting.report import plot_history, run_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_history(Path(run_dir), out_dir / "training_curves.png")
    return [curves, *run_report(Path(pred_dir), Path(cases_dir), out_dir)]


def held_out_dice(summary: dict[str, Any], case: str,
                  columns: Mapping[str, str]) -> dict[str, float]:
    """``{name: Dice}`` of ``case`` from a ``run_evaluate`` summary (``columns``: name → the
    per-case row's column)."""
    rows = [r for r in summary["cases"] if r["case"] == case]
    if not rows or rows[0]["status"] != "ok":
        raise DataError(f"evaluation has no scored prediction for case {case}")
    return {name: float(rows[0][column]) for name, column in columns.items()}


def write_json(result: DemoResult, cfg: Config, path: Path) -> None:
    """Write ``result`` and the configuration as JSON (temporary name, then rename)."""
    raw = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    for key in ("predictions", "pictures"):
        raw[key] = [str(p) for p in raw[key]]
    raw["config"] = to_dict(cfg)
    atomic_write_text(path, json.dumps(raw, indent=2, allow_nan=True) + "\n")


def format_text(result: DemoResult, spec: DemoSpec) -> str:
    """The lines ``braintseg demo`` prints: what was written where, then the held-out Dice
    with its expected range (and a warning line for a figure outside it)."""
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
    device = f"{result.device} configuration; " if spec.show_device else ""
    lines = [
        f"{spec.title} finished in {result.seconds.get('total', 0):.0f} s "
        f"({device}steps: {steps})",
        f"  store        {result.store}",
        f"  run          {result.run_dir}  (model.keras, history.csv, config.yaml)",
        *[spec.prediction_line.format(p) for p in result.predictions],
        f"  metrics      {result.metrics}",
        *[f"  picture      {p}" for p in result.pictures],
        f"  summary      {result.out_dir / 'demo.json'}",
        f"held-out {spec.unit} {result.holdout} (never trained on, nothing chosen on it): Dice "
        + dice_text(result.dice, result.expected),
    ]
    warning = outside_text(result.dice, result.expected)
    return "\n".join(lines + ([warning] if warning else []))


def dice_text(dice: dict[str, float], expected: Mapping[str, tuple[float, float]]) -> str:
    """``WT 0.812  TC 0.845 ...``, each followed by its expected range when there is one."""
    def one(name: str, value: float) -> str:
        lo_hi = expected.get(name)
        return f"{name.upper()} {value:.3f}" + (f" (expected {lo_hi[0]:.2f}-{lo_hi[1]:.2f})"
                                                 if lo_hi else "")
    return "  ".join(one(r, v) for r, v in dice.items())


def outside_text(dice: dict[str, float], expected: Mapping[str, tuple[float, float]]) -> str:
    """A warning naming the Dice figures outside their expected range ('' when none is)."""
    off = [name.upper() for name, (lo, hi) in expected.items()
           if not lo <= dice.get(name, float("nan")) <= hi]
    if not off:
        return ""
    return (f"warning: held-out Dice of {', '.join(off)} outside the range measured with the "
            "tested dependency set; install with `pip install -c constraints.txt` and see "
            "docs/benchmarks.md (the demo's figures)")
