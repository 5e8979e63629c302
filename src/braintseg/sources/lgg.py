"""Reader of LGG "kaggle_3m"-style slice folders (Buda et al. 2019, TCGA-LGG FLAIR abnormality).

Layout: ``<root>/<patient>/<patient>_<n>.tif`` with ``<patient>_<n>_mask.tif`` beside it (also
``.tiff`` and ``.png``); slice numbers are not zero-padded and sort numerically (1, 2, …, 10).
Images ``(H, W, 3)`` uint8, channels pre-contrast, FLAIR, post-contrast (where a sequence is
missing the data set repeats FLAIR), or ``(H, W)`` single-channel; masks ``(H, W)`` 0/255
(or 0/1).  ``<root>/data.csv`` (optional, the data set's patient table) gives
``neoplasm_histologic_grade`` per patient id (``TCGA_CS_4941`` for the folder
``TCGA_CS_4941_19960909``), used to stratify folds.  TIFFs are decoded with tifffile, PNGs with
Pillow.  Label convention ``binary``: 0 background, 1 FLAIR abnormality.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.data.ids import check_id
from braintseg.errors import DataError
from braintseg.sources.base import (
    SliceCase,
    SliceFiles,
    check_mask,
    numeric_order,
    write_slice_prediction,
)

NAME = "lgg"
CONVENTION = "binary"
LAYOUT = "slices"
DESCRIPTION = "LGG patient folders (<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif)"
CHANNELS: tuple[str, ...] = ("pre_contrast", "flair", "post_contrast")
SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png")
_SLICE = re.compile(r"^(?P<stem>.+_\d+)(?P<mask>_mask)?$")
GRADE_COLUMN = "neoplasm_histologic_grade"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in SUFFIXES and p.is_file() and not p.name.startswith("."))


def _patient_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect(root: Path) -> Path | None:
    """An example slice file when ``root`` looks like LGG patient folders, else None."""
    for folder in _patient_folders(root):
        for p in _image_files(folder):
            if _SLICE.match(p.stem):
                return p
    return None


def read_grades(root: Path) -> dict[str, str]:
    """``{patient id: grade}`` from ``root/data.csv`` ({} when absent or without the column)."""
    path = root / "data.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the patient table ({exc})") from None
    columns = list(rows[0]) if rows else []
    if rows and "Patient" not in columns:
        raise DataError(f"{path}: no 'Patient' column (columns: {', '.join(columns)[:120]}); "
                        f"expected the data set's patient table (Patient, {GRADE_COLUMN})")
    return {r["Patient"].strip(): (r.get(GRADE_COLUMN) or "").strip()
            for r in rows if r.get("Patient") and (r.get(GRADE_COLUMN) or "").strip()}


def _grade(case_id: str, grades: dict[str, str]) -> str | None:
    for pid, grade in grades.items():
        if case_id == pid or case_id.startswith(pid + "_"):
            return grade
    return None


def _check_numbers(files: dict[str, Path]) -> None:
    """DataError when two files hold the same slice number (``_5.tif`` and ``_05.tif``)."""
    seen: dict[int, Path] = {}
    for stem, p in files.items():
        n = int(stem.rsplit("_", 1)[1])
        if n in seen:
            raise DataError(f"{p}: slice {n} is also {seen[n].name}; expected one file per "
                            "slice number")
        seen[n] = p


def scan_folder(folder: Path, require_labels: bool, grades: dict[str, str]) -> SliceFiles:
    """One patient folder → :class:`SliceFiles`; DataError naming the file or folder.

    Every image needs its ``_mask`` (unless ``require_labels`` is False and no slice has one)
    and every mask its image.
    """
    check_id(folder.name, f"patient folder {folder}", "patient id")
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in _image_files(folder):
        m = _SLICE.match(p.stem)
        if m is None:
            raise DataError(f"{p}: not a slice name; expected <patient>_<n>{p.suffix} or "
                            f"<patient>_<n>_mask{p.suffix}")
        (masks if m["mask"] else images)[m["stem"]] = p
    _check_numbers(images)
    _check_numbers(masks)
    if not images and not masks:
        raise DataError(f"patient folder {folder} holds no slices "
                        f"(<patient>_<n>.tif with <patient>_<n>_mask.tif)")
    for stem, p in masks.items():
        if stem not in images:
            raise DataError(f"{p}: mask without its image {stem}{p.suffix}")
    if masks or require_labels:
        for stem, p in images.items():
            if stem not in masks:
                raise DataError(f"{p}: image without its mask {stem}_mask{p.suffix}")
    stems = list(images)
    order = [stems[i] for i in numeric_order(stems)]
    return SliceFiles(
        case_id=folder.name, format=NAME, convention=CONVENTION, slice_ids=tuple(order),
        images=tuple(images[s] for s in order),
        masks=tuple(masks[s] for s in order) if masks else None,
        grade=_grade(folder.name, grades))


def scan_cases(root: Path, require_labels: bool = True
               ) -> tuple[list[SliceFiles], list[tuple[str, str]]]:
    """Every patient folder below ``root`` (sorted by id) and ``[(patient, problem), ...]`` for
    the folders that cannot be used (``prepare --skip-invalid`` skips them)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input {root} is not a folder")
    grades = read_grades(root)
    cases, problems = [], []
    for folder in _patient_folders(root):
        try:
            cases.append(scan_folder(folder, require_labels, grades))
        except DataError as exc:
            problems.append((folder.name, str(exc)))
    return cases, problems


def find_cases(root: Path, require_labels: bool = True) -> list[SliceFiles]:
    """Every patient folder below ``root`` (sorted by id); DataError on the first bad one."""
    cases, problems = scan_cases(root, require_labels)
    if problems:
        raise DataError(problems[0][1])
    return cases


def read_image(path: Path) -> NDArray[Any]:
    """Decode one TIFF (tifffile) or PNG (Pillow); DataError naming the file when it is not one."""
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im)
        import tifffile

        logging.getLogger("tifffile").setLevel(logging.ERROR)  # its lines about broken tags
        image = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "not an image"
        kind = "PNG" if path.suffix.lower() == ".png" else "TIFF"
        raise DataError(f"{path}: truncated or not a readable {kind} image "
                        f"({type(exc).__name__}: {str(exc)[:80]})") from None
    if image.size == 0:
        raise DataError(f"{path}: truncated or unreadable image (no pixel data); expected a "
                        "whole TIFF/PNG file")
    return np.asarray(image)


def _check_image(img: NDArray[Any], path: Path) -> NDArray[Any]:
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise DataError(f"{path}: image shape {img.shape}; expected (H, W, 3) or (H, W)")
    if not np.issubdtype(img.dtype, np.integer) and not np.issubdtype(img.dtype, np.floating):
        raise DataError(f"{path}: image dtype {img.dtype}; expected integers or floats")
    return img


def load_case(files: SliceFiles) -> SliceCase:
    """Decode every slice of one patient (checks: decodable, shapes, mask size and values)."""
    images, masks = [], []
    channels, dtype = None, None
    for k, path in enumerate(files.images):
        img = _check_image(read_image(path), path)
        if channels is None:
            channels, dtype = img.shape[-1], img.dtype
        elif img.shape[-1] != channels:
            raise DataError(f"{path}: {img.shape[-1]} channels; the patient's first slice has "
                            f"{channels}")
        elif img.dtype != dtype:
            raise DataError(f"{path}: {img.dtype} pixels; the patient's first slice "
                            f"{files.images[0].name} has {dtype} (one bit depth per patient)")
        images.append(img)
        if files.masks is not None:
            masks.append(check_mask(read_image(files.masks[k]), img.shape, files.masks[k]))
    names = CHANNELS if channels == 3 else ("flair",)
    return SliceCase(files, images, masks if files.masks is not None else None,
                     np.zeros(len(images), np.uint8), names)


def write_prediction(target: Path, labels: Any, probabilities: Any | None,
                     geometry: Any) -> list[Path]:
    """A LGG patient's prediction as the data set's own mask files (see
    :meth:`braintseg.sources.base.Source.write_prediction`): ``target/<slice id>_mask.tif``
    per slice (uint8 0/255, ``geometry`` = the slice ids) and with probabilities
    ``<slice id>_prob.tif`` (float32); returns the mask files."""
    return write_slice_prediction(target, labels, probabilities, geometry)
