"""Synthetic BraTS-like cases for tests, benchmarks and GPU throughput runs.

Each case is a folder of NIfTI files with real BraTS names: a "brain" ellipsoid with tissue-like
intensities per modality, and a tumour made of nested spheres (edema ⊃ NCR/NET + ET core) whose
intensities differ per modality, so a network can learn it.  Volumes are int16 in nibabel's
``(X, Y, Z)`` order; labels use the case's convention (2018–2021: {0,1,2,4}; 2023+: {0,1,2,3}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

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
