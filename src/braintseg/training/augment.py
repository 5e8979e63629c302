"""Augmentation of slice batches, drawn on the host from a seeded ``np.random.Generator``.

Images ``(B, H, W, C)`` (float16/float32) and integer labels ``(B, H, W)`` uint8 (internal labels
0..3) are transformed together, per sample:

* flips along H and/or W (each with probability 0.5) — the original's augmentation;
* rotation by a uniform angle in ``[-rotate_degrees, rotate_degrees]`` and zoom by a uniform
  factor in ``[1 - zoom, 1 + zoom]`` about the slice centre (images bilinear, labels nearest
  neighbour, so labels stay in {0..3}; zeros fill the border).

Where the work happens in training (so that no default or documented setting costs host time
per slice beyond one copy):

* flips are fused with the generator's gather: :func:`gather_flipped` copies each source slice
  once, through a reversed view, into the batch buffer;
* rotation/zoom run on the accelerator inside the compiled training step
  (:func:`install_device_affine`, ``keras.ops.image.affine_transform``); the host only draws
  the angle/scale and sends a ``(B, 8)`` float32 projective transform with the batch, which
  then reads ``((x, transforms), y)``.  Validation and prediction never see it.

Random draws (:meth:`Augmenter.draw`) are those of the per-sample loop this replaced, value for
value: per sample, angle (if rotating), scale (if zooming), then the two flip coins.  Flips alone
(the default) therefore give bit-identical batches to it.  With rotation/zoom the geometric
transform of each sample is the same as before (rotate/zoom, then flip), applied after the flip
as the conjugate rotation; pixel values can differ in rounding (float32 bilinear on the device
instead of scipy's order-1 spline on the host).

:meth:`Augmenter.__call__` applies everything on the host (numpy/scipy), for arrays outside the
training pipeline and as the reference of the device path in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.config import SEG_OUTPUT
from braintseg.store.codec import WIDE  # a pixel's channels as one wide element


@dataclass(frozen=True)
class Draws:
    """One batch's random draws: flips ``(B,)`` bool; angle (radians) and scale ``(B,)``."""

    flip_h: NDArray[np.bool_]
    flip_w: NDArray[np.bool_]
    angle: NDArray[np.float64]
    scale: NDArray[np.float64]

    def rows(self, start: int, stop: int) -> Draws:
        """The draws of samples ``start..stop-1`` (one process's rows of a global batch)."""
        return Draws(self.flip_h[start:stop], self.flip_w[start:stop], self.angle[start:stop],
                     self.scale[start:stop])


@dataclass(frozen=True)
class Augmenter:
    """Settings of the batch augmentation (from ``train.flip/rotate_degrees/zoom``)."""

    flip: bool = True
    rotate_degrees: float = 0.0
    zoom: float = 0.0

    @property
    def enabled(self) -> bool:
        """True when any transform is on."""
        return self.flip or self.geometric

    @property
    def geometric(self) -> bool:
        """True when rotation or zoom is on (done on the device in training)."""
        return self.rotate_degrees > 0 or self.zoom > 0

    def draw(self, rng: np.random.Generator, n: int) -> Draws:
        """The random parameters of ``n`` samples, in the per-sample order of the old loop."""
        d, z = self.rotate_degrees, self.zoom
        cols = int(d > 0) + int(z > 0) + 2 * int(self.flip)
        u = rng.random((n, cols)) if cols else np.zeros((n, 0))
        c = 0
        angle, scale = np.zeros(n), np.ones(n)
        if d > 0:  # Generator.uniform(low, high) is low + (high - low) * random()
            angle = np.radians(-d + (d - -d) * u[:, c])
            c += 1
        if z > 0:
            scale = (1.0 - z) + ((1.0 + z) - (1.0 - z)) * u[:, c]
            c += 1
        if self.flip:
            flip_h, flip_w = u[:, c] < 0.5, u[:, c + 1] < 0.5
        else:
            flip_h = flip_w = np.zeros(n, bool)
        return Draws(flip_h, flip_w, angle, scale)

    def __call__(
        self, x: NDArray[Any], y: NDArray[np.uint8], rng: np.random.Generator,
        copy: bool = True,
    ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """Augment one batch ``x (B, H, W, C)``, ``y (B, H, W)`` on the host (reference path).

        Returns new arrays, or with ``copy=False`` the inputs changed in place.
        """
        if not self.enabled:
            return x, y
        if copy:
            x, y = np.array(x, copy=True), np.array(y, copy=True)
        draws = self.draw(rng, x.shape[0])
        for b in range(x.shape[0]):
            xb, yb = x[b], y[b]
            if self.geometric:
                xb, yb = _rotate_zoom(xb, yb, float(draws.angle[b]), float(draws.scale[b]))
            if draws.flip_h[b]:
                xb, yb = xb[::-1], yb[::-1]
            if draws.flip_w[b]:
                xb, yb = xb[:, ::-1], yb[:, ::-1]
            x[b], y[b] = xb, yb
        return x, y


#: byte alignment of batch buffers: JAX's CPU client takes a 64-byte-aligned C-contiguous
#: numpy array without copying it (a jitted call on a batch of 64: 4.9 -> 0.2 ms), so the
#: training loop's main thread does not copy each batch (the batch is never written again)
BATCH_ALIGN = 64


def empty_batch(shape: tuple[int, ...], dtype: Any) -> NDArray[Any]:
    """``np.empty(shape, dtype)`` whose data starts on a :data:`BATCH_ALIGN`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + BATCH_ALIGN, np.uint8)
    start = -raw.ctypes.data % BATCH_ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def gather_flipped(src: NDArray[Any], index: NDArray[np.int64], draws: Draws | None,
                   out: NDArray[Any] | None = None) -> NDArray[Any]:
    """``out[j] = src[index[j]]`` flipped as ``draws`` says: one strided copy per slice.

    ``src`` is ``(N, H, W, ...)`` (images or labels); with ``draws`` None a plain gather.
    """
    if out is None:
        out = empty_batch((len(index), *src.shape[1:]), src.dtype)
    n = len(index)
    step_h = np.where(draws.flip_h, -1, 1).tolist() if draws is not None else [1] * n
    step_w = np.where(draws.flip_w, -1, 1).tolist() if draws is not None else [1] * n
    s, o = pixels(src), pixels(out)
    for j, (i, sh, sw) in enumerate(zip(index.tolist(), step_h, step_w, strict=True)):
        o[j] = s[i, ::sh, ::sw]
    return out


def pixels(a: NDArray[Any]) -> NDArray[Any]:
    """``a (..., H, W, C)`` C-contiguous viewed as ``(..., H, W)`` of one C-byte element per
    pixel when a numpy type that wide exists (else ``a``): a reversed-W copy then moves whole
    pixels (about 3x faster than 4 float16 at a time).  Bytes are copied, never converted."""
    wide = WIDE.get(a.shape[-1] * a.itemsize) if a.ndim >= 4 else None
    if wide is None or not a.flags.c_contiguous:
        return a
    return a.view(wide)[..., 0]


def device_transforms(draws: Draws, height: int, width: int) -> NDArray[np.float32]:
    """``(B, 8)`` projective transforms for ``keras.ops.image.affine_transform``.

    Each maps an output pixel ``(col, row)`` to the input pixel it samples: rotation by the
    drawn angle and scaling by the drawn factor about the centre ``((H-1)/2, (W-1)/2)``,
    conjugated by the sample's flip (one flip reverses the rotation's sense; scaling and the
    double flip commute), so that applied *after* the flips it equals the old
    rotate/zoom-then-flip.
    """
    sign = np.where(draws.flip_h != draws.flip_w, -1.0, 1.0)
    angle = draws.angle * sign
    cos, sin = np.cos(angle) / draws.scale, np.sin(angle) / draws.scale
    cr, cc = (height - 1) / 2, (width - 1) / 2
    # (row_in, col_in) = M (row, col) + centre - M centre, M = [[cos, -sin], [sin, cos]]
    off_r = cr - (cos * cr - sin * cc)
    off_c = cc - (sin * cr + cos * cc)
    zeros = np.zeros_like(cos)
    # keras: x_in = a0 col + a1 row + a2, y_in = b0 col + b1 row + b2
    t = np.stack([cos, sin, off_c, -sin, cos, off_r, zeros, zeros], axis=1)
    return t.astype(np.float32)


def apply_affine(x: Any, y: Any, transforms: Any) -> tuple[Any, Any]:
    """Device half of rotation/zoom: images bilinear, labels nearest; dtypes kept.

    ``x (B, H, W, C)`` float, ``y (B, H, W)`` integer labels, ``transforms (B, 8)`` float32.
    """
    from keras import ops

    xt = ops.image.affine_transform(ops.cast(x, "float32"), transforms,
                                    interpolation="bilinear", fill_mode="constant",
                                    data_format="channels_last")
    yf = ops.expand_dims(ops.cast(y, "float32"), -1)
    yt = ops.image.affine_transform(yf, transforms, interpolation="nearest",
                                    fill_mode="constant", data_format="channels_last")
    return ops.cast(xt, x.dtype), ops.cast(ops.round(yt[..., 0]), y.dtype)


def install_device_affine(model: Any, batch: tuple[Any, Any]) -> None:
    """Make ``model.fit`` apply rotation/zoom on the device before each training step.

    Training batches then are ``((x, transforms), y)`` (:class:`SliceDataset` with a geometric
    :class:`Augmenter`); the model itself, its evaluation and saving are unchanged.
    ``batch`` is one plain ``(x, y)`` batch: Keras builds the metric and loss state from it
    here, since the first training batch is not an input the model accepts.
    """
    import keras

    model._symbolic_build(data_batch=batch)  # noqa: SLF001 - see the docstring
    base = model.train_step

    def unpack(data: Any) -> Any:
        (x, transforms), y = data[0], data[1]
        if isinstance(y, dict):  # with a classification head: only the label maps move
            x, seg = apply_affine(x, y[SEG_OUTPUT], transforms)
            return (x, {**y, SEG_OUTPUT: seg}, *data[2:])
        x, y = apply_affine(x, y, transforms)
        return (x, y, *data[2:])

    if keras.backend.backend() == "jax":
        def train_step(state: Any, data: Any) -> Any:
            return base(state, unpack(data))
    else:
        def train_step(data: Any) -> Any:
            return base(unpack(data))
    model.train_step = train_step


def _rotate_zoom(
    x: NDArray[Any], y: NDArray[np.uint8], angle: float, scale: float,
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """Rotate and zoom one sample about its centre on the host; zeros fill the border."""
    from scipy import ndimage

    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    matrix = np.array([[cos, -sin], [sin, cos]])  # output coords → input coords
    centre = (np.array(y.shape, dtype=np.float64) - 1) / 2
    offset = centre - matrix @ centre
    out_y = ndimage.affine_transform(y, matrix, offset, order=0, mode="constant", cval=0)
    xf = x.astype(np.float32)
    out_x = np.empty_like(xf)
    for c in range(x.shape[-1]):
        out_x[..., c] = ndimage.affine_transform(
            xf[..., c], matrix, offset, order=1, mode="constant", cval=0.0
        )
    return out_x.astype(x.dtype), out_y
