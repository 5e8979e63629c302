"""Reader of BRATS 2013 single axial slices (the ``BRATS2DData`` layout of ntustison/BRATS2013).

Layout: ``<root>/<case>/<case>_<KIND>_slice<k>.nii.gz`` (or ``.nii``), one folder per case
(``BRATS_HG0001``; the ``HG``/``LG`` prefix gives the grade ``HGG``/``LGG``, used to stratify
folds).  ``KIND`` is matched exactly: ``FLAIR``, ``T1``, ``T1C``, ``T2`` (images), ``atropos_truth``
(labels) and ``MASK`` (the brain mask, a ``(H, W, 1)`` volume: not read, the images are already 0
outside it).  A folder may hold several slice numbers ``k``; each is one slice of the patient,
in numeric order, with the slice id ``<case>_<k>``.

Images: 2D float32 ``(H, W)`` NIfTI (a trailing axis of 1 is accepted), every modality of a
slice on the FLAIR's grid (shape and affine) → ``(H, W, 4)`` float32, channels FLAIR, T1,
T1ce (``T1C``), T2, as the BraTS volume channels (:data:`braintseg.config.MODALITIES`).
Labels: ``atropos_truth`` holds 0 background, 1–3 the automatic (Atropos) tissue classes and
4–7 the expert tumour labels + 3 (4 necrosis, 5 edema, 6 non-enhancing, 7 enhancing tumour);
the mask is the whole tumour, ``truth ≥ 4`` → uint8 {0, 1} (label convention ``binary``); the
per-slice class is 0.

Common size: the slices have differing sizes (160×216, 176×216, 216×236), which an integer pixel
repeat (:func:`braintseg.sources.base.to_stack`) cannot bring to one store size, so every slice
is **zero-padded, centred, onto the** :data:`CANVAS` (240×240, the BraTS in-plane grid; 240 is
divisible by ``2**model.levels`` up to ``levels = 4``).  The pad is 0 like the background, so
the z-score over nonzero pixels is unchanged.  ``SliceFiles.extra`` (kept in the store's case
metadata) records per slice ``source_sizes [h, w]``, ``pad_offsets [top, left]`` and the FLAIR's
NIfTI-1 header (``nifti_headers``, hex): :func:`from_canvas` crops a canvas-sized prediction back
(the exact inverse of :func:`to_canvas`) and :func:`save_prediction` writes it as NIfTI on the
slice's own grid.  A slice larger than the canvas is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from braintseg.config import MODALITIES
from braintseg.data.ids import check_id
from braintseg.errors import DataError
from braintseg.sources.base import SliceCase, SliceFiles, write_slice_prediction
from braintseg.sources.brats import (
    check_input_file,
    header_from_hex,
    header_to_hex,
    load_image,
    save_labels,
)

NAME = "brats2013"
LAYOUT = "slices"
CONVENTION = "binary"
DESCRIPTION = ("BRATS 2013 slice folders (<case>/<case>_FLAIR_slice<k>.nii.gz, _T1, _T1C, _T2, "
               "_atropos_truth)")
CHANNELS: tuple[str, ...] = MODALITIES
#: file kind of each channel, in channel order
KINDS: tuple[str, ...] = ("FLAIR", "T1", "T1C", "T2")
TRUTH = "atropos_truth"
#: the common slice size (H, W): every slice is zero-padded, centred, onto it
CANVAS: tuple[int, int] = (240, 240)
#: truth values: 0 background, 1–3 tissue classes, 4–7 tumour labels + 3
TUMOUR_MIN, TRUTH_MAX = 4, 7
EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
_NAME = re.compile(r"^(?P<case>.+)_(?P<kind>FLAIR|T1C|T1|T2|MASK|atropos_truth)_slice"
                   r"(?P<k>\d+)\.nii(?:\.gz)?$")
_GRADE = re.compile(r"^BRATS_(?P<g>HG|LG)\d")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and p.name.endswith(EXTENSIONS) and p.is_file())


def _case_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect(root: Path) -> Path | None:
    """An example slice file when ``root`` holds BRATS 2013 case folders, else None."""
    for folder in _case_folders(Path(root)):
        for p in _nifti_files(folder):
            if _NAME.match(p.name):
                return p
    return None


def pad_offset(shape: tuple[int, int], where: Path) -> tuple[int, int]:
    """``(top, left)`` of a ``shape`` slice centred on :data:`CANVAS`; DataError when larger."""
    h, w = shape
    if h > CANVAS[0] or w > CANVAS[1]:
        raise DataError(f"{where}: slice size {h}x{w} is larger than the {CANVAS[0]}x{CANVAS[1]} "
                        f"canvas of {NAME} stores")
    return (CANVAS[0] - h) // 2, (CANVAS[1] - w) // 2


def to_canvas(array: NDArray[Any], offset: tuple[int, int]) -> NDArray[Any]:
    """``(h, w, ...)`` → ``(240, 240, ...)`` of the same dtype, zero outside ``offset``."""
    out = np.zeros((*CANVAS, *array.shape[2:]), array.dtype)
    top, left = offset
    out[top:top + array.shape[0], left:left + array.shape[1]] = array
    return out


def from_canvas(array: NDArray[Any], size: tuple[int, int], offset: tuple[int, int]
                ) -> NDArray[Any]:
    """``(240, 240, ...)`` → ``(h, w, ...)``: the slice's own pixels (inverse of to_canvas)."""
    top, left = offset
    return array[top:top + size[0], left:left + size[1]]


def _read_header(path: Path) -> Any:
    """The NIfTI header of ``path`` (no pixel data); DataError naming the file."""
    check_input_file(path)
    try:
        return nib.load(str(path)).header
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
        raise DataError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:80]})") from None


def read_slice(path: Path) -> tuple[Any, NDArray[Any]]:
    """``(nibabel image, (H, W) data)`` of one slice file; DataError naming the file."""
    try:
        img = load_image(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{path} is {type(img).__name__}; expected NIfTI")
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated gzip, bad header, short data, …
        raise DataError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:80]})") from None
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise DataError(f"{path}: shape {data.shape}; expected a 2D slice (H, W)")
    if data.dtype.kind not in "iuf":
        raise DataError(f"{path}: dtype {data.dtype}; expected integers or floats")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or Inf values")
    return img, data


def _grade(case_id: str) -> str | None:
    m = _GRADE.match(case_id)
    return f"{m['g']}G" if m else None


def scan_folder(folder: Path, require_labels: bool) -> SliceFiles:
    """One case folder → :class:`SliceFiles` (reads the FLAIR headers only); DataError naming
    the file or folder."""
    case_id = check_id(folder.name, f"case folder {folder}", "case id")
    found: dict[tuple[str, int], Path] = {}
    for p in _nifti_files(folder):
        m = _NAME.match(p.name)
        if m is None:
            raise DataError(f"{p}: not a {NAME} slice name; expected {case_id}_<KIND>_slice<k>"
                            f".nii.gz with KIND one of {', '.join(KINDS)}, {TRUTH}, MASK")
        if m["case"] != case_id:
            raise DataError(f"{p}: names case {m['case']!r}; expected {case_id!r} like its folder")
        key = (m["kind"], int(m["k"]))
        if key in found:
            raise DataError(f"{p}: {m['kind']} of slice {key[1]} is also {found[key].name}; "
                            "expected one file each")
        found[key] = p
    numbers = sorted({k for kind, k in found if kind != "MASK"})
    if not numbers:
        raise DataError(f"case folder {folder} holds no {NAME} slices "
                        f"({case_id}_FLAIR_slice<k>.nii.gz, _T1, _T1C, _T2, _{TRUTH})")
    labelled = require_labels or any(kind == TRUTH for kind, _ in found)
    for k in numbers:
        flair = found.get(("FLAIR", k))
        for kind in (*KINDS, *((TRUTH,) if labelled else ())):
            if (kind, k) not in found:
                what = "label file" if kind == TRUTH else "modality"
                hint = " (or use --no-labels)" if kind == TRUTH else ""
                beside = f" beside {flair.name}" if flair is not None else ""
                raise DataError(f"{folder / f'{case_id}_{kind}_slice{k}.nii.gz'}: missing {what} "
                                f"{kind} of slice {k}{beside}{hint}")
    images = tuple(found["FLAIR", k] for k in numbers)
    sizes, offsets, headers = [], [], []
    for path in images:
        header = _read_header(path)
        shape = tuple(int(s) for s in header.get_data_shape())
        if len(shape) == 3 and shape[-1] == 1:
            shape = shape[:2]
        if len(shape) != 2:
            raise DataError(f"{path}: shape {shape}; expected a 2D slice (H, W)")
        sizes.append(list(shape))
        offsets.append(list(pad_offset((shape[0], shape[1]), path)))
        headers.append(header_to_hex(nib.Nifti1Header.from_header(header)))
    return SliceFiles(
        case_id=case_id, format=NAME, convention=CONVENTION,
        slice_ids=tuple(f"{case_id}_{k}" for k in numbers), images=images,
        masks=tuple(found[TRUTH, k] for k in numbers) if labelled else None,
        grade=_grade(case_id),
        extra={"modality_files": {kind: [found[kind, k].name for k in numbers]
                                  for kind in KINDS[1:]},
               "source_sizes": sizes, "pad_offsets": offsets, "nifti_headers": headers})


def scan_cases(root: Path, require_labels: bool = True
               ) -> tuple[list[SliceFiles], list[tuple[str, str]]]:
    """Every case folder below ``root`` (sorted by id) and ``[(case, problem), ...]`` for the
    folders that cannot be used (``prepare --skip-invalid`` skips them)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input {root} is not a folder")
    cases, problems = [], []
    for folder in _case_folders(root):
        try:
            cases.append(scan_folder(folder, require_labels))
        except DataError as exc:
            problems.append((folder.name, str(exc)))
    return cases, problems


def find_cases(root: Path, require_labels: bool = True) -> list[SliceFiles]:
    """Every case folder below ``root`` (sorted by id); DataError on the first bad one."""
    cases, problems = scan_cases(root, require_labels)
    if problems:
        raise DataError(problems[0][1])
    return cases


def _like(path: Path, img: Any, data: NDArray[Any], ref_path: Path, ref_img: Any,
          ref: NDArray[Any]) -> None:
    """DataError when a file of a slice is not on its FLAIR's grid."""
    if data.shape != ref.shape:
        raise DataError(f"{path}: shape {data.shape[0]}x{data.shape[1]} differs from "
                        f"{ref_path.name}'s {ref.shape[0]}x{ref.shape[1]}")
    if not np.allclose(np.asarray(img.affine, np.float64), np.asarray(ref_img.affine,
                                                                      np.float64), atol=1e-4):
        raise DataError(f"{path}: affine differs from {ref_path.name}'s")


def _truth_mask(data: NDArray[Any], path: Path) -> NDArray[np.uint8]:
    """``atropos_truth`` values → the whole-tumour mask uint8 {0, 1} (truth ≥ 4)."""
    values = np.unique(data)
    bad = values[(values != np.rint(values)) | (values < 0) | (values > TRUTH_MAX)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:6].tolist())
        raise DataError(f"{path}: label values {{{shown}}}; expected integers 0-{TRUTH_MAX} "
                        f"(1-3 tissue classes, 4-7 tumour labels + 3)")
    return (data >= TUMOUR_MIN).astype(np.uint8)


def load_case(files: SliceFiles) -> SliceCase:
    """Every slice of one case on the canvas: images ``(240, 240, 4)`` float32, masks uint8
    {0, 1} (truth ≥ 4), classes 0; DataError naming the file (unreadable, not 2D, NaN/Inf,
    off the FLAIR's grid, label values outside 0–7, changed since the scan)."""
    images, masks = [], []
    for k, flair in enumerate(files.images):
        ref_img, ref = read_slice(flair)
        size = tuple(files.extra["source_sizes"][k])
        if ref.shape != size:
            raise DataError(f"{flair}: shape {ref.shape[0]}x{ref.shape[1]}; it was "
                            f"{size[0]}x{size[1]} when the input was scanned")
        offset = tuple(files.extra["pad_offsets"][k])
        channels = [ref]
        for kind in KINDS[1:]:
            path = flair.parent / files.extra["modality_files"][kind][k]
            img, data = read_slice(path)
            _like(path, img, data, flair, ref_img, ref)
            channels.append(data)
        images.append(to_canvas(np.stack(channels, axis=-1).astype(np.float32), offset))
        if files.masks is not None:
            img, data = read_slice(files.masks[k])
            _like(files.masks[k], img, data, flair, ref_img, ref)
            masks.append(to_canvas(_truth_mask(data, files.masks[k]), offset))
    return SliceCase(files, images, masks if files.masks is not None else None,
                     np.zeros(len(images), np.uint8), CHANNELS)


def save_prediction(mask: NDArray[Any], meta: dict[str, Any], k: int, path: Path) -> Path:
    """Write slice ``k``'s canvas-sized ``mask (240, 240)`` as a uint8 NIfTI on the slice's own
    grid (cropped back, the FLAIR's header and affine), atomically.

    ``meta``: the case's ``SliceFiles.extra`` or the store's case metadata (``source_sizes``,
    ``pad_offsets``, ``nifti_headers``).
    """
    if tuple(mask.shape[:2]) != CANVAS:
        raise DataError(f"{path}: prediction is {mask.shape[0]}x{mask.shape[1]}; expected the "
                        f"{CANVAS[0]}x{CANVAS[1]} canvas")
    size, offset = meta["source_sizes"][k], meta["pad_offsets"][k]
    header = header_from_hex(meta["nifti_headers"][k])
    return save_labels(from_canvas(mask, tuple(size), tuple(offset)), header,
                       header.get_best_affine(), path)


def write_prediction(target: Path, labels: Any, probabilities: Any | None,
                     geometry: Any) -> list[Path]:
    """A patient's prediction as mask TIFFs on the 240×240 canvas, as evaluate and report read
    them (see :meth:`braintseg.sources.base.Source.write_prediction`; ``geometry`` = the slice
    ids).  :func:`save_prediction` writes one back as NIfTI on the slice's own grid."""
    return write_slice_prediction(target, labels, probabilities, geometry)
