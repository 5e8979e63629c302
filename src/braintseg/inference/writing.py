"""Predict's outputs, each written atomically (temporary name beside the target, then rename).

* ``<case>.nii.gz``: uint8 labels via :func:`braintseg.sources.brats.save_labels`;
* ``<case>_prob.nii.gz``: ``(X, Y, Z, K)`` float32 probabilities (NIfTI-1 has no float16);
* ``predictions.csv`` and ``predict_config.yaml`` in the output folder.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml
from numpy.typing import NDArray

from braintseg.atomic import atomic_write, atomic_write_text
from braintseg.errors import DataError
from braintseg.sources.brats import image_like

#: predictions.csv columns; voxel counts use the internal labels (ET = 3 in both conventions)
CSV_COLUMNS = ("case", "convention", "file", "seconds", "voxels_background", "voxels_ncr",
               "voxels_edema", "voxels_et")


def prepare_out_dir(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` if needed and check that files can be created in it.

    Returns:
        The folders this call created, outermost first (empty when ``out_dir`` existed), for
        :func:`remove_unused_out_dir`.

    Raises:
        DataError: it is a file, cannot be created, or is not writable (names the folder);
            nothing is left behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} is a file; expected a folder for the predictions")
    created = [p for p in (*reversed(out_dir.parents), out_dir) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        remove_unused_out_dir(out_dir, created)
        raise DataError(f"output folder {out_dir} is not writable ({exc.strerror})") from None
    return created


def remove_unused_out_dir(out_dir: Path, created: list[Path], own: tuple[str, ...] = ()) -> None:
    """After a failure: remove the folders in ``created`` if nothing but files named ``own``
    (written by this predict, e.g. its config) is in ``out_dir``; those files go with them."""
    out_dir = Path(out_dir)
    if not created or not out_dir.is_dir():
        return
    entries = list(out_dir.iterdir())
    if any(p.name not in own for p in entries):
        return
    for path in entries:
        path.unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def save_probabilities(probs: NDArray[np.floating], reference_header: Any,
                       affine: NDArray[np.float64], path: Path) -> Path:
    """Write ``(X, Y, Z, K)`` probabilities as float32 NIfTI in the source geometry.

    The source header is copied (pixdim, units, qform/sform and their codes); ``dim[4] = K``.
    """
    img = image_like(probs, np.float32, reference_header, affine)
    return atomic_write(Path(path), lambda tmp: nib.save(img, str(tmp)))


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_text(Path(path), text)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``predictions.csv`` with :data:`CSV_COLUMNS`, one row per case."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """A YAML mapping (``yaml.safe_dump``), atomically."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False))
