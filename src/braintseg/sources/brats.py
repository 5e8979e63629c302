"""Finding, loading, checking and writing BraTS NIfTI cases.

File names are matched by exact suffix (``_t1`` never matches ``_t1ce``), ``.nii.gz`` or ``.nii``:

* ``"brats2018"`` (BraTS 2018–2021): ``<case>_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``;
  raw labels {0, 1, 2, 4}.
* ``"brats2023"`` (BraTS 2023+): ``<case>-t2f``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg``;
  raw labels {0, 1, 2, 3}.

Volumes are ``(X, Y, Z)`` in nibabel's voxel order; images are stacked to ``(X, Y, Z, 4)``
float32 in the order FLAIR, T1, T1ce, T2; labels are uint8 in the internal convention
(0 background, 1 NCR/NET, 2 edema, 3 ET).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from braintseg.atomic import atomic_write
from braintseg.config import MODALITIES
from braintseg.data.ids import check_id
from braintseg.data.preprocess import to_internal, to_source
from braintseg.errors import DataError

try:  # Intel ISA-L: gunzip about twice as fast as zlib (the largest cost of prepare)
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - optional speed-up, same results
    import gzip as _gzip  # type: ignore[no-redef]

logger = logging.getLogger(__name__)
#: nibabel prints its header checks ("sizeof_hdr should be 348") to stderr itself; a file that
#: fails them becomes one DataError here, so only critical messages of its own are let through
logging.getLogger("nibabel.global").setLevel(logging.CRITICAL)

#: the largest input file read (bytes on disk): BraTS files are 1-10 MiB; anything past this is
#: refused before reading (an unbounded read would exhaust memory)
NAME = "brats"
LAYOUT = "volumes"
#: the convention of BraTS 2018–2021 names; BraTS 2023 names carry ``brats2023`` (per case)
CONVENTION = "brats2018"
CHANNELS: tuple[str, ...] = MODALITIES
DESCRIPTION = "BraTS case folders (<case>_flair.nii.gz, … or <case>-t2f.nii.gz, …)"
MAX_INPUT_BYTES = 4 * 2**30

#: ``sizeof_hdr`` of a NIfTI-2 header, little and big endian (NIfTI-1 has 348)
_NIFTI2 = ((540).to_bytes(4, "little"), (540).to_bytes(4, "big"))

#: file-name suffix (without extension) per convention: modality/"seg" → suffix
SUFFIXES: dict[str, dict[str, str]] = {
    "brats2018": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
EXTENSIONS = (".nii.gz", ".nii")
GRADES = ("HGG", "LGG")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``images`` maps each of ``MODALITIES`` to its path."""

    case_id: str
    folder: Path
    convention: str
    grade: str | None
    images: dict[str, Path]
    seg: Path | None


@dataclass
class LoadedCase:
    """One case in memory.

    Attributes:
        images: ``(X, Y, Z, 4)`` float32, channels FLAIR, T1, T1ce, T2 (Fortran order like
            the NIfTI data, so each channel is contiguous; use ``np.ascontiguousarray`` for C).
        labels: ``(X, Y, Z)`` uint8 internal labels {0,1,2,3}, or None without a seg file.
        affine: ``(4, 4)`` float64 voxel-to-world of the FLAIR file.
        header: the FLAIR file's ``Nifti1Header``.
    """

    files: CaseFiles
    images: NDArray[np.float32]
    labels: NDArray[np.uint8] | None
    affine: NDArray[np.float64]
    header: Any


def _match(name: str) -> tuple[str, str, str] | None:
    """``(convention, key, case prefix)`` for a BraTS file name, else None."""
    for ext in EXTENSIONS:
        if not name.endswith(ext):
            continue
        stem = name[: -len(ext)]
        for convention, suffixes in SUFFIXES.items():
            for key, suffix in suffixes.items():
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    return convention, key, stem[: -len(suffix)]
    return None


def _grade(folder: Path, root: Path) -> str | None:
    for part in reversed(folder.relative_to(root).parts[:-1] or folder.parts[-2:-1]):
        if part.upper() in GRADES:
            return part.upper()
    return None


def _case_from_folder(
    folder: Path, names: list[str], root: Path, require_labels: bool
) -> CaseFiles:
    found: dict[tuple[str, str], list[Path]] = {}
    for name in sorted(names):
        hit = _match(name)
        if hit:
            found.setdefault((hit[0], hit[1]), []).append(folder / name)
    conventions = sorted({conv for conv, _ in found})
    name = folder.name if folder.name not in ("", ".", "..") else folder.resolve().name
    case_id = check_id(name, f"case folder {folder}", "case id")
    if len(conventions) > 1:
        raise DataError(f"case {case_id}: mixes BraTS 2018 and 2023 file names in {folder}")
    convention = conventions[0]
    paths: dict[str, Path] = {}
    for key in (*MODALITIES, "seg"):
        hits = found.get((convention, key), [])
        expected = f"{case_id}{SUFFIXES[convention][key]}.nii.gz"
        if len(hits) > 1:
            raise DataError(
                f"case {case_id}: found {len(hits)} files for '{key}' "
                f"({', '.join(p.name for p in hits)}); expected exactly 1"
            )
        if not hits:
            if key == "seg" and not require_labels:
                continue
            what = "modality" if key != "seg" else "label file"
            raise DataError(f"case {case_id}: missing {what} '{key}'; expected {expected} in "
                            f"{folder}" + (" (or use --no-labels)" if key == "seg" else ""))
        paths[key] = hits[0]
    seg = paths.pop("seg", None)
    return CaseFiles(case_id, folder, convention, _grade(folder, root), paths, seg)


def scan_cases(
    root: Path, require_labels: bool = True
) -> tuple[list[CaseFiles], list[tuple[str, str]]]:
    """Find case folders below ``root`` and collect per-case problems instead of raising.

    Returns:
        ``(cases sorted by case id, [(case id, error message), ...])``.

    Raises:
        DataError: ``root`` missing, or no BraTS file anywhere below it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input folder {root} does not exist or is not a folder")
    cases, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        if not any(_match(n) for n in filenames):
            continue
        try:
            cases.append(_case_from_folder(Path(dirpath), filenames, root, require_labels))
        except DataError as exc:
            problems.append((Path(dirpath).name, str(exc)))
    if not cases and not problems:
        raise DataError(
            f"no BraTS cases found under {root}; expected case folders with "
            "<case>_flair.nii.gz, _t1, _t1ce, _t2 (2018-2021) or <case>-t2f.nii.gz, -t1n, -t1c, "
            "-t2w (2023+)"
        )
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"case ids {dupes} occur in more than one folder under {root}")
    return sorted(cases, key=lambda c: c.case_id), problems


def find_cases(root: Path, require_labels: bool = True) -> list[CaseFiles]:
    """Find BraTS case folders anywhere below ``root`` (or ``root`` itself).

    Raises:
        DataError: no cases, or the first invalid case (missing/duplicate modality...).
    """
    cases, problems = scan_cases(root, require_labels)
    if problems:
        raise DataError(problems[0][1])
    return cases


def check_input_file(path: Path) -> None:
    """Refuse, before reading, what is not a regular file of at most :data:`MAX_INPUT_BYTES`.

    A modality symlinked to ``/dev/zero`` or a FIFO would otherwise be read without end.

    Raises:
        DataError: ``<path> is not a regular file (character device)``, ``... is empty``,
            ``... is 5.0 GiB; larger than ...``, or ``... cannot be read (<reason>)``.
    """
    try:
        st = os.stat(path)  # follows symlinks: the file that would be read
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("folder" if stat.S_ISDIR(st.st_mode) else "character device"
                if stat.S_ISCHR(st.st_mode) else "block device" if stat.S_ISBLK(st.st_mode)
                else "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket")
        raise DataError(f"{path} is not a regular file ({kind}); expected a NIfTI file")
    if st.st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); expected a NIfTI file")
    if st.st_size > MAX_INPUT_BYTES:
        raise DataError(f"{path} is {st.st_size:,} bytes; larger than the {MAX_INPUT_BYTES:,}-"
                        "byte bound for one NIfTI file (braintseg.sources.brats.MAX_INPUT_BYTES)")


def load_image(path: Path) -> Any:
    """A nibabel image of ``path``; a ``.gz`` file is decompressed in one call (ISA-L when
    installed) instead of nibabel's streamed zlib reads: the same image, in half the time.

    Raises:
        DataError: not a regular file, empty or too large (:func:`check_input_file`).
    """
    path = Path(path)
    check_input_file(path)
    if not path.name.endswith(".gz"):
        return nib.load(str(path))
    raw = _gzip.decompress(path.read_bytes())
    klass = nib.Nifti2Image if raw[:4] in _NIFTI2 else nib.Nifti1Image
    return klass.from_bytes(raw)


def _read(path: Path, case_id: str) -> tuple[Any, NDArray[Any]]:
    """Load one NIfTI file fully; every read problem becomes a DataError naming the file."""
    try:
        img = load_image(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{path} is {type(img).__name__}; expected NIfTI")
        data = np.asanyarray(img.dataobj)
    except DataError as exc:
        raise DataError(f"case {case_id}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
        raise DataError(
            f"case {case_id}: cannot read {path} as NIfTI ({type(exc).__name__}: {exc})"
        ) from None
    if data.ndim != 3:
        raise DataError(
            f"case {case_id}: {path.name} has {data.ndim}D shape {data.shape}; expected a 3D volume"
        )
    return img, data


def read_header(path: Path, case_id: str) -> tuple[tuple[int, ...], NDArray[np.float64]]:
    """``(shape, affine)`` from a NIfTI header only (cheap)."""
    try:
        check_input_file(path)
        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), np.asarray(img.affine, np.float64)
    except DataError as exc:
        raise DataError(f"case {case_id}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
        raise DataError(f"case {case_id}: cannot read {path} as NIfTI "
                        f"({type(exc).__name__}: {exc})") from None


def load_case(files: CaseFiles) -> LoadedCase:
    """Read, check and stack one case.

    Checks: every file readable NIfTI, 3D, same shape and affine as FLAIR, finite intensities,
    integral labels in the case's convention.

    Raises:
        DataError: naming the case and file, what was expected and what was received.
    """
    cid = files.case_id
    ref_img, ref = _read(files.images["flair"], cid)
    shape, affine = ref.shape, np.asarray(ref_img.affine, np.float64)
    # Fortran order like the NIfTI data on disk: each channel is one contiguous block, no transpose
    images = np.empty((*shape, len(MODALITIES)), np.float32, order="F")
    for c, modality in enumerate(MODALITIES):
        path = files.images[modality]
        img, data = (ref_img, ref) if c == 0 else _read(path, cid)
        _check_geometry(cid, path, data.shape, img.affine, shape, affine, files.images["flair"])
        images[..., c] = data
        if data.dtype.kind == "f" and not np.isfinite(images[..., c]).all():
            raise DataError(f"case {cid}: {path.name} contains NaN or Inf intensities")
    labels = None
    if files.seg is not None:
        img, data = _read(files.seg, cid)
        _check_geometry(cid, files.seg, data.shape, img.affine, shape, affine,
                        files.images["flair"])
        labels = _labels(data, files)
    return LoadedCase(files, images, labels, affine, ref_img.header)


def _check_geometry(
    cid: str, path: Path, shape: tuple[int, ...], aff: Any, ref_shape: tuple[int, ...],
    ref_aff: NDArray[np.float64], ref_path: Path,
) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(f"case {cid}: {path.name} has shape {tuple(shape)}; expected "
                        f"{tuple(ref_shape)} like {ref_path.name}")
    if not np.allclose(np.asarray(aff, np.float64), ref_aff, atol=1e-4):
        raise DataError(f"case {cid}: {path.name} has a different affine from {ref_path.name}")


def _labels(data: NDArray[Any], files: CaseFiles) -> NDArray[np.uint8]:
    name = files.seg.name if files.seg else "seg"
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise DataError(f"case {files.case_id}: {name} contains NaN or Inf")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise DataError(f"case {files.case_id}: {name} has non-integer label values; "
                            "expected integral values")
        data = rounded
    try:
        return to_internal(data, files.convention)
    except DataError as exc:
        raise DataError(f"case {files.case_id}: {name}: {exc}") from None


def image_like(data: NDArray[Any], dtype: Any, reference_header: Any,
               affine: NDArray[Any]) -> nib.Nifti1Image:
    """``data`` as ``dtype`` in an image with the source header (pixdim, units, qform/sform
    and their codes) and affine; no scaling."""
    header = reference_header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype), affine, header=header)
    img.set_qform(affine, code=int(reference_header["qform_code"]))
    img.set_sform(affine, code=int(reference_header["sform_code"]))
    img.header.set_slope_inter(1.0, 0.0)
    return img


def save_labels(
    labels_xyz: NDArray[Any], reference_header: Any, affine: NDArray[Any], path: Path
) -> Path:
    """Write a label volume as NIfTI in the reference geometry, atomically.

    Args:
        labels_xyz: ``(X, Y, Z)`` integer labels (written as uint8, values unchanged).
        reference_header: the source ``Nifti1Header`` (pixdim, units, qform/sform codes kept).
        affine: ``(4, 4)`` voxel-to-world matrix of the source.
        path: target ``.nii.gz`` or ``.nii``; written under a temporary name, then renamed.
    """
    path = Path(path)
    img = image_like(labels_xyz, np.uint8, reference_header, affine)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def header_to_hex(header: Any) -> str:
    """The 348-byte NIfTI-1 header as hex text (for JSON metadata; nothing pickled)."""
    return bytes(header.binaryblock).hex()


def header_from_hex(text: str) -> Any:
    """Inverse of :func:`header_to_hex`: a ``Nifti1Header``."""
    return nib.Nifti1Header(binaryblock=bytes.fromhex(text))


def detect(root: Path) -> Path | None:
    """A BraTS-named NIfTI file (``<case>_flair.nii.gz``, ``<case>-t2f.nii.gz``, …) at most two
    folders below ``root`` (BraTS roots nest ``HGG/<case>/``); other NIfTI names (BRATS 2013
    slices ``<case>_FLAIR_slice<k>.nii.gz``) are left to the other sources."""
    for pattern in ("*.nii.gz", "*.nii", "*/*.nii.gz", "*/*.nii", "*/*/*.nii.gz", "*/*/*.nii"):
        hit = next((p for p in Path(root).glob(pattern) if _match(p.name)), None)
        if hit is not None:
            return hit
    return None


def probability_path(label_path: Path) -> Path:
    """``<name>_prob.nii.gz`` beside ``<name>.nii.gz`` (or ``.nii``)."""
    ext = ".nii.gz" if label_path.name.endswith(".nii.gz") else ".nii"  # config checks it
    return label_path.with_name(f"{label_path.name[: -len(ext)]}_prob{ext}")


def write_prediction(target: Path, labels: NDArray[Any], probabilities: NDArray[Any] | None,
                     geometry: Any) -> list[Path]:
    """A case's prediction as NIfTI in the source geometry (:meth:`Source.write_prediction`):
    ``labels`` ``(X, Y, Z)`` internal {0,1,2,3} → ``target``: uint8 in ``geometry.convention``
    (``brats2018`` {0,1,2,4}, ``brats2023`` {0,1,2,3}) with the source header and affine
    (:func:`save_labels`); ``probabilities`` ``(X, Y, Z, K)`` → :func:`probability_path` as
    float32 (NIfTI-1 has no float16) with the source header, ``dim[4] = K``.  Returns ``[target]``.
    """
    header, affine = geometry.header, geometry.affine
    files = [save_labels(to_source(labels, geometry.convention), header, affine, Path(target))]
    if probabilities is not None:
        img = image_like(probabilities, np.float32, header, affine)
        atomic_write(probability_path(Path(target)), lambda tmp: nib.save(img, str(tmp)))
    return files
