"""Which input format a folder holds: a small registry, detection by layout, ``--format`` to force.

Formats: ``brats`` (NIfTI case folders, :mod:`braintseg.sources.brats`), ``lgg`` (LGG kaggle_3m
TIFF/PNG patient folders, :mod:`braintseg.sources.lgg`) and ``figshare`` (MATLAB v7.3 ``.mat``
slices, :mod:`braintseg.sources.figshare`).  A new slice source adds one reader module with
``NAME``, ``CONVENTION``, ``detect(root)``, ``find_cases(root, require_labels)`` and
``load_case(files)``, and one line in :data:`SLICE_READERS`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from braintseg.errors import ConfigError, DataError

#: slice formats → reader module
SLICE_READERS: dict[str, str] = {
    "lgg": "braintseg.sources.lgg",
    "figshare": "braintseg.sources.figshare",
}
FORMATS: tuple[str, ...] = ("brats", *SLICE_READERS)
DESCRIPTIONS: dict[str, str] = {
    "brats": "BraTS case folders (<case>_flair.nii.gz, … or <case>-t2f.nii.gz, …)",
    "lgg": "LGG patient folders (<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif)",
    "figshare": "figshare MATLAB v7.3 slices (<n>.mat with the struct cjdata)",
}


def reader(name: str) -> ModuleType:
    """The reader module of slice format ``name``; ConfigError for an unknown one."""
    if name not in SLICE_READERS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} for slice data; "
                          f"received {name!r}")
    return importlib.import_module(SLICE_READERS[name])


def _detect_brats(root: Path) -> Path | None:
    for pattern in ("*.nii.gz", "*.nii", "*/*.nii.gz", "*/*.nii", "*/*/*.nii.gz", "*/*/*.nii"):
        hit = next(iter(root.glob(pattern)), None)
        if hit is not None:
            return hit
    return None


def detect_format(root: Path, forced: str | None = None) -> str:
    """The format of the input folder ``root``.

    Args:
        root: the input folder.
        forced: a name from :data:`FORMATS` (``--format``): returned as is (other files are
            then ignored); None: detect by layout.

    Raises:
        DataError: ``root`` missing, no format matches (lists what each expects), or several
            do (names one file of each: mixed formats under one root).
        ConfigError: unknown ``forced`` name.
    """
    root = Path(root)
    if forced is not None:
        if forced not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; "
                              f"received {forced!r}")
        return forced
    if not root.exists():
        raise DataError(f"input {root} does not exist")
    if not root.is_dir():
        raise DataError(f"input {root} is not a folder")
    found: dict[str, Path] = {}
    hit = _detect_brats(root)
    if hit is not None:
        found["brats"] = hit
    for name in SLICE_READERS:
        hit = reader(name).detect(root)
        if hit is not None:
            found[name] = hit
    if not found:
        raise DataError(f"no BraTS cases found under {root} (nor any other input format it "
                        "matches); expected one of: "
                        + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()))
    if len(found) > 1:
        raise DataError(f"{root} mixes input formats ("
                        + ", ".join(f"{k}: {p}" for k, p in found.items())
                        + "); keep one format per folder or choose one with --format")
    return next(iter(found))
