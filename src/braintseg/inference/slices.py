"""``braintseg predict`` for runs trained on a 2D slice store (LGG, figshare).

Input: a folder in a slice format (patients are found and normalised exactly as ``prepare``
does, with the run's ``data`` section), or a slice store (``--fold`` / ``--cases`` select
patients).  Output, per patient, in ``OUT/<patient>/``:

* ``<slice id>_mask.tif``: uint8 0/255, the slice's own size (``<patient>_<n>_mask.tif`` for
  LGG, ``<n>_mask.tif`` for figshare);
* with ``--probabilities``: ``<slice id>_prob.tif`` float32 tumour probability ``(h, w)``;

and ``OUT/predictions.csv`` (one row per slice: ``case, slice, file, tumour_probability`` = the
largest tumour probability of the slice (the slice-level score), ``predicted_area`` = tumour
pixels of the mask, ``height, width``) and ``OUT/predict_config.yaml``.  Nothing is written
beside the input.  Probabilities are averaged over the runs (and flips with TTA); the mask is
the argmax (tumour probability > 0.5).  Runs with a classification head
(``model.classification_head``) add the head's scores, averaged over the runs (no TTA):
``head_probability`` (``tumour``: the head's tumour-present probability, corrected for the
prior of the oversampled training batches, :func:`prior_corrected`) or
``head_meningioma, head_glioma, head_pituitary, head_class`` (``tumour_type``: the softmax and
its argmax class 1–3).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg import __version__
from braintseg.atomic import atomic_write
from braintseg.config import to_dict
from braintseg.data.ids import child
from braintseg.errors import ConfigError, DataError
from braintseg.inference.runs import RunInfo, check_ensemble, load_model, read_run
from braintseg.inference.writing import prepare_out_dir, write_text, write_yaml
from braintseg.log import progress

logger = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
CONFIG_NAME = "predict_config.yaml"
CSV_COLUMNS = ("case", "slice", "file", "tumour_probability", "predicted_area", "height",
               "width")
#: extra columns of each classification head
HEAD_COLUMNS: dict[str, tuple[str, ...]] = {
    "none": (), "tumour": ("head_probability",),
    "tumour_type": ("head_meningioma", "head_glioma", "head_pituitary", "head_class")}
#: (case id, slice ids, normalised float16 slices (S, H, W, C), source sizes (S, 2))
Patient = tuple[str, list[str], NDArray[np.float16], NDArray[np.int32]]


def write_tif(path: Path, data: NDArray[Any]) -> Path:
    """One 2D TIFF (tifffile), atomically."""
    import tifffile

    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data))


def _select(ids: list[str], cases: list[str] | None, where: str) -> list[str]:
    if cases is None:
        return ids
    unknown = sorted(set(cases) - set(ids))
    if unknown:
        raise DataError(f"cases {unknown} are not in {where}")
    return [c for c in ids if c in set(cases)]


def store_patients(path: Path, cases: list[str] | None, fold: int | None
                   ) -> tuple[list[str], Iterator[Patient]]:
    """Patients of a slice store (normalised already)."""
    from braintseg.store.read import open_store

    store = open_store(path)
    if store.layout != "slices":
        raise DataError(f"{path} is a BraTS volume store; these runs were trained on 2D slices")
    ids = store.fold_cases(fold)[1] if fold is not None else store.case_ids
    ids = _select(list(ids), cases, str(path))

    def gen() -> Iterator[Patient]:
        with store:
            for cid in ids:
                i = store.index_of(cid)
                images, _ = store.read_view(i, "slice")
                yield (cid, list(store.case_meta(i)["slice_ids"]),
                       np.asarray(images, np.float16), store.slice_sizes(i))
    return ids, gen()


def folder_patients(root: Path, run: RunInfo, cases: list[str] | None, fmt: str | None
                    ) -> tuple[list[str], Iterator[Patient]]:
    """Patients of a slice-format folder, normalised as ``prepare`` does."""
    from braintseg.preparation.slices import normalise_case
    from braintseg.sources.registry import detect_format, source

    name = detect_format(root, fmt)
    if name == "brats":
        raise DataError(f"{root} holds BraTS volumes; these runs were trained on 2D slices")
    rd = source(name)
    found = {c.case_id: c for c in rd.find_cases(root, require_labels=False)}
    ids = _select(sorted(found), cases, str(root))
    size = (run.input_shape[0], run.input_shape[1])

    def gen() -> Iterator[Patient]:
        for cid in ids:
            case = rd.load_case(found[cid])
            images, _, shapes, _ = normalise_case(case, size, run.cfg.data, "float16")
            if images.shape[-1] != run.n_channels:
                raise DataError(f"case {cid}: {images.shape[-1]} channels; the run expects "
                                f"{run.n_channels}")
            yield cid, list(found[cid].slice_ids), images, np.asarray(shapes, np.int32)
    return ids, gen()


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


def _write_patient(out_dir: Path, cid: str, slice_ids: list[str], probs: NDArray[np.float32],
                   sizes: NDArray[np.int32], probabilities: bool
                   ) -> tuple[list[dict], list[Path]]:
    from braintseg.sources.base import from_store_size

    folder = child(out_dir, cid)
    folder.mkdir(parents=True, exist_ok=True)
    rows, files = [], []
    for k, sid in enumerate(slice_ids):
        p = from_store_size(probs[k], (int(sizes[k][0]), int(sizes[k][1])))
        tumour = p[..., 1]
        mask = (np.argmax(p, axis=-1) == 1).astype(np.uint8) * np.uint8(255)
        path = write_tif(child(folder, f"{sid}_mask.tif"), mask)
        files.append(path)
        if probabilities:
            write_tif(child(folder, f"{sid}_prob.tif"), tumour.astype(np.float32))
        rows.append({"case": cid, "slice": sid, "file": f"{cid}/{path.name}",
                     "tumour_probability": f"{float(tumour.max()):.6f}",
                     "predicted_area": int((mask > 0).sum()), "height": mask.shape[0],
                     "width": mask.shape[1]})
    return rows, files


def _csv(rows: Sequence[dict[str, Any]], head: str = "none") -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CSV_COLUMNS, *HEAD_COLUMNS[head]],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _mean(predictors: list[Any], images: NDArray[np.float16]) -> NDArray[np.float32]:
    """The predictors' outputs for ``images (S, H, W, C)`` averaged: ``(S, ...)`` float32."""
    total = predictors[0].predict_slices(images)
    for extra in predictors[1:]:
        total += extra.predict_slices(images)
    return total / len(predictors) if len(predictors) > 1 else total


def run_predict_slices(
    run_dirs: list[Path], input_path: Path, out_dir: Path, *, overrides: Sequence[str] = (),
    probabilities: bool = False, tta: bool = False, cases: list[str] | None = None,
    fold: int | None = None, fmt: str | None = None,
) -> list[Path]:
    """Predict every selected patient with the ensemble of slice runs ``run_dirs``.

    Returns the mask files written.  Raises DataError/ConfigError (bad runs, inputs, case ids,
    output folder) before anything is written.
    """
    from braintseg.inference.ensemble import SlicePredictor
    from braintseg.inference.predict import predict_config

    runs = [read_run(Path(p)) for p in run_dirs]
    check_ensemble(runs)
    if any(r.layout != "slices" for r in runs):
        raise ConfigError("runs trained on BraTS volumes and on 2D slices cannot be mixed")
    pcfg = predict_config(runs[0].cfg, overrides)
    tta = tta or pcfg.tta
    input_path, out_dir = Path(input_path), Path(out_dir)
    if input_path.is_file():
        ids, patients = store_patients(input_path, cases, fold)
    else:
        if fold is not None:
            raise ConfigError("--fold selects a store's validation cases; the input is a folder")
        ids, patients = folder_patients(input_path, runs[0], cases, fmt)
    if not ids:
        raise DataError(f"no patients to predict in {input_path}")
    prepare_out_dir(out_dir)
    write_yaml(out_dir / CONFIG_NAME, {
        "braintseg_version": __version__, "input": str(input_path.resolve()),
        "runs": [r.describe() for r in runs], "tta": tta, "probabilities": probabilities,
        "predict": {"batch_size": pcfg.batch_size}, "data": to_dict(runs[0].cfg)["data"],
        "n_cases": len(ids), "layout": "slices"})
    from braintseg.model.head import split_head

    head = runs[0].cfg.model.classification_head  # the same in every run (check_ensemble)
    models = [split_head(load_model(r)) for r in runs]
    predictors = [SlicePredictor(seg, "axial", pcfg.batch_size, tta) for seg, _ in models]
    heads = [(SlicePredictor(h, "axial", pcfg.batch_size), r)
             for (_, h), r in zip(models, runs, strict=True) if h is not None]
    rows: list[dict[str, Any]] = []
    written: list[Path] = []
    start = time.perf_counter()
    for cid, slice_ids, images, sizes in progress(patients, len(ids), "predict", "patient"):
        probs = _mean(predictors, images)
        new_rows, files = _write_patient(out_dir, cid, slice_ids, probs, sizes, probabilities)
        if heads:
            scores = sum(prior_corrected(hp.predict_slices(images), r) if head == "tumour"
                         else hp.predict_slices(images) for hp, r in heads) / len(heads)
            for row, sc in zip(new_rows, scores, strict=True):
                row.update(head_columns(head, sc))
        rows += new_rows
        written += files
    write_text(out_dir / CSV_NAME, _csv(rows, head if heads else "none"))
    logger.info("predicted %d slices of %d patients in %.1f s", len(rows), len(ids),
                time.perf_counter() - start)
    return written
