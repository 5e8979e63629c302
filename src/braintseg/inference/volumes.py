"""Predict's strategy for runs trained on a volume store (BraTS): cases → label volumes.

Input: NIfTI case folders (normalised exactly as ``prepare`` does) or a volume store
(:mod:`braintseg.inference.cases`).  Per case (the next cases are read in background threads,
the previous one written in another): slices of each run's view are predicted in
constant-shape batches (flips averaged with TTA), averaged over runs, turned into internal labels
{0,1,2,3}, optionally post-processed, un-cropped into the source grid ``(X, Y, Z)`` and written
back by the case's source (:func:`braintseg.sources.brats.write_prediction`: ``<case>.nii.gz``
uint8 in the source convention with the source affine/header, and with ``--probabilities``
``<case>_prob.nii.gz`` ``(X, Y, Z, K)`` float32).  ``predictions.csv``: one row per case
(:data:`CSV_COLUMNS`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg import __version__
from braintseg.config import PredictConfig, to_dict
from braintseg.data.preprocess import uncrop
from braintseg.inference.cases import CaseInput, CasePlan, check_case_id, plan_cases
from braintseg.inference.postprocess import describe, postprocess
from braintseg.inference.runs import RunInfo, load_model
from braintseg.inference.writing import csv_text
from braintseg.log import progress
from braintseg.sources.registry import source

logger = logging.getLogger(__name__)

#: predictions.csv columns; voxel counts use the internal labels (ET = 3 in both conventions)
CSV_COLUMNS = ("case", "convention", "file", "seconds", "voxels_background", "voxels_ncr",
               "voxels_edema", "voxels_et")
#: cases read and normalised ahead in parallel (gzip and numpy release the GIL); at most half
#: the cores, so that prediction keeps its own
LOAD_THREADS = 4


def predictors(runs: list[RunInfo], batch_size: int, tta: bool) -> list[Any]:
    """One :class:`braintseg.inference.ensemble.SlicePredictor` per run (its model loaded)."""
    from braintseg.inference.ensemble import SlicePredictor

    return [SlicePredictor(load_model(run), run.view, batch_size, tta) for run in runs]


def write_case(case: CaseInput, labels: NDArray[np.uint8], probs: NDArray[np.float32] | None,
               target: Path, output: str) -> tuple[float, list[Path]]:
    """Un-crop ``labels (X', Y', Z')`` (and ``probs (X', Y', Z', K)``) into the source grid and
    let the case's source write them to ``target``; ``(seconds, label files written)``."""
    from braintseg.inference.ensemble import uncrop_probabilities

    start = time.perf_counter()
    full = uncrop(labels, case.box, case.shape, fill=0)
    full_probs = (None if probs is None
                  else uncrop_probabilities(probs, case.box, case.shape, output))
    files = source(case.format).write_prediction(target, full, full_probs, case)
    return time.perf_counter() - start, files


def case_row(case: CaseInput, target: Path, seconds: float,
             labels: NDArray[np.uint8]) -> dict[str, Any]:
    """One ``predictions.csv`` row: voxel counts of the internal labels on the source grid."""
    counts = np.bincount(labels.ravel(), minlength=4)
    counts[0] += int(np.prod(case.shape)) - labels.size  # voxels outside the crop box
    return {"case": case.case_id, "convention": case.convention, "file": target.name,
            "seconds": round(seconds, 4), "voxels_background": int(counts[0]),
            "voxels_ncr": int(counts[1]), "voxels_edema": int(counts[2]),
            "voxels_et": int(counts[3])}


class Volumes:
    """The volume layout's part of :func:`braintseg.inference.predict.run_predict`."""

    unit = "case"

    def __init__(self, runs: list[RunInfo], pcfg: PredictConfig, tta: bool,
                 probabilities: bool) -> None:
        self.runs, self.pcfg, self.tta, self.probabilities = runs, pcfg, tta, probabilities
        self.targets: list[Path] = []
        self.predictors: list[Any] = []

    def plan(self, input_path: Path, cases: list[str] | None, fold: int | None,
             fmt: str | None) -> tuple[list[CasePlan], Callable[[], None]]:
        """Cases found and checked (headers only) and the input's ``close``."""
        first = self.runs[0]
        plans = plan_cases(input_path, first.crop_box, first.n_channels, first.cfg.data,
                           cases, fold)
        return plans, plans[0].close  # all plans share one input

    def check(self, plans: list[CasePlan], out_dir: Path) -> None:
        """Every output name is a plain file in ``out_dir`` (``predict.output_pattern``)."""
        self.targets = [check_case_id(p.case_id, self.pcfg.output_pattern, out_dir)
                        for p in plans]

    def load_models(self) -> None:
        self.predictors = predictors(self.runs, self.pcfg.batch_size, self.tta)

    def record(self, input_path: Path, n_cases: int) -> dict[str, Any]:
        """``predict_config.yaml``."""
        import keras

        runs, pcfg = self.runs, self.pcfg
        return {
            "braintseg_version": __version__, "keras_backend": keras.backend.backend(),
            "input": str(Path(input_path).resolve()), "n_cases": n_cases,
            "runs": [r.describe() for r in runs], "tta": self.tta,
            "probabilities": self.probabilities, "predict": to_dict(pcfg),
            "postprocessing": describe(pcfg.min_component_size, pcfg.et_to_ncr_threshold),
            "data": to_dict(runs[0].cfg.data) | {"crop": list(runs[0].crop_box)},
        }

    def predict(self, plans: list[CasePlan], out_dir: Path
                ) -> tuple[list[dict[str, Any]], list[Path]]:
        """Loop over cases: load ahead in threads, predict here, write in another thread."""
        from braintseg.inference.ensemble import ensemble_volume, probabilities_to_labels

        pcfg, output = self.pcfg, self.runs[0].output
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
                probs = ensemble_volume(self.predictors, case.images)
                labels = postprocess(probabilities_to_labels(probs, output),
                                     pcfg.min_component_size, pcfg.et_to_ncr_threshold)
                seconds = case.seconds + time.perf_counter() - start
                if pending is not None:
                    _finish(pending, rows, written)
                job = writer.submit(write_case, case, labels,
                                    probs if self.probabilities else None, self.targets[i],
                                    output)
                pending = (job, case, seconds, (self.targets[i], labels))
            if pending is not None:
                _finish(pending, rows, written)
        return rows, written

    def csv(self, rows: list[dict[str, Any]]) -> str:
        return csv_text(rows, CSV_COLUMNS)

    def summary(self, rows: list[dict[str, Any]], n_items: int, out_dir: Path) -> str:
        total = sum(r["seconds"] for r in rows)
        return (f"predicted {len(rows)} case(s) with {len(self.runs)} run(s)"
                f"{' + TTA' if self.tta else ''}: {total / max(len(rows), 1):.2f} s/case; "
                f"wrote {out_dir}")


def _finish(pending: tuple[Any, CaseInput, float, Any], rows: list[dict[str, Any]],
            written: list[Path]) -> None:
    job, case, seconds, (target, labels) = pending
    write_seconds, files = job.result()
    rows.append(case_row(case, target, seconds + write_seconds, labels))
    written.append(files[0])
    logger.debug("%s: %.2f s (%s)", case.case_id, seconds + write_seconds, target)
