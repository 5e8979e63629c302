"""Predict's strategy for runs trained on a 2D slice store (LGG, figshare): patients → masks.

Input: a folder in a slice format (patients are found and normalised exactly as ``prepare``
does, with the run's ``data`` section), or a slice store (``--fold`` / ``--cases`` select
patients).  Output, per patient, in ``OUT/<patient>/``:

* ``<slice id>_mask.tif``: uint8 0/255, the slice's own size (``<patient>_<n>_mask.tif`` for
  LGG, ``<n>_mask.tif`` for figshare);
* with ``--probabilities``: ``<slice id>_prob.tif`` float32 tumour probability ``(h, w)``;

written by the patient's source (:meth:`braintseg.sources.base.Source.write_prediction`: the
store's per-patient ``format``, or the folder's detected format) from the probabilities brought
back to each slice's own size (:func:`braintseg.sources.base.from_store_size`),

and ``OUT/predictions.csv`` (one row per slice: ``case, slice, file, tumour_probability`` = the
largest tumour probability of the slice (the slice-level score), ``predicted_area`` = tumour
pixels of the mask, ``height, width``) and ``OUT/predict_config.yaml``.  Nothing is written
beside the input.  Probabilities are averaged over the runs (and flips with TTA); the mask is
the argmax (tumour probability > 0.5), without its 8-connected components of fewer than
``predict.min_component_size`` pixels (0: off; the removed pixels count as probability 0 in
the slice score and the ``_prob.tif`` files).  Runs with a classification head
(``model.classification_head``) add the head's scores, averaged over the runs (no TTA):
``head_probability`` (``tumour``: the head's tumour-present probability, corrected for the
prior of the oversampled training batches, :func:`prior_corrected`) or
``head_meningioma, head_glioma, head_pituitary, head_class`` (``tumour_type``: the softmax and
its argmax class 1–3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from braintseg import __version__
from braintseg.config import PredictConfig, to_dict
from braintseg.data.ids import child
from braintseg.errors import ConfigError, DataError
from braintseg.inference.postprocess import keep_large_components
from braintseg.inference.runs import RunInfo, load_model
from braintseg.inference.writing import csv_text
from braintseg.log import progress
from braintseg.sources.base import Source, from_store_size
from braintseg.sources.registry import detect_format, source

CSV_COLUMNS = ("case", "slice", "file", "tumour_probability", "predicted_area", "height",
               "width")
#: extra columns of each classification head
HEAD_COLUMNS: dict[str, tuple[str, ...]] = {
    "none": (), "tumour": ("head_probability",),
    "tumour_type": ("head_meningioma", "head_glioma", "head_pituitary", "head_class")}


class Patient(NamedTuple):
    """One patient ready for the network.

    Attributes:
        case_id: patient id.  slice_ids: source name of every slice, in order.
        images: normalised ``(S, H, W, C)`` float16 slices at the store's slice size.
        sizes: ``(S, 2)`` int32 each slice's own ``(h, w)``.
        format: the source that writes the prediction back (``lgg``, ``figshare``, …).
    """

    case_id: str
    slice_ids: list[str]
    images: NDArray[np.float16]
    sizes: NDArray[np.int32]
    format: str


@dataclass(frozen=True)
class PatientPlan:
    """A patient found (nothing read yet); ``load()`` reads and normalises it."""

    case_id: str
    load: Callable[[], Patient]


def _select(ids: list[str], cases: list[str] | None, where: str) -> list[str]:
    if cases is None:
        return ids
    unknown = sorted(set(cases) - set(ids))
    if unknown:
        raise DataError(f"cases {unknown} are not in {where}")
    return [c for c in ids if c in set(cases)]


def store_patients(path: Path, cases: list[str] | None, fold: int | None
                   ) -> tuple[list[PatientPlan], Callable[[], None]]:
    """Patients of a slice store (normalised already) and the store's ``close``."""
    from braintseg.store.read import open_store

    store = open_store(path)
    if store.layout != "slices":
        raise DataError(f"{path} is a BraTS volume store; these runs were trained on 2D slices")
    ids = store.fold_cases(fold)[1] if fold is not None else store.case_ids
    ids = _select(list(ids), cases, str(path))

    def load(cid: str) -> Patient:
        i = store.index_of(cid)
        images, _ = store.read_view(i, "slice")
        meta = store.case_meta(i)
        fmt = meta.get("format") or store.header.get("format") or "lgg"
        return Patient(cid, list(meta["slice_ids"]), np.asarray(images, np.float16),
                       store.slice_sizes(i), str(fmt))
    return [PatientPlan(c, partial(load, c)) for c in ids], store.close


def folder_patients(root: Path, run: RunInfo, cases: list[str] | None, fmt: str | None
                    ) -> list[PatientPlan]:
    """Patients of a slice-format folder, normalised as ``prepare`` does."""
    from braintseg.preparation.slices import normalise_case

    name = detect_format(root, fmt)
    if name == "brats":
        raise DataError(f"{root} holds BraTS volumes; these runs were trained on 2D slices")
    rd = source(name)
    found = {c.case_id: c for c in rd.find_cases(root, require_labels=False)}
    ids = _select(sorted(found), cases, str(root))
    size = (run.input_shape[0], run.input_shape[1])

    def load(cid: str) -> Patient:
        case = rd.load_case(found[cid])
        images, _, shapes, _ = normalise_case(case, size, run.cfg.data, "float16")
        if images.shape[-1] != run.n_channels:
            raise DataError(f"case {cid}: {images.shape[-1]} channels; the run expects "
                            f"{run.n_channels}")
        return Patient(cid, list(found[cid].slice_ids), images, np.asarray(shapes, np.int32),
                       name)
    return [PatientPlan(c, partial(load, c)) for c in ids]


def prior_corrected(p: NDArray[np.float32], run: RunInfo) -> NDArray[np.float32]:
    """The ``tumour`` head's probability under the data's tumour share instead of the batches'.

    With ``train.tumour_oversampling = f`` the training batches hold tumour slices at
    ``q = f + (1 − f) π``, π the training slices' share (``run.tumour_fraction``), so the head
    learns the prior q.  Bayes' rule with the prior moved back to π:
    ``p' = p·a / (p·a + (1 − p)·b)``, ``a = π / q``, ``b = (1 − π) / (1 − q)``.  Unchanged when
    f = 0 or π is unknown (runs before this was recorded); a monotonic map, so the AUC is the same.
    """
    f, pi = run.cfg.train.tumour_oversampling, run.tumour_fraction
    if not f or pi is None or not 0 < pi < 1:
        return p
    q = f + (1 - f) * pi
    a, b = pi / q, (1 - pi) / (1 - q)
    return (p * a / (p * a + (1 - p) * b)).astype(np.float32)


def head_columns(head: str, scores: NDArray[np.float32]) -> dict[str, str]:
    """The ``predictions.csv`` columns of one slice's head output ``scores (K,)``."""
    if head == "tumour":
        return {"head_probability": f"{float(scores[0]):.6f}"}
    cols = {name: f"{float(v):.6f}" for name, v in zip(HEAD_COLUMNS[head][:3], scores,
                                                       strict=True)}
    return {**cols, "head_class": str(int(np.argmax(scores)) + 1)}


def write_patient(writer: Source, out_dir: Path, cid: str, slice_ids: Sequence[str],
                  probs: NDArray[np.float32], sizes: NDArray[np.int32], probabilities: bool,
                  min_component_size: int = 0) -> tuple[list[dict[str, Any]], list[Path]]:
    """One patient's ``probs (S, H, W, 2)`` at the store size → each slice's own size → mask
    (argmax, without its 8-connected components of fewer than ``min_component_size`` pixels)
    written by ``writer`` into ``out_dir/<cid>``; ``(csv rows, mask files)``.  The slice's
    ``tumour_probability`` is its largest tumour probability outside the removed components
    (above 0.5 exactly when the mask is not empty).

    Raises:
        DataError: ``cid`` or a slice id that would leave ``out_dir``.
    """
    folder = child(out_dir, cid)
    labels, tumours = [], []
    for k in range(len(slice_ids)):
        p = from_store_size(probs[k], (int(sizes[k][0]), int(sizes[k][1])))
        mask = np.argmax(p, axis=-1) == 1
        tumour = p[..., 1]
        if min_component_size > 1:  # removed pixels no longer score the slice
            kept = keep_large_components(mask, min_component_size)
            tumour = np.where(mask & ~kept, np.float32(0), tumour)
            mask = kept
        labels.append(mask.astype(np.uint8))
        tumours.append(tumour)
    files = writer.write_prediction(folder, labels, tumours if probabilities else None,
                                    list(slice_ids))
    rows = [{"case": cid, "slice": sid, "file": f"{cid}/{path.name}",
             "tumour_probability": f"{float(tumour.max()):.6f}",
             "predicted_area": int(np.count_nonzero(mask)), "height": mask.shape[0],
             "width": mask.shape[1]}
            for sid, path, mask, tumour in zip(slice_ids, files, labels, tumours, strict=True)]
    return rows, files


def _mean(predictors: list[Any], images: NDArray[np.float16]) -> NDArray[np.float32]:
    """The predictors' outputs for ``images (S, H, W, C)`` averaged: ``(S, ...)`` float32."""
    total = predictors[0].predict_slices(images)
    for extra in predictors[1:]:
        total += extra.predict_slices(images)
    return total / len(predictors) if len(predictors) > 1 else total


class Slices:
    """The slice layout's part of :func:`braintseg.inference.predict.run_predict`."""

    unit = "patient"

    def __init__(self, runs: list[RunInfo], pcfg: PredictConfig, tta: bool,
                 probabilities: bool) -> None:
        self.runs, self.pcfg, self.tta, self.probabilities = runs, pcfg, tta, probabilities
        #: the classification head, the same in every run (check_ensemble)
        self.head = runs[0].cfg.model.classification_head
        self.predictors: list[Any] = []
        self.heads: list[tuple[Any, RunInfo]] = []
        self.start = time.perf_counter()

    def plan(self, input_path: Path, cases: list[str] | None, fold: int | None,
             fmt: str | None) -> tuple[list[PatientPlan], Callable[[], None]]:
        """Patients of a slice store (``--fold``/``--cases``) or a slice-format folder."""
        close: Callable[[], None] = lambda: None  # noqa: E731
        if input_path.is_file():
            plans, close = store_patients(input_path, cases, fold)
        else:
            if fold is not None:
                raise ConfigError("--fold selects a store's validation cases; the input is a "
                                  "folder")
            plans = folder_patients(input_path, self.runs[0], cases, fmt)
        if not plans:
            close()
            raise DataError(f"no patients to predict in {input_path}")
        return plans, close

    def check(self, plans: list[PatientPlan], out_dir: Path) -> None:
        """Nothing to check up front: ids are checked where they become paths."""

    def load_models(self) -> None:
        from braintseg.inference.ensemble import SlicePredictor
        from braintseg.model.head import split_head

        batch = self.pcfg.batch_size
        models = [split_head(load_model(r)) for r in self.runs]
        self.predictors = [SlicePredictor(seg, "axial", batch, self.tta) for seg, _ in models]
        self.heads = [(SlicePredictor(h, "axial", batch), r)
                      for (_, h), r in zip(models, self.runs, strict=True) if h is not None]

    def record(self, input_path: Path, n_cases: int) -> dict[str, Any]:
        """``predict_config.yaml``."""
        return {
            "braintseg_version": __version__, "input": str(input_path.resolve()),
            "runs": [r.describe() for r in self.runs], "tta": self.tta,
            "probabilities": self.probabilities,
            "predict": {"batch_size": self.pcfg.batch_size,
                        "min_component_size": self.pcfg.min_component_size},
            "data": to_dict(self.runs[0].cfg)["data"], "n_cases": n_cases, "layout": "slices"}

    def predict(self, plans: list[PatientPlan], out_dir: Path
                ) -> tuple[list[dict[str, Any]], list[Path]]:
        """Per patient: probabilities averaged over runs, masks written, head columns added."""
        rows: list[dict[str, Any]] = []
        written: list[Path] = []
        self.start = time.perf_counter()
        patients = (plan.load() for plan in plans)
        for patient in progress(patients, len(plans), "predict", "patient"):
            probs = _mean(self.predictors, patient.images)
            new_rows, files = write_patient(source(patient.format), out_dir, patient.case_id,
                                            patient.slice_ids, probs, patient.sizes,
                                            self.probabilities,
                                            self.pcfg.min_component_size)
            if self.heads:
                scores = sum(prior_corrected(hp.predict_slices(patient.images), r)
                             if self.head == "tumour" else hp.predict_slices(patient.images)
                             for hp, r in self.heads) / len(self.heads)
                for row, sc in zip(new_rows, scores, strict=True):
                    row.update(head_columns(self.head, sc))
            rows += new_rows
            written += files
        return rows, written

    def csv(self, rows: list[dict[str, Any]]) -> str:
        return csv_text(rows, [*CSV_COLUMNS, *HEAD_COLUMNS[self.head if self.heads else "none"]])

    def summary(self, rows: list[dict[str, Any]], n_items: int, out_dir: Path) -> str:
        return (f"predicted {len(rows)} slices of {n_items} patients in "
                f"{time.perf_counter() - self.start:.1f} s")
