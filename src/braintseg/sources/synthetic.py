"""Synthetic data sets in every source format, for tests, benchmarks and GPU throughput runs.

BraTS-like NIfTI cases (:func:`write_dataset`):
Each case is a folder of NIfTI files with real BraTS names: a "brain" ellipsoid with tissue-like
intensities per modality, and a tumour made of nested spheres (edema ⊃ NCR/NET + ET core) whose
intensities differ per modality, so a network can learn it.  Volumes are int16 in nibabel's
``(X, Y, Z)`` order; labels use the case's convention (2018–2021: {0,1,2,4}; 2023+: {0,1,2,3}).

2D slice sets (no real data needed):

* :func:`write_lgg`: LGG kaggle_3m layout, ``<root>/<patient>/<patient>_<n>.tif`` (uint8
  ``(H, W, 3)``) + ``<patient>_<n>_mask.tif`` (uint8 0/255) and a ``data.csv`` with grades.
* :func:`write_mat_slice`: one figshare slice exactly as MATLAB ``save -v7.3`` writes it: an
  HDF5 file with a 512-byte user block holding the MAT header text, a group ``cjdata`` with
  ``MATLAB_class = "struct"``, column-major (transposed) arrays with their ``MATLAB_class``
  attributes (``int16`` image, ``logical`` uint8 mask, ``double`` label and border, ``char``
  PID as uint16 codes with ``MATLAB_int_decode = 2``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Convention = Literal["brats2018", "brats2023"]

#: file-name suffix per modality, per naming convention (channel order FLAIR, T1, T1ce, T2)
SUFFIXES: dict[str, dict[str, str]] = {
    "brats2018": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}

# mean intensity of (background-brain, edema, NCR/NET, ET) per modality
_CONTRAST = {
    "flair": (300, 700, 450, 500),
    "t1": (400, 300, 250, 350),
    "t1ce": (400, 350, 250, 900),
    "t2": (350, 800, 600, 500),
}


def make_case_arrays(
    shape: tuple[int, int, int] = (48, 48, 32),
    seed: int = 0,
    tumour: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Build one synthetic case in memory.

    Returns:
        images: modality name → int16 array of ``shape`` (0 outside the brain).
        labels: uint8 array of ``shape`` in the internal convention
            (0 background, 1 NCR/NET, 2 edema, 3 ET).
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    radii = np.array(shape, dtype=np.float32)[:, None, None, None] * 0.4
    brain = (((grid - centre) / radii) ** 2).sum(0) <= 1.0
    labels = np.zeros(shape, np.uint8)
    if tumour:
        r = min(shape) * rng.uniform(0.15, 0.22)
        offset = rng.uniform(-0.12, 0.12, size=3) * np.array(shape)
        c = (np.array(shape) / 2 + offset)[:, None, None, None]
        dist = np.sqrt(((grid - c) ** 2).sum(0))
        labels[(dist <= r) & brain] = 2
        labels[(dist <= 0.65 * r) & brain] = 3
        labels[(dist <= 0.35 * r) & brain] = 1
    images: dict[str, np.ndarray] = {}
    for name, (base, ed, ncr, et) in _CONTRAST.items():
        img = np.full(shape, base, np.float32) * rng.uniform(0.8, 1.2)
        img[labels == 2] = ed
        img[labels == 1] = ncr
        img[labels == 3] = et
        img += rng.normal(0.0, 25.0, size=shape).astype(np.float32)
        img[~brain] = 0
        images[name] = np.clip(img, 0, 32000).astype(np.int16)
    return images, labels


def write_case(
    root: Path,
    case_id: str,
    shape: tuple[int, int, int] = (48, 48, 32),
    seed: int = 0,
    convention: Convention = "brats2018",
    affine: np.ndarray | None = None,
    with_seg: bool = True,
    tumour: bool = True,
    seg_dtype: str = "uint8",
) -> Path:
    """Write one case folder ``root/case_id`` with BraTS file names; return the folder."""
    import nibabel as nib

    images, labels = make_case_arrays(shape, seed, tumour)
    folder = Path(root) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else np.asarray(affine, np.float64)
    names = SUFFIXES[convention]
    for modality, arr in images.items():
        img = nib.Nifti1Image(arr, aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, folder / f"{case_id}{names[modality]}.nii.gz")
    if with_seg:
        raw = labels.copy()
        if convention == "brats2018":
            raw[labels == 3] = 4
        seg = nib.Nifti1Image(raw.astype(seg_dtype), aff)
        seg.set_qform(aff, code=1)
        seg.set_sform(aff, code=1)
        nib.save(seg, folder / f"{case_id}{names['seg']}.nii.gz")
    return folder


def write_dataset(
    root: Path,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (48, 48, 32),
    seed: int = 0,
    nested: bool = True,
) -> list[Path]:
    """Write ``n_cases`` cases: BraTS-2018 names under HGG/ and LGG/ (when ``nested``), the last
    case with BraTS-2023 names and a float32 seg, and case 1 with a non-identity oblique affine.
    """
    root = Path(root)
    folders = []
    oblique = np.array(
        [[-0.9, 0.1, 0.0, 90.0], [0.1, -1.1, 0.05, 120.0], [0.0, 0.0, 1.5, -60.0], [0, 0, 0, 1]]
    )
    for i in range(n_cases):
        last = i == n_cases - 1 and n_cases > 1
        convention: Convention = "brats2023" if last else "brats2018"
        if last:
            case_id, parent = f"BraTS-GLI-{i:05d}-000", root
        else:
            grade = "HGG" if i % 2 == 0 else "LGG"
            case_id = f"Brats18_SYN_{i:03d}_1"
            parent = root / grade if nested else root
        folders.append(
            write_case(
                parent, case_id, shape, seed + i, convention,
                affine=oblique if i == 1 else None,
                seg_dtype="float32" if last else "uint8",
            )
        )
    return folders


def _blob(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float],
          radius: float) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def write_lgg(root: Path, n_patients: int = 4, n_slices: int = 12, size: int = 64,
              seed: int = 0, data_csv: bool = True) -> Path:
    """Write an LGG-style tree; patients ``TCGA_XX_<k>_2000010<k>``; returns ``root``."""
    import tifffile

    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = ["Patient,neoplasm_histologic_grade"]
    for k in range(n_patients):
        pid = f"TCGA_XX_{1000 + k}"
        folder = root / f"{pid}_2000010{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.append(f"{pid},{1 + k % 2}")
        brain = _blob(rng, (size, size), (size / 2, size / 2), size * 0.4)
        for n in range(1, n_slices + 1):
            img = (rng.integers(20, 200, (size, size, 3)) * brain[..., None]).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if n_slices // 3 <= n <= 2 * n_slices // 3:
                c = (size / 2 + rng.integers(-4, 5), size / 2 + rng.integers(-4, 5))
                mask[_blob(rng, (size, size), c, size * 0.12)] = 255
                img[mask > 0, 1] = 250  # bright on FLAIR
            tifffile.imwrite(folder / f"{folder.name}_{n}.tif", img)
            tifffile.imwrite(folder / f"{folder.name}_{n}_mask.tif", mask)
    if data_csv:
        (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def mat_header() -> bytes:
    """The 128-byte MAT 7.3 header MATLAB puts at the start of the 512-byte user block."""
    text = ("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: "
            + time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0)) + " HDF5 schema 1.00 .")
    return text.ljust(116).encode("ascii") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def write_mat_slice(path: Path, image: NDArray[np.int16], mask: NDArray[np.uint8], label: int,
                    pid: str, border: NDArray[np.float64] | None = None) -> Path:
    """One figshare ``cjdata`` slice as MATLAB v7.3 writes it (see the module docstring)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as h:
        g = h.create_group("cjdata")
        g.attrs["MATLAB_class"] = np.bytes_("struct")

        def put(name: str, data: NDArray, cls: str, decode: int | None = None) -> None:
            ds = g.create_dataset(name, data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
            if decode is not None:
                ds.attrs["MATLAB_int_decode"] = np.int32(decode)

        put("image", np.ascontiguousarray(np.asarray(image, np.int16).T), "int16")
        put("tumorMask", np.ascontiguousarray(np.asarray(mask, np.uint8).T), "logical", 1)
        put("label", np.array([[float(label)]]), "double")
        put("PID", np.array([[ord(c)] for c in pid], np.uint16), "char", 2)  # 1xN → (N, 1)
        b = np.asarray(border if border is not None else [1.0, 2.0, 3.0, 4.0], np.float64)
        put("tumorBorder", b.reshape(-1, 1), "double")
    with path.open("r+b") as fh:
        fh.write(mat_header())
    return path


def write_figshare(root: Path, patients: dict[str, list[tuple[int, int, int]]],
                   seed: int = 0) -> Path:
    """``{pid: [(slice number, size, label), …]}`` → ``<root>/<n>.mat`` files."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for pid, slices in patients.items():
        for number, size, label in slices:
            image = rng.integers(1, 900, (size, size)).astype(np.int16)
            image[: size // 8] = 0
            mask = _blob(rng, (size, size), (size * 0.6, size * 0.4), size * 0.1).astype(np.uint8)
            write_mat_slice(root / f"{number}.mat", image, mask, label, pid)
    return root
