"""The source interface (:class:`Source`) and the common form of 2D slice data sets.

Every source module (``brats``, ``lgg``, ``figshare``, …) implements :class:`Source` with
module-level names.  Volume sources (``LAYOUT = "volumes"``) read cases into
:class:`braintseg.sources.brats.LoadedCase` ``(X, Y, Z, C)`` volumes; slice sources
(``LAYOUT = "slices"``) read patients into the common form below.

A reader (:mod:`braintseg.sources.lgg`, :mod:`braintseg.sources.figshare`) finds
*patients* below a root (:class:`SliceFiles`, no pixel data) and loads one patient at a time
into a :class:`SliceCase`:

* ``images``: list of ``(H_s, W_s, C)`` arrays in the source dtype (uint8 LGG, int16 figshare),
  one per slice, in slice order (numeric: 1, 2, …, 10);
* ``masks``: list of ``(H_s, W_s)`` uint8 {0 background, 1 tumour/abnormality}, or None;
* ``classes``: ``(S,)`` uint8 per-slice class (figshare: 1 meningioma, 2 glioma, 3 pituitary;
  0 = no class, e.g. LGG);
* ``slice_ids``: the source name of every slice (``<patient>_<n>`` for LGG, ``<n>`` for
  figshare), used to name predictions ``<slice id>_mask.tif``.

Label conventions: ``binary`` (LGG: 0 background, 1 FLAIR abnormality) and ``tumour_type``
(figshare: mask 0/1 plus the per-slice class 1–3).

Mixed slice sizes (figshare: 512×512 and 256×256): :func:`to_stack` brings every slice to the
store's slice size by an **integer-factor pixel repeat** (nearest neighbour: image and mask are
upsampled exactly, no new intensities); a size that is not an integer divisor of the store size
is refused.  Predictions go back by averaging the probabilities over each repeated block
(:func:`from_store_size`).  The original size of every slice is kept in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from braintseg.atomic import atomic_write
from braintseg.data.ids import child
from braintseg.errors import DataError

CONVENTIONS: tuple[str, ...] = ("binary", "tumour_type")
#: the per-slice class names of ``tumour_type`` (figshare)
TUMOUR_TYPES: dict[int, str] = {1: "meningioma", 2: "glioma", 3: "pituitary"}
#: the view name of slice stores (the only axis); ``axial`` is accepted as its alias
SLICE_VIEW = "slice"
#: store layouts a source can feed: 3D volumes (BraTS) or 2D slices
LAYOUTS: tuple[str, ...] = ("volumes", "slices")


class Source(Protocol):
    """What a source module provides (module-level names; a module is used as the object).

    Attributes:
        NAME: the ``--format`` name, equal to the module's name.
        LAYOUT: ``"volumes"`` or ``"slices"`` (:data:`LAYOUTS`): which store layout, and which
            strategy of each stage (crop/uncrop of volumes vs per-slice resize), it takes.
        CONVENTION: the label convention of its masks (volume sources: per case, see
            ``CaseFiles.convention``; slice sources: one of :data:`CONVENTIONS`).
        DESCRIPTION: what a folder of this source looks like (for detection errors).
        CHANNELS: the image channels, in the order of the arrays' last axis.
    """

    NAME: str
    LAYOUT: str
    CONVENTION: str
    DESCRIPTION: str
    CHANNELS: tuple[str, ...]

    def detect(self, root: Path) -> Path | None:
        """A file under ``root`` that shows the folder holds this source, or None."""

    def find_cases(self, root: Path, require_labels: bool = True) -> list[Any]:
        """The cases/patients under ``root`` (paths only; ``SliceFiles`` for slice sources).

        Raises DataError naming the file or folder at the first bad one."""

    def load_case(self, files: Any) -> Any:
        """One case in memory (``SliceCase`` for slice sources); DataError naming the file."""

    def write_prediction(self, target: Path, labels: Any, probabilities: Any | None,
                         geometry: Any) -> list[Path]:
        """Write one case's prediction back in this source's own format and label convention.

        Args:
            target: volume sources: the label file (``<case>.nii.gz``); slice sources: the
                patient's output folder (created if needed).
            labels: internal labels in the source geometry: volumes ``(X, Y, Z)`` uint8
                {0 background, 1 NCR/NET, 2 edema, 3 ET} on the source grid; slices one
                ``(h_s, w_s)`` uint8 {0 background, 1 tumour} per slice, at its own size.
            probabilities: None, or volumes ``(X, Y, Z, K)`` float32 (the network's classes or
                regions); slices one ``(h_s, w_s)`` float32 tumour probability per slice.
            geometry: volumes: an object with ``header`` (the source ``Nifti1Header``),
                ``affine`` (``(4, 4)`` float64) and ``convention`` (predict passes its
                ``CaseInput``); slices: the slice ids, in slice order.

        Returns:
            The label files written, in order (volumes: ``[target]``; slices: one mask per
            slice); probabilities go beside them (``<name>_prob.nii.gz``,
            ``<slice id>_prob.tif``).  Every file is written atomically.

        Raises:
            DataError: a slice id that would leave ``target``.
        """


@dataclass(frozen=True)
class SliceFiles:
    """One patient found by a reader (paths only).

    Attributes:
        case_id: patient id (LGG: the folder name; figshare: the PID).
        format: reader name (``lgg``, ``figshare``).
        convention: label convention (``binary`` or ``tumour_type``).
        slice_ids: source name of each slice, in slice order.
        images: image file of each slice (figshare: the ``.mat`` file).
        masks: mask file of each slice (figshare: the same ``.mat``), or None when absent.
        grade: stratification key (LGG grade, figshare tumour type) or None.
        extra: reader-specific metadata (JSON-serialisable).
    """

    case_id: str
    format: str
    convention: str
    slice_ids: tuple[str, ...]
    images: tuple[Path, ...]
    masks: tuple[Path, ...] | None
    grade: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SliceCase:
    """One loaded patient (see the module docstring for shapes and conventions)."""

    files: SliceFiles
    images: list[NDArray[Any]]
    masks: list[NDArray[np.uint8]] | None
    classes: NDArray[np.uint8]
    channels: tuple[str, ...]

    @property
    def case_id(self) -> str:
        return self.files.case_id


def check_mask(mask: NDArray[Any], image_shape: tuple[int, ...], path: Path) -> NDArray[np.uint8]:
    """A source mask → uint8 {0, 1}; DataError naming ``path`` when its size or values are wrong.

    Accepted values: {0, 255} or {0, 1} (a subset of either).
    """
    if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4):  # a grey mask saved as RGB(A)
        if mask.shape[-1] > 1 and not (mask[..., :3] == mask[..., :1]).all():
            raise DataError(f"{path}: mask has differing colour channels; expected one channel")
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DataError(f"{path}: mask has shape {mask.shape}; expected a 2D (H, W) image")
    if mask.shape != tuple(image_shape[:2]):
        raise DataError(f"{path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from its "
                        f"image's {image_shape[0]}x{image_shape[1]}")
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:6]) + (", …" if values.size > 6 else "")
        raise DataError(f"{path}: mask values {{{shown}}}; expected 0/255 (or 0/1)")
    return (mask > 0).astype(np.uint8)


def numeric_order(names: list[str]) -> list[int]:
    """Indices sorting slice names by their trailing number (1, 2, …, 10), then by name."""
    def key(i: int) -> tuple[int, str]:
        digits = names[i].rsplit("_", 1)[-1]
        return (int(digits) if digits.isdigit() else -1, names[i])
    return sorted(range(len(names)), key=key)


def upsample_factor(shape: tuple[int, int], size: tuple[int, int], where: str) -> int:
    """The integer pixel-repeat factor from ``shape`` to ``size``; DataError otherwise."""
    fh, fw = size[0] // max(shape[0], 1), size[1] // max(shape[1], 1)
    if fh != fw or fh < 1 or fh * shape[0] != size[0] or fw * shape[1] != size[1]:
        raise DataError(f"{where}: slice size {shape[0]}x{shape[1]} cannot be brought to the "
                        f"store's {size[0]}x{size[1]} by an integer pixel repeat")
    return fh


def to_stack(case: SliceCase, size: tuple[int, int]) -> tuple[NDArray[Any], NDArray[np.uint8]
                                                                | None, list[list[int]]]:
    """``(images (S, H, W, C), masks (S, H, W) uint8 or None, original sizes [[h, w], …])``
    at the store's slice ``size`` (integer pixel repeat, see the module docstring)."""
    imgs, masks, shapes = [], [], []
    for k, img in enumerate(case.images):
        shape = (int(img.shape[0]), int(img.shape[1]))
        f = upsample_factor(shape, size, str(case.files.images[k]))
        shapes.append(list(shape))
        imgs.append(img if f == 1 else img.repeat(f, 0).repeat(f, 1))
        if case.masks is not None:
            m = case.masks[k]
            masks.append(m if f == 1 else m.repeat(f, 0).repeat(f, 1))
    stack = np.stack(imgs) if imgs else np.zeros((0, *size, len(case.channels)))
    return stack, (np.stack(masks) if case.masks is not None else None), shapes


def from_store_size(probs: NDArray[np.floating], shape: tuple[int, int]) -> NDArray[np.float32]:
    """Probabilities ``(H, W, K)`` at the store size → ``(h, w, K)`` at a slice's own size
    (mean over each repeated block; the identity when the sizes agree)."""
    h, w = shape
    f = probs.shape[0] // h
    if f == 1:
        return np.asarray(probs, np.float32)
    return probs.reshape(h, f, w, f, -1).mean(axis=(1, 3), dtype=np.float32)


def write_tif(path: Path, data: NDArray[Any]) -> Path:
    """One 2D TIFF (tifffile), atomically."""
    import tifffile

    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data))


def write_slice_prediction(folder: Path, labels: Sequence[NDArray[Any]],
                           probabilities: Sequence[NDArray[Any]] | None,
                           slice_ids: Sequence[str]) -> list[Path]:
    """:meth:`Source.write_prediction` of the slice sources (LGG, figshare): in ``folder``
    (created), per slice ``<slice id>_mask.tif`` (uint8 0/255, the slice's own size) and, with
    ``probabilities``, ``<slice id>_prob.tif`` (float32 tumour probability ``(h, w)``).

    Returns the mask files; DataError when a slice id would leave ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, sid in enumerate(slice_ids):
        mask = (np.asarray(labels[k]) > 0).astype(np.uint8) * np.uint8(255)
        files.append(write_tif(child(folder, f"{sid}_mask.tif"), mask))
        if probabilities is not None:
            write_tif(child(folder, f"{sid}_prob.tif"),
                      np.asarray(probabilities[k]).astype(np.float32))
    return files
