"""Run folders written by ``braintseg train``: reading, checking an ensemble, loading models.

A run folder holds ``model.keras`` (best weights), ``config.yaml`` (the resolved config) and
``run.json`` with at least ``view``, ``n_channels`` and ``crop_box`` (``(x0, x1, y0, y1, z0,
z1)``, stop exclusive, on the source grid); ``input_shape`` and ``fold`` are read when present.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braintseg.config import SEG_OUTPUT, VIEWS, Config, load_config
from braintseg.errors import ConfigError, DataError
from braintseg.training.runs import run_folder

logger = logging.getLogger(__name__)

RUN_FILES = ("model.keras", "run.json", "config.yaml")


@dataclass(frozen=True)
class RunInfo:
    """What predict needs from one run folder (no model loaded).

    Attributes:
        path: the run folder.
        cfg: its resolved config (``data.*`` drives normalisation of NIfTI input).
        view: ``axial`` | ``sagittal`` | ``coronal``.
        crop_box: ``(x0, x1, y0, y1, z0, z1)`` used in training.
        n_channels: input channels (4: FLAIR, T1, T1ce, T2).
        output: ``classes`` (4 softmax classes) or ``regions`` (3 sigmoids WT/TC/ET).
        fold: the cross-validation fold, or None.
        layout: the training store's layout: ``volumes`` (BraTS) or ``slices`` (2D data
            sets: no crop box, ``output: binary``; predicted by :mod:`braintseg.inference.slices`).
        input_shape: ``(H, W, C)`` the network was trained on.
        tumour_fraction: slice stores: the share of the training slices with tumour
            (``run.json`` ``train_tumour_fraction``; None in older runs).
    """

    path: Path
    cfg: Config
    view: str
    crop_box: tuple[int, int, int, int, int, int]
    n_channels: int
    output: str
    fold: int | None
    layout: str = "volumes"
    input_shape: tuple[int, ...] = ()
    tumour_fraction: float | None = None

    def describe(self) -> dict[str, Any]:
        """YAML-safe summary for ``predict_config.yaml``."""
        return {"path": str(self.path.resolve()), "view": self.view, "fold": self.fold,
                "crop_box": list(self.crop_box), "n_channels": self.n_channels,
                "output": self.output, "model": self.cfg.model.name}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"run file {path} is not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"run file {path} must hold a JSON object; received {type(raw).__name__}")
    return raw


def _crop_box(meta: dict[str, Any], cfg: Config, path: Path) -> tuple[int, ...]:
    box = meta.get("crop_box", cfg.data.crop)
    if box == "auto" or not isinstance(box, (list, tuple)) or len(box) != 6:
        raise DataError(f"run {path}: run.json has no crop_box of 6 ints; received {box!r}")
    try:
        return tuple(int(v) for v in box)
    except (TypeError, ValueError):
        raise DataError(f"run {path}: crop_box must be 6 ints; received {box!r}") from None


def read_run(path: Path) -> RunInfo:
    """Read and check one run folder (or the folder of the ``model.keras`` given).

    Raises:
        DataError: the folder is missing, lacks ``model.keras`` / ``run.json`` /
            ``config.yaml``, or ``run.json`` is malformed (message names the folder and key).
        ConfigError: ``config.yaml`` is invalid.
    """
    path = run_folder(Path(path))
    if not path.is_dir():
        raise DataError(f"run folder {path} does not exist or is not a folder")
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} is not a braintseg run: missing {', '.join(missing)}; expected "
                        "a folder written by `braintseg train`")
    meta = _read_json(path / "run.json")
    if not (path / "DONE").is_file():
        logger.warning("run %s has no DONE marker (training unfinished?): using its best "
                       "model so far", path)
    cfg = load_config(path / "config.yaml")
    view = meta.get("view", cfg.train.view)
    if view not in VIEWS:
        raise DataError(f"run {path}: view must be one of {list(VIEWS)}; received {view!r}")
    n_channels = meta.get("n_channels", (meta.get("input_shape") or [None])[-1])
    if not isinstance(n_channels, int) or n_channels < 1:
        raise DataError(f"run {path}: run.json n_channels must be a positive int; "
                        f"received {n_channels!r}")
    fold = meta.get("fold")
    layout = str(meta.get("layout", "volumes"))
    box = () if layout == "slices" else _crop_box(meta, cfg, path)
    return RunInfo(path, cfg, view, box, n_channels,  # type: ignore[arg-type]
                   cfg.model.output, fold if isinstance(fold, int) else None, layout,
                   tuple(int(v) for v in meta.get("input_shape") or ()),
                   _fraction(meta.get("train_tumour_fraction")))


def _fraction(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    return float(value) if ok else None


def check_ensemble(runs: list[RunInfo]) -> None:
    """Runs averaged together must share channels, crop box, output head and normalisation.

    Different views and folds are fine.

    Raises:
        ConfigError: naming the two runs and the differing key with both values.
    """
    if not runs:
        raise ConfigError("predict needs at least one run folder (-m RUN_DIR)")
    first = runs[0]
    checks = {
        "n_channels": lambda r: r.n_channels,
        "crop_box": lambda r: list(r.crop_box),
        "model.output": lambda r: r.output,
        "model.classification_head": lambda r: r.cfg.model.classification_head,
        "data.normalization": lambda r: r.cfg.data.normalization,
        "data.clip_percentiles": lambda r: list(r.cfg.data.clip_percentiles),
    }
    for run in runs[1:]:
        for key, get in checks.items():
            if get(run) != get(first):
                raise ConfigError(
                    f"runs {first.path} and {run.path} cannot be ensembled: {key} differs "
                    f"({get(first)} vs {get(run)}); expected the same {key} in every run"
                )


def load_model(run: RunInfo) -> Any:
    """Load ``run.path / model.keras`` with ``safe_mode=True`` (nothing unpickled).

    Raises:
        DataError: the file cannot be loaded as a Keras model (names the file).
    """
    import keras

    import braintseg.model  # noqa: F401 - registers custom layers/losses/metrics

    path = run.path / "model.keras"
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        first = (str(exc).splitlines() or [""])[0][:300]
        raise DataError(f"cannot load model {path}: {type(exc).__name__}: {first}") from None
    output = model.output  # a dict with model.classification_head
    out = (output[SEG_OUTPUT] if isinstance(output, dict) else output).shape[-1]
    expected = {"classes": 4, "binary": 2}.get(run.output, 3)
    if out != expected or model.input_shape[-1] != run.n_channels:
        raise DataError(
            f"model {path}: input/output channels {model.input_shape[-1]}/{out}; expected "
            f"{run.n_channels}/{expected} (run.json n_channels, model.output={run.output})"
        )
    return model
