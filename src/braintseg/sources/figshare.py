"""Reader of the figshare brain-tumour slice set (Cheng et al. 2015): one MATLAB v7.3 file a slice.

Each ``<n>.mat`` (``1.mat`` … ``3064.mat``, in ``root`` or one folder below it) is an HDF5 file
with a 512-byte user block holding a struct (HDF5 group) ``cjdata``: ``image`` (512×512 int16;
15 slices are 256×256), ``tumorMask`` (binary), ``label`` (1 meningioma, 2 glioma, 3 pituitary),
``PID`` (patient id as MATLAB characters: uint16 codes) and ``tumorBorder``.  MATLAB writes
arrays column-major, so every 2D array is transposed on read.  Slices are grouped into patients
by PID and sorted by file number.  Label convention ``tumour_type``: mask 0/1 plus the per-slice
class 1–3.  The official 5-fold split ``cvind.mat`` (``cvind`` 1×3064 float64, fold 1–5 of slice
``n``) is read by :func:`read_cvind` and turned into patient-level folds by
:func:`folds_from_cvind` (refused when a patient's slices fall in different folds).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.data.folds import Folds
from braintseg.data.ids import check_id
from braintseg.errors import DataError
from braintseg.sources.base import SliceCase, SliceFiles, check_mask, write_slice_prediction

NAME = "figshare"
CONVENTION = "tumour_type"
LAYOUT = "slices"
DESCRIPTION = "figshare MATLAB v7.3 slices (<n>.mat with the struct cjdata)"
CHANNELS: tuple[str, ...] = ("t1ce",)
STRUCT = "cjdata"
FIELDS: tuple[str, ...] = ("image", "tumorMask", "label", "PID")


def _mat_files(root: Path) -> list[Path]:
    found = [p for p in root.glob("*.mat") if p.stem.isdigit()]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += [p for p in sub.glob("*.mat") if p.stem.isdigit()]
    return sorted(found, key=lambda p: (int(p.stem), str(p)))


def detect(root: Path) -> Path | None:
    """An example ``<n>.mat`` slice file when ``root`` looks like the figshare set, else None."""
    files = _mat_files(root)
    return files[0] if files else None


def _open(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a MATLAB v7.3 (HDF5) file ({str(exc)[:60]}); save it "
                        "with save(..., '-v7.3')") from None


def _char(data: NDArray[Any]) -> str:
    """A MATLAB char array (uint16 codes, any shape) → str."""
    return "".join(chr(int(c)) for c in np.asarray(data).ravel(order="F") if int(c))


def _header(h: Any, path: Path) -> tuple[str, int]:
    if STRUCT not in h or not hasattr(h[STRUCT], "keys"):
        raise DataError(f"{path}: no '{STRUCT}' struct; expected a figshare brain-tumour slice")
    g = h[STRUCT]
    for key in FIELDS:
        if key not in g:
            raise DataError(f"{path}: '{STRUCT}' has no field '{key}'")
    raw = np.asarray(g["label"]).ravel()
    label = float(raw[0]) if raw.size == 1 else float("nan")
    if label not in (1.0, 2.0, 3.0):
        raise DataError(f"{path}: {STRUCT}.label is {raw.tolist()}; expected 1 (meningioma), "
                        "2 (glioma) or 3 (pituitary)")
    pid = _char(g["PID"][()])
    if not pid:
        raise DataError(f"{path}: {STRUCT}.PID is empty; expected the patient id")
    return check_id(pid, str(path), f"{STRUCT}.PID"), int(label)


def read_slice(path: Path) -> tuple[NDArray[np.int16], NDArray[np.uint8], int, str]:
    """``(image (H, W), mask (H, W) uint8 0/1, label 1-3, PID)`` of one ``.mat`` slice."""
    with _open(path) as h:
        pid, label = _header(h, path)
        g = h[STRUCT]
        image = np.ascontiguousarray(np.asarray(g["image"]).T)  # column-major → (H, W)
        mask = np.ascontiguousarray(np.asarray(g["tumorMask"]).T)
    if image.ndim != 2:
        raise DataError(f"{path}: {STRUCT}.image has shape {image.shape}; expected 2D")
    return image, check_mask(mask, image.shape, path), label, pid


def find_cases(root: Path, require_labels: bool = True) -> list[SliceFiles]:
    """Group the ``<n>.mat`` slices below ``root`` by PID (reads only PID and label)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input {root} is not a folder")
    groups: dict[str, list[tuple[Path, int, list[int]]]] = {}
    for path in _mat_files(root):
        with _open(path) as h:
            pid, label = _header(h, path)
            size = [int(s) for s in h[STRUCT]["image"].shape[::-1]]  # column-major
        groups.setdefault(pid, []).append((path, label, size))
    cases = []
    for pid in sorted(groups):
        members = groups[pid]
        labels = [lab for _, lab, _ in members]
        grade = str(Counter(labels).most_common(1)[0][0])
        paths = tuple(p for p, _, _ in members)
        cases.append(SliceFiles(
            case_id=pid, format=NAME, convention=CONVENTION,
            slice_ids=tuple(p.stem for p in paths), images=paths, masks=paths, grade=grade,
            extra={"labels": labels, "sizes": [s for _, _, s in members]}))
    return cases


def load_case(files: SliceFiles) -> SliceCase:
    """Every slice of one patient: images ``(H, W, 1)`` int16, masks 0/1, classes 1–3."""
    images, masks, classes = [], [], []
    for path in files.images:
        image, mask, label, pid = read_slice(path)
        if pid != files.case_id:
            raise DataError(f"{path}: PID {pid!r} differs from {files.case_id!r} found earlier")
        images.append(image[..., None])
        masks.append(mask)
        classes.append(label)
    return SliceCase(files, images, masks, np.asarray(classes, np.uint8), CHANNELS)


def read_cvind(path: Path) -> NDArray[np.int64]:
    """The official split: ``cvind[n - 1]`` = fold 1–5 of slice ``n.mat``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"folds file {path} does not exist")
    with _open(path) as h:
        if "cvind" not in h:
            raise DataError(f"{path}: no 'cvind' variable; expected the data set's cvind.mat")
        raw = np.asarray(h["cvind"]).ravel()
    if raw.size == 0 or not np.all(np.isfinite(raw)) or (raw != np.round(raw)).any() \
            or raw.min() < 1:
        raise DataError(f"{path}: cvind must hold fold numbers 1, 2, …; found {raw[:5]}…")
    return raw.astype(np.int64)


def folds_from_cvind(cases: list[SliceFiles], cvind: NDArray[np.int64], where: str,
                     seed: int = 0) -> Folds:
    """Patient-level folds from a per-slice split; DataError when a patient spans folds."""
    n_folds = int(cvind.max())
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for case in cases:
        numbers = [int(s) for s in case.slice_ids]
        if max(numbers) > cvind.size:
            raise DataError(f"{where}: holds {cvind.size} slices; slice {max(numbers)}.mat "
                            f"of patient {case.case_id} is beyond it")
        found = sorted({int(cvind[n - 1]) for n in numbers})
        if len(found) > 1:
            raise DataError(f"{where}: patient {case.case_id} has slices in folds {found}; "
                            "a slice-level split puts one patient on both sides (refused)")
        folds[found[0] - 1].append(case.case_id)
    return Folds([sorted(f) for f in folds], [], n_folds, seed, 0.0,
                 {c.case_id: c.grade for c in cases})


def write_prediction(target: Path, labels: Any, probabilities: Any | None,
                     geometry: Any) -> list[Path]:
    """A figshare patient's prediction as the data set's own mask files (see
    :meth:`braintseg.sources.base.Source.write_prediction`): ``target/<slice id>_mask.tif``
    per slice (uint8 0/255, ``geometry`` = the slice ids) and with probabilities
    ``<slice id>_prob.tif`` (float32); returns the mask files."""
    return write_slice_prediction(target, labels, probabilities, geometry)
