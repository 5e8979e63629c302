"""Drawing helpers for :mod:`.report`: Agg figures, display orientation, montages.

Volumes are ``(X, Y, Z)`` in voxel order; :func:`to_display` reorients them to L-A-S axes so that
slices drawn with ``origin="lower"`` follow the radiological convention.  Label colours are the
usual BraTS/ITK-SNAP ones for the internal labels: NCR/NET red, edema green, ET yellow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.atomic import atomic_write
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

#: internal label → (name, colour)
LABEL_COLOURS: dict[int, tuple[str, str]] = {
    1: ("necrosis / non-enhancing (NCR/NET)", "#ff2a2a"), 2: ("edema (ED)", "#2bd92b"),
    3: ("enhancing tumour (ET)", "#ffe11a"),
}
#: view name → axis of the (X, Y, Z) volume it slices
VIEWS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}
#: view name → patient directions at the (left, right, bottom, top) edges of its panels, as
#: drawn from L-A-S volumes (:func:`to_display`, :func:`_plane`): radiological convention
EDGES: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "P", "A"), "coronal": ("R", "L", "I", "S"),
    "sagittal": ("A", "P", "I", "S"),
}
REGION_COLOURS = {"wt": "#1f77b4", "tc": "#d62728", "et": "#ff7f0e"}
OVERLAY_ALPHA = 0.5


# --------------------------------------------------------------------------- drawing helpers


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (temporary name beside ``path``, then rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png",
                                                    facecolor=fig.get_facecolor()))
    except OSError as exc:
        raise DataError(f"cannot write picture {path}: {exc.strerror}") from None
    logger.debug("wrote %s", path)
    return path


def tumour_centre(mask: NDArray[np.bool_] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per axis, the slice index with the most ``mask`` voxels (volume centre if empty/None)."""
    if mask is None or not mask.any():
        return tuple(s // 2 for s in shape)
    return tuple(int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != ax))))
                 for ax in range(3))


def _plane(volume: NDArray[Any], axis: int, index: int, box: tuple[slice, ...]) -> NDArray[Any]:
    """2D slice ``index`` along ``axis``, cropped to ``box``, transposed for ``origin="lower"``."""
    crop = volume[tuple(b if a != axis else slice(None) for a, b in enumerate(box))]
    plane = np.take(crop, index, axis=axis).T
    return plane[:, ::-1] if axis == 0 else plane


def _label_rgba(labels2d: NDArray[np.uint8]) -> NDArray[np.float32]:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*labels2d.shape, 4), np.float32)
    for value, (_, colour) in LABEL_COLOURS.items():
        rgba[labels2d == value] = to_rgba(colour, OVERLAY_ALPHA)
    return rgba


def _window(image: NDArray[Any]) -> tuple[float, float]:
    brain = image[image != 0]
    if brain.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(brain, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _draw(ax: Any, image: NDArray[Any], window: tuple[float, float], aspect: float,
          labels: NDArray[np.uint8] | None = None, title: str = "",
          edges: tuple[str, str, str, str] | None = None) -> None:
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              aspect=aspect, interpolation="nearest")
    if labels is not None:
        ax.imshow(_label_rgba(labels), origin="lower", aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10, color="white")
    if edges is not None:  # orientation letters at the middle of each edge
        style = {"color": "#8fd3ff", "fontsize": 8, "fontweight": "bold",
                 "transform": ax.transAxes,
                 "bbox": {"boxstyle": "square,pad=0.1", "fc": "black", "alpha": 0.6, "lw": 0}}
        for (x, y, ha, va), letter in zip(
                ((0.02, 0.5, "left", "center"), (0.98, 0.5, "right", "center"),
                 (0.5, 0.02, "center", "bottom"), (0.5, 0.98, "center", "top")), edges,
                strict=True):
            ax.text(x, y, letter, ha=ha, va=va, **style)


def montage(columns: list[tuple[str, NDArray[Any], NDArray[np.uint8] | None]],
            spacing: tuple[float, ...], centre: tuple[int, ...], title: str,
            slice_names: dict[str, str] | None = None) -> Any:
    """A ``views × columns`` figure: rows axial, coronal, sagittal through ``centre``.

    Every panel carries the patient directions at its edges (:data:`EDGES`); each row is
    labelled with its view and slice.

    Args:
        columns: ``(name, image (X, Y, Z), labels (X, Y, Z) uint8 internal or None)`` per column,
            volumes in L-A-S display order (:func:`to_display`).
        spacing: voxel size in mm per axis (sets each panel's aspect ratio).
        centre: ``(x, y, z)`` slice indices (display order).
        title: figure title.
        slice_names: view → how its slice is named (default ``slice N`` of the display volume;
            :func:`source_slices` gives the source file's voxel index).
    """
    from matplotlib.patches import Patch

    box = _brain_box(columns[0][1])
    n = len(columns)
    fig = figure(2.6 * n, 2.6 * len(VIEWS) + 0.9)
    fig.set_facecolor("black")
    axes = fig.subplots(len(VIEWS), n, squeeze=False)
    windows = {id(image): _window(image) for _, image, _ in columns}  # once per volume
    for r, (view, axis) in enumerate(VIEWS.items()):
        a, b = (d for d in range(3) if d != axis)
        aspect = spacing[b] / spacing[a]
        for c, (name, image, labels) in enumerate(columns):
            window = windows[id(image)]
            lab = None if labels is None else _plane(labels, axis, centre[axis], box)
            _draw(axes[r, c], _plane(image, axis, centre[axis], box), window, aspect, lab,
                  name if r == 0 else "", EDGES[view])
        where = (slice_names or {}).get(view, f"slice {centre[axis]}")
        axes[r, 0].set_ylabel(f"{view}\n{where}", color="white", fontsize=9)
    handles = [Patch(color=colour, label=name) for name, colour in LABEL_COLOURS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white")
    fig.suptitle(title, color="white", fontsize=12)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.88, bottom=0.08, wspace=0.03, hspace=0.05)
    return fig


def _brain_box(image: NDArray[Any], margin: int = 3) -> tuple[slice, ...]:
    nz = np.argwhere(image != 0)
    if nz.size == 0:
        return tuple(slice(0, s) for s in image.shape)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, image.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def to_display(volumes: list[Any], affine: NDArray[np.float64], zooms: tuple[float, ...]
               ) -> tuple[list[Any], tuple[float, ...]]:
    """Reorient volumes (X, Y, Z[, C]) to L-A-S axes (closest to ``affine``) for display.

    With ``origin="lower"`` this shows axial and coronal slices in radiological convention
    (patient's left on the right, anterior/superior up); sagittal slices are mirrored in
    :func:`_plane` so anterior is on the left.  Returns the volumes and the permuted spacing.
    """
    from nibabel.orientations import apply_orientation

    t = display_transform(affine)
    spacing = [0.0, 0.0, 0.0]
    for i in range(3):
        spacing[int(t[i, 0])] = float(zooms[i])
    return ([None if v is None else apply_orientation(v, t) for v in volumes], tuple(spacing))


def display_transform(affine: NDArray[np.float64]) -> NDArray[np.float64]:
    """nibabel orientation transform from the voxel axes of ``affine`` to L-A-S: row ``i`` =
    (display axis of source axis ``i``, 1 or -1 for a flip)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(affine), axcodes2ornt(("L", "A", "S")))


def source_slices(affine: NDArray[np.float64], shape: tuple[int, ...],
                  centre: tuple[int, ...]) -> dict[str, str]:
    """view → ``"x = 120"``-style name of the slice drawn, in the source file's voxel axes.

    Args:
        affine: the source voxel-to-world affine.  shape: the source ``(X, Y, Z)`` shape.
        centre: slice indices in display (L-A-S) order, as given to :func:`montage`.
    """
    t = display_transform(affine)
    names = {}
    for view, axis in VIEWS.items():
        src = next(i for i in range(3) if int(t[i, 0]) == axis)
        index = centre[axis] if t[src, 1] > 0 else shape[src] - 1 - centre[axis]
        names[view] = f"{'xyz'[src]} = {index}"
    return names
