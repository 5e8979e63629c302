"""Augmentation of numpy slice batches with a seeded ``np.random.Generator``.

Images ``(B, H, W, C)`` (any float dtype, returned in the same dtype) and integer labels
``(B, H, W)`` uint8 (internal labels 0..3) are transformed together, per sample:

* flips along H and/or W (each with probability 0.5) — the original's augmentation;
* rotation by a uniform angle in ``[-rotate_degrees, rotate_degrees]`` and zoom by a uniform
  factor in ``[1 - zoom, 1 + zoom]`` about the slice centre (``scipy.ndimage.affine_transform``:
  images linear (order 1), labels nearest neighbour (order 0), so labels stay in {0..3}).

Disabled transforms cost nothing: with everything off the inputs are returned unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Augmenter:
    """Settings of the batch augmentation (from ``train.flip/rotate_degrees/zoom``)."""

    flip: bool = True
    rotate_degrees: float = 0.0
    zoom: float = 0.0

    @property
    def enabled(self) -> bool:
        """True when any transform is on."""
        return self.flip or self.rotate_degrees > 0 or self.zoom > 0

    def skip(self, rng: np.random.Generator, n_samples: int) -> None:
        """Advance ``rng`` past the draws of ``n_samples`` samples, so that a process holding
        rows ``k..`` of a batch augments them as the whole batch would (each sample draws a
        fixed number of doubles: 2 for the flips, 1 each for rotation and zoom)."""
        per_sample = 2 * self.flip + (self.rotate_degrees > 0) + (self.zoom > 0)
        if self.enabled and n_samples > 0:
            rng.random(n_samples * per_sample)

    def __call__(
        self, x: NDArray[Any], y: NDArray[np.uint8], rng: np.random.Generator,
        copy: bool = True,
    ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """Augment one batch ``x (B, H, W, C)``, ``y (B, H, W)``.

        Returns new arrays, or with ``copy=False`` the inputs changed in place (for batches
        the caller owns, as the generator's).
        """
        if not self.enabled:
            return x, y
        if copy:
            x, y = np.array(x, copy=True), np.array(y, copy=True)
        for b in range(x.shape[0]):
            if self.rotate_degrees > 0 or self.zoom > 0:
                x[b], y[b] = _rotate_zoom(x[b], y[b], rng, self.rotate_degrees, self.zoom)
            if self.flip:
                x[b], y[b] = _flip(x[b], y[b], rng)
        return x, y


def _flip(
    x: NDArray[Any], y: NDArray[np.uint8], rng: np.random.Generator
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """Flip one sample ``x (H, W, C)``, ``y (H, W)`` along H and W, each with p = 0.5."""
    flip_h, flip_w = rng.random(2) < 0.5
    if flip_h:
        x, y = x[::-1], y[::-1]
    if flip_w:
        x, y = x[:, ::-1], y[:, ::-1]
    return x, y


def _rotate_zoom(
    x: NDArray[Any], y: NDArray[np.uint8], rng: np.random.Generator,
    degrees: float, zoom: float,
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """Rotate and zoom one sample about its centre; zeros fill the border."""
    from scipy import ndimage

    angle = math.radians(rng.uniform(-degrees, degrees)) if degrees > 0 else 0.0
    scale = rng.uniform(1.0 - zoom, 1.0 + zoom) if zoom > 0 else 1.0
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
