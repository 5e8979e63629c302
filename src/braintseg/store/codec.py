"""How image voxels are encoded in the store, and the fast copies of the read path.

Two encodings (``store.dtype``):

* ``float16`` / ``float32``: the normalised intensities themselves (see
  :func:`braintseg.data.preprocess.apply_normalization`).
* ``int16``: the cropped *source* intensities, exact for integer sources, with brain (nonzero)
  voxels clipped to the integer hull ``[floor(clip_lo), ceil(clip_hi)]`` of the case's
  percentile clip range (background stays exactly 0).  The per-case, per-modality statistics are
  kept in the case metadata; :class:`~braintseg.store.read.SliceStore` normalises on read through
  a 65,536-entry look-up table per channel built with the very arithmetic of
  ``apply_normalization``, so an int16 store reads back *bit-identical* float16 values to a
  float16 store of the same cases.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.data.preprocess import apply_normalization
from braintseg.errors import DataError

INT16_MIN, INT16_MAX = -32768, 32767
#: element type that moves all channels of one voxel at once, by bytes per voxel
WIDE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.complex128}


def int16_bounds(stat: dict[str, Any]) -> tuple[int, int] | None:
    """Integer clip bounds ``(lo, hi)`` for brain voxels, or None without clipping.

    ``floor(clip_lo)`` and ``ceil(clip_hi)``, moved off 0 (0 marks background), so clipping to
    them and then to the exact percentiles on read equals clipping to the percentiles at once.
    """
    if "clip_lo" not in stat:
        return None
    lo, hi = math.floor(stat["clip_lo"]), math.ceil(stat["clip_hi"])
    return (lo if lo != 0 else -1), (hi if hi != 0 else 1)


def encode_int16(
    images: NDArray[np.floating], stats: Sequence[dict[str, Any]], names: Sequence[str]
) -> NDArray[np.int16]:
    """Cropped source intensities → C-contiguous int16 ``(X, Y, Z, C)``, clipped, exact.

    Args:
        images: ``(X, Y, Z, C)`` source intensities (any memory order, e.g. a crop view).
        stats: one dict per channel from ``normalization_stats`` (or ``method: none``).
        names: one label per channel for messages, e.g. ``"modality 'flair' (x_flair.nii.gz)"``.

    Raises:
        DataError: non-integer intensities, or values outside int16 after clipping; the message
            names the channel and tells the user to use ``store.dtype: float16``.
    """
    out = np.empty(images.shape, np.int16)
    for c, (stat, name) in enumerate(zip(stats, names, strict=True)):
        chan = images[..., c]
        bounds = int16_bounds(stat)
        if bounds is None:
            value = np.asarray(chan, np.float32)
            lo, hi = (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)
        else:
            lo, hi = bounds
            value = np.clip(chan, lo, hi, dtype=np.float32)  # keeps memory order
            np.multiply(value, chan != 0, out=value)  # background stays exactly 0
        if lo < INT16_MIN or hi > INT16_MAX:
            raise DataError(f"{name}: brain intensities {lo:g}..{hi:g} after clipping do not fit "
                            f"int16 ({INT16_MIN}..{INT16_MAX}); use store.dtype float16")
        exact = value.astype(np.int16)  # same memory order as value: cheap to compare
        if not np.array_equal(exact, value):
            raise DataError(f"{name}: non-integer intensities cannot be stored exactly as int16; "
                            "use store.dtype float16")
        out[..., c] = exact
    return out


def decode_rows(stats: Sequence[dict[str, Any]], dtype: Any = np.float16
                ) -> list[tuple[int, NDArray[Any]]]:
    """Per channel ``(base, row)``: ``row[v - base]`` is the normalised value of stored int16 ``v``.

    z-score statistics cover ``[min(lo, 0), max(hi, 0)]`` of :func:`int16_bounds` (every value an
    int16 store can hold) with ``apply_normalization`` itself (the same float32 arithmetic and
    rounding as a float16 store); ``method: none`` covers all of int16 with the value itself.
    """
    rows = []
    for stat in stats:
        bounds = int16_bounds(stat)
        base, top = (min(bounds[0], 0), max(bounds[1], 0)) if bounds else (INT16_MIN, INT16_MAX)
        values = np.arange(base, top + 1, dtype=np.float32)
        if "mean" in stat:
            row = apply_normalization(values.reshape(-1, 1, 1, 1), [stat], dtype)[:, 0, 0, 0]
        else:
            row = values.astype(dtype)
        rows.append((base, row))
    return rows


class Int16Decoder:
    """Stored int16 ``(..., C)`` → normalised ``(..., C)`` float16 by table look-up.

    When a voxel's channels fill 1, 2, 4 or 8 bytes (e.g. 4 float16 channels) each channel's row
    is widened to uint64 with its bits at the channel's place, so every channel is one contiguous
    gather OR-ed into whole voxels (no strided 2-byte writes).  Values outside a row's range (none
    in a valid store) take the nearest end of the row.
    """

    def __init__(self, stats: Sequence[dict[str, Any]], dtype: Any = np.float16) -> None:
        rows = decode_rows(stats, dtype)
        self.dtype, self.n_channels = np.dtype(dtype), len(rows)
        self.bases = [base for base, _ in rows]
        self.rows = [row for _, row in rows]
        bits = self.dtype.itemsize * 8
        self.wide: list[NDArray[np.uint64]] | None = None
        if bits * self.n_channels in (8, 16, 32, 64) and sys.byteorder == "little":
            unsigned = np.dtype(f"u{self.dtype.itemsize}")
            self.wide = [row.view(unsigned).astype(np.uint64) << np.uint64(bits * c)
                         for c, row in enumerate(self.rows)]

    def __call__(self, raw: NDArray[np.int16], axis: int = 0) -> NDArray[Any]:
        """Decode ``raw`` ``(A, B, D, C)`` with ``axis`` moved to the front (C-contiguous).

        ``axis`` > 0 gives ``np.moveaxis(decoded, axis, 0)``: the transpose is folded into the
        last write of the packed path, so it costs no pass of its own.
        """
        if raw.shape[-1] != self.n_channels:
            raise DataError(f"stored images have {raw.shape[-1]} channels; the case statistics "
                            f"describe {self.n_channels}")
        raw = np.ascontiguousarray(raw)
        if self.wide is None:
            flat = raw.reshape(-1, self.n_channels)
            out = np.empty(flat.shape, self.dtype)
            for c, row in enumerate(self.rows):
                out[:, c] = np.take(row, flat[:, c].astype(np.intp) - self.bases[c], mode="clip")
            return move_to_front(out.reshape(raw.shape), axis)
        packed = np.dtype(f"u{self.dtype.itemsize * self.n_channels}")
        voxels = np.empty(np.moveaxis(raw[..., 0], axis, 0).shape, packed)
        target = np.moveaxis(voxels, 0, axis)  # raw order, writes land transposed
        per_row = max(1, math.prod(raw.shape[1:-1]))
        step = max(1, SCRATCH_VOXELS // per_row)
        for r0 in range(0, raw.shape[0], step):
            block = raw[r0:r0 + step]
            self._gather(block.reshape(-1, self.n_channels), target[r0:r0 + step])
        return voxels.view(self.dtype).reshape(*voxels.shape, self.n_channels)

    def _gather(self, flat: NDArray[np.int16], target: NDArray[Any]) -> None:
        """OR the channels' wide rows for voxels ``flat (n, C)`` into ``target`` (n voxels)."""
        assert self.wide is not None  # noqa: S101 - only called on the packed path
        n = len(flat)
        index, acc, part = (buf[:n] for buf in _scratch())
        for c, wide in enumerate(self.wide):
            np.copyto(index, flat[:, c], casting="unsafe")  # faster than a casting subtract
            index -= self.bases[c]
            np.take(wide, index, out=acc if c == 0 else part, mode="clip")
            if 0 < c < self.n_channels - 1:
                acc |= part
        shape = target.shape
        if self.n_channels > 1:  # the last OR writes the (possibly transposed) output directly
            np.bitwise_or(acc.reshape(shape), part.reshape(shape), out=target, casting="unsafe")
        else:
            np.copyto(target, acc.reshape(shape), casting="unsafe")


_LOCAL = threading.local()
#: voxels decoded per piece (three 512 KiB scratch arrays per thread)
SCRATCH_VOXELS = 65536


def _scratch() -> tuple[NDArray[np.intp], NDArray[np.uint64], NDArray[np.uint64]]:
    """This thread's reusable index and gather buffers (fresh large arrays cost page faults)."""
    if not hasattr(_LOCAL, "index"):
        _LOCAL.index = np.empty(SCRATCH_VOXELS, np.intp)
        _LOCAL.acc = np.empty(SCRATCH_VOXELS, np.uint64)
        _LOCAL.part = np.empty(SCRATCH_VOXELS, np.uint64)
    return _LOCAL.index, _LOCAL.acc, _LOCAL.part


def move_to_front(a: NDArray[Any], axis: int) -> NDArray[Any]:
    """``np.moveaxis(a, axis, 0)`` as a C-contiguous copy, for ``a`` of shape ``(A, B, D, C)``.

    The channels of one voxel move as one wide element (e.g. 4 float16 = one uint64), so the
    transpose costs a copy of ``A*B*D`` elements instead of ``A*B*D*C`` tiny strided ones.
    """
    if axis == 0:
        return np.ascontiguousarray(a)
    a = np.ascontiguousarray(a)
    wide = WIDE.get(a.shape[-1] * a.itemsize)
    if wide is None:
        return np.ascontiguousarray(np.moveaxis(a, axis, 0))
    moved = np.ascontiguousarray(np.moveaxis(a.view(wide)[..., 0], axis, 0))
    return moved.view(a.dtype).reshape(*moved.shape, a.shape[-1])
