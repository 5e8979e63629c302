"""``braintseg predict``: run folders + cases → label volumes in the source geometry.

Flow: read and check every run (``inference.runs``) → plan the cases and check every input
(``inference.cases``: headers only, case ids safe as file names, output folder writable) before
any model is loaded → load each model once → per case (the next cases are read in background
threads, the previous one written in another): slices of each run's view are predicted in
constant-shape batches (flips averaged with TTA), averaged over runs, turned into labels,
optionally post-processed, placed back into the source grid and written as ``<case>.nii.gz``
(uint8, source convention, source affine/header) → ``predictions.csv`` and
``predict_config.yaml``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg import __version__
from braintseg.config import Config, PredictConfig, load_config, to_dict
from braintseg.data.preprocess import to_source, uncrop
from braintseg.errors import ConfigError
from braintseg.inference.cases import CaseInput, check_case_id, plan_cases
from braintseg.inference.postprocess import describe, postprocess
from braintseg.inference.runs import RunInfo, check_ensemble, load_model, read_run
from braintseg.inference.writing import (
    prepare_out_dir,
    remove_unused_out_dir,
    save_probabilities,
    write_csv,
    write_yaml,
)
from braintseg.log import progress
from braintseg.sources.brats import save_labels
from braintseg.training.distribute import shard_items, shard_suffix

logger = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
CONFIG_NAME = "predict_config.yaml"
#: cases read and normalised ahead in parallel (gzip and numpy release the GIL); at most half
#: the cores, so that prediction keeps its own
LOAD_THREADS = 4


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


def probability_path(label_path: Path) -> Path:
    """``<name>_prob.nii.gz`` beside ``<name>.nii.gz`` (or ``.nii``)."""
    name = label_path.name
    ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii"  # the config checks the pattern
    return label_path.with_name(f"{name[: len(name) - len(ext)]}_prob{ext}")


def _write_case(case: CaseInput, labels: NDArray[np.uint8], probs: NDArray[np.float32] | None,
                target: Path, output: str) -> tuple[float, list[Path]]:
    """Uncrop, convert to the source convention, write; ``(seconds, files written)``."""
    from braintseg.inference.ensemble import uncrop_probabilities

    start = time.perf_counter()
    full = to_source(uncrop(labels, case.box, case.shape, fill=0), case.convention)
    files = [save_labels(full, case.header, case.affine, target)]
    if probs is not None:
        full_probs = uncrop_probabilities(probs, case.box, case.shape, output)
        files.append(save_probabilities(full_probs, case.header, case.affine,
                                        probability_path(target)))
    return time.perf_counter() - start, files


def _row(case: CaseInput, target: Path, seconds: float, labels: NDArray[np.uint8]) -> dict:
    counts = np.bincount(labels.ravel(), minlength=4)
    counts[0] += int(np.prod(case.shape)) - labels.size  # voxels outside the crop box
    return {"case": case.case_id, "convention": case.convention, "file": target.name,
            "seconds": round(seconds, 4), "voxels_background": int(counts[0]),
            "voxels_ncr": int(counts[1]), "voxels_edema": int(counts[2]),
            "voxels_et": int(counts[3])}


def _record(runs: list[RunInfo], pcfg: PredictConfig, tta: bool, probabilities: bool,
            input_path: Path, n_cases: int) -> dict[str, Any]:
    import keras

    return {
        "braintseg_version": __version__, "keras_backend": keras.backend.backend(),
        "input": str(Path(input_path).resolve()), "n_cases": n_cases,
        "runs": [r.describe() for r in runs], "tta": tta, "probabilities": probabilities,
        "predict": to_dict(pcfg),
        "postprocessing": describe(pcfg.min_component_size, pcfg.et_to_ncr_threshold),
        "data": to_dict(runs[0].cfg.data) | {"crop": list(runs[0].crop_box)},
    }


def run_predict(
    run_dirs: list[Path], input_path: Path, out_dir: Path, *, overrides: Sequence[str] = (),
    probabilities: bool = False, tta: bool = False, cases: list[str] | None = None,
    fold: int | None = None, shard: tuple[int, int] | None = None,
) -> list[Path]:
    """Predict every selected case with the ensemble of ``run_dirs``.

    Args:
        run_dirs: run folders (``-m``); same channels/crop/output head, any views and folds.
        input_path: folder of case folders, one case folder, or a store (``.h5``).
        out_dir: created if needed; receives ``<case>.nii.gz`` (``predict.output_pattern``),
            optional ``<case>_prob.nii.gz``, ``predictions.csv``, ``predict_config.yaml``.
        overrides: ``predict.KEY=VALUE`` strings.
        probabilities: also write ``(X, Y, Z, K)`` float32 probabilities.
        tta: average over flips along H and W (also enabled by ``predict.tta``).
        cases: case ids to predict (default: all).  fold: a store fold's validation cases.
        shard: ``(K, N)``: only cases ``K, K+N, …`` of the selection (a Slurm array task of
            N); the shards' label files are the unsharded run's, their table is
            ``predictions.shard-K-of-N.csv``.

    Runs trained on a 2D slice store go to :func:`braintseg.inference.slices.run_predict_slices`
    (``<slice>_mask.tif`` per slice and a per-slice ``predictions.csv``).

    Returns:
        The label files written, in case order.

    Raises:
        DataError, ConfigError: bad runs, inputs, case ids or output folder; checked before
            anything is written, every file is written under a temporary name and renamed.
    """
    runs = [read_run(Path(p)) for p in run_dirs]
    if any(r.layout == "slices" for r in runs):  # runs trained on a 2D slice store
        from braintseg.inference.slices import run_predict_slices

        return run_predict_slices(run_dirs, input_path, out_dir, overrides=overrides,
                                  probabilities=probabilities, tta=tta, cases=cases, fold=fold)
    check_ensemble(runs)
    pcfg = predict_config(runs[0].cfg, overrides)
    tta = tta or pcfg.tta
    first, out_dir = runs[0], Path(out_dir)
    plans = plan_cases(Path(input_path), first.crop_box, first.n_channels, first.cfg.data,
                       cases, fold)
    n_selected = len(plans)
    if not shard_items(plans, shard):  # more shards than cases: nothing to do here
        plans[0].close()
        logger.warning("shard %s of %d case(s) is empty", shard, n_selected)
        return []
    plans = shard_items(plans, shard)
    targets = [check_case_id(p.case_id, pcfg.output_pattern, out_dir) for p in plans]
    created = prepare_out_dir(out_dir)
    try:
        predictors = _predictors(runs, pcfg.batch_size, tta)
        record = _record(runs, pcfg, tta, probabilities, Path(input_path), n_selected)
        write_yaml(out_dir / CONFIG_NAME, record)  # first: never beside another run's predictions
        rows, written = _predict_all(plans, targets, predictors, pcfg, probabilities,
                                     first.output)
    except BaseException:
        # a model that cannot be loaded, a case that cannot be read, Ctrl-C: a folder this call
        # created is removed again if no prediction reached it
        remove_unused_out_dir(out_dir, created, own=(CONFIG_NAME,))
        raise
    finally:
        plans[0].close()  # all plans share one input
    write_csv(out_dir / CSV_NAME.replace(".csv", f"{shard_suffix(shard)}.csv"), rows)
    total = sum(r["seconds"] for r in rows)
    logger.info("predicted %d case(s) with %d run(s)%s: %.2f s/case; wrote %s", len(rows),
                len(runs), " + TTA" if tta else "", total / max(len(rows), 1), out_dir)
    return written


def _predictors(runs: list[RunInfo], batch_size: int, tta: bool) -> list[Any]:
    from braintseg.inference.ensemble import SlicePredictor

    return [SlicePredictor(load_model(run), run.view, batch_size, tta) for run in runs]


def _predict_all(plans: list[Any], targets: list[Path], predictors: list[Any],
                 pcfg: PredictConfig, probabilities: bool, output: str
                 ) -> tuple[list[dict[str, Any]], list[Path]]:
    """Loop over cases: load ahead in threads, predict here, write in another thread."""
    from braintseg.inference.ensemble import ensemble_volume, probabilities_to_labels

    rows: list[dict[str, Any]] = []
    written: list[Path] = []
    n_load = max(1, min(LOAD_THREADS, (os.cpu_count() or 1) // 2, len(plans)))
    with ThreadPoolExecutor(n_load) as loader, ThreadPoolExecutor(1) as writer:
        pending: tuple[Future[tuple[float, list[Path]]], CaseInput, float, Any] | None = None
        ahead = deque(loader.submit(plan.load) for plan in plans[:n_load])
        for i in progress(range(len(plans)), len(plans), "predict", "case"):
            case = ahead.popleft().result()
            if i + n_load < len(plans):
                ahead.append(loader.submit(plans[i + n_load].load))
            start = time.perf_counter()
            probs = ensemble_volume(predictors, case.images)
            labels = postprocess(probabilities_to_labels(probs, output),
                                 pcfg.min_component_size, pcfg.et_to_ncr_threshold)
            seconds = case.seconds + time.perf_counter() - start
            if pending is not None:
                _finish(pending, rows, written)
            job = writer.submit(_write_case, case, labels, probs if probabilities else None,
                                targets[i], output)
            pending = (job, case, seconds, (targets[i], labels))
        if pending is not None:
            _finish(pending, rows, written)
    return rows, written


def _finish(pending: tuple[Any, CaseInput, float, Any], rows: list[dict[str, Any]],
            written: list[Path]) -> None:
    job, case, seconds, (target, labels) = pending
    write_seconds, files = job.result()
    rows.append(_row(case, target, seconds + write_seconds, labels))
    written.append(files[0])
    logger.debug("%s: %.2f s (%s)", case.case_id, seconds + write_seconds, target)
