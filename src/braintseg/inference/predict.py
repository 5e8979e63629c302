"""``braintseg predict``: run folders + input → predictions written back in the source's format.

One flow for every layout: read and check every run (``inference.runs``) → the layout of the
runs' training store picks the strategy (:data:`STRATEGIES`: :class:`~.volumes.Volumes` for
BraTS volume stores, :class:`~.slices.Slices` for 2D slice stores) → the strategy plans the
cases and checks every input (headers only, case ids, ``--cases``/``--fold``) before any model
is loaded → ``--shard`` keeps its share of the cases → the output folder is checked (created if
needed, removed again when nothing reached it) → the models are loaded,
``predict_config.yaml`` is written, every case is predicted and written back by its source
(:meth:`braintseg.sources.base.Source.write_prediction`) → ``predictions.csv`` (the strategy's
columns; ``predictions.shard-K-of-N.csv`` for a shard).

A strategy (:class:`Strategy`) holds what differs: where cases come from (NIfTI folders or a
volume store; a slice folder or a slice store), how a prediction goes back to the source
geometry (3D un-crop vs per-slice resize), the CSV columns and the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from braintseg.config import Config, PredictConfig, load_config
from braintseg.errors import ConfigError
from braintseg.inference.runs import RunInfo, check_ensemble, read_run
from braintseg.inference.slices import Slices
from braintseg.inference.volumes import Volumes
from braintseg.inference.writing import (
    prepare_out_dir,
    remove_unused_out_dir,
    write_text,
    write_yaml,
)
from braintseg.training.distribute import shard_items, shard_suffix

logger = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
CONFIG_NAME = "predict_config.yaml"


class Strategy(Protocol):
    """A layout's part of predict, made per call from ``(runs, predict config, tta,
    probabilities)``; the planned items have a ``case_id``."""

    def plan(self, input_path: Path, cases: list[str] | None, fold: int | None,
             fmt: str | None) -> tuple[list[Any], Callable[[], None]]:
        """The selected cases (checked, nothing read) and a ``close`` releasing the input.

        Raises DataError/ConfigError: missing input, unknown ids or fold, no case selected."""

    def check(self, items: list[Any], out_dir: Path) -> None:
        """Checks of the output names before the folder is made (DataError)."""

    def load_models(self) -> None:
        """Load every run's model (DataError naming a file that is not one)."""

    def record(self, input_path: Path, n_cases: int) -> dict[str, Any]:
        """The YAML-safe ``predict_config.yaml``."""

    def predict(self, items: list[Any], out_dir: Path
                ) -> tuple[list[dict[str, Any]], list[Path]]:
        """Predict and write every item: ``(csv rows, label files written)``."""

    def csv(self, rows: list[dict[str, Any]]) -> str:
        """The text of ``predictions.csv``."""

    def summary(self, rows: list[dict[str, Any]], n_items: int, out_dir: Path) -> str:
        """The closing log line."""


#: the strategy of each training-store layout (``RunInfo.layout``)
STRATEGIES: dict[str, Callable[[list[RunInfo], PredictConfig, bool, bool], Strategy]] = {
    "volumes": Volumes, "slices": Slices}


def predict_config(base: Config, overrides: Sequence[str]) -> PredictConfig:
    """The first run's ``predict`` section with ``--set predict.KEY=VALUE`` overrides applied.

    Raises:
        ConfigError: an override outside ``predict.*``, an unknown key or a bad value.
    """
    for item in overrides:
        if not item.strip().startswith("predict."):
            raise ConfigError(f"predict accepts only --set predict.KEY=VALUE overrides; "
                              f"received {item!r}")
    return load_config(None, overrides, base=base).predict


def layout_of(runs: list[RunInfo]) -> str:
    """``slices`` when the runs were trained on a slice store, else ``volumes``.

    Raises:
        ConfigError: runs of both layouts.
    """
    if not any(r.layout == "slices" for r in runs):
        return "volumes"
    if any(r.layout != "slices" for r in runs):
        raise ConfigError("runs trained on BraTS volumes and on 2D slices cannot be mixed")
    return "slices"


def run_predict(
    run_dirs: list[Path], input_path: Path, out_dir: Path, *, overrides: Sequence[str] = (),
    probabilities: bool = False, tta: bool = False, cases: list[str] | None = None,
    fold: int | None = None, shard: tuple[int, int] | None = None, fmt: str | None = None,
) -> list[Path]:
    """Predict every selected case with the ensemble of ``run_dirs``.

    Args:
        run_dirs: run folders (``-m``); same channels/crop/output head, any views and folds.
        input_path: volume runs: a folder of case folders, one case folder, or a store
            (``.h5``); slice runs: an LGG/figshare folder or a slice store.
        out_dir: created if needed; receives the predictions in the source's format (volumes:
            ``<case>.nii.gz`` (``predict.output_pattern``) and ``<case>_prob.nii.gz``; slices:
            ``<patient>/<slice id>_mask.tif`` and ``_prob.tif``), ``predictions.csv`` and
            ``predict_config.yaml``.
        overrides: ``predict.KEY=VALUE`` strings.
        probabilities: also write probabilities (volumes ``(X, Y, Z, K)`` float32, slices the
            float32 tumour probability of each slice).
        tta: average over flips along H and W (also enabled by ``predict.tta``).
        cases: case ids to predict (default: all).  fold: a store fold's validation cases.
        shard: ``(K, N)``: only cases ``K, K+N, …`` of the selection (a Slurm array task of
            N); the shards' files are the unsharded run's, their table is
            ``predictions.shard-K-of-N.csv``.
        fmt: slice folders: the source format (default: detected).

    Returns:
        The label files written (volumes: one per case; slices: one mask per slice), in order.

    Raises:
        DataError, ConfigError: bad runs, inputs, case ids or output folder; checked before
            anything is written, every file is written under a temporary name and renamed.
    """
    runs = [read_run(Path(p)) for p in run_dirs]
    check_ensemble(runs)
    layout = layout_of(runs)
    pcfg = predict_config(runs[0].cfg, overrides)
    tta = tta or pcfg.tta
    input_path, out_dir = Path(input_path), Path(out_dir)
    strategy = STRATEGIES[layout](runs, pcfg, tta, probabilities)
    items, close = strategy.plan(input_path, cases, fold, fmt)
    try:
        selected = shard_items(items, shard)
        if not selected:  # more shards than cases: nothing to do here
            logger.warning("shard %s of %d case(s) is empty", shard, len(items))
            return []
        strategy.check(selected, out_dir)
        created = prepare_out_dir(out_dir)
        try:
            strategy.load_models()
            # the record first: never beside another run's predictions
            write_yaml(out_dir / CONFIG_NAME, strategy.record(input_path, len(items)))
            rows, written = strategy.predict(selected, out_dir)
        except BaseException:
            # a model that cannot be loaded, a case that cannot be read, Ctrl-C: a folder this
            # call created is removed again if no prediction reached it
            remove_unused_out_dir(out_dir, created, own=(CONFIG_NAME,))
            raise
    finally:
        close()
    write_text(out_dir / CSV_NAME.replace(".csv", f"{shard_suffix(shard)}.csv"),
               strategy.csv(rows))
    logger.info("%s", strategy.summary(rows, len(selected), out_dir))
    return written
