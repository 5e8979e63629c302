"""Batches pinned byte for byte (recorded before the package restructuring of issue 19).

The store holds small integers (exact in float16), so its bytes and every batch depend only on
the generator's epoch plan (shuffle, tumour oversampling, stream blocks and windows), not on a
CPU's floating-point kernels: the digests hold on any machine.  A change that moves a digest
changes what training sees; if that is intended, record the new digests in the same commit and
say why.  ``scripts/pin_outputs.py`` pins the rest (stores from real data, weights, predictions,
scores) on one machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from braintseg.data.folds import Folds
from braintseg.store.slice_writer import PreparedSlices, SliceStoreWriter
from braintseg.training.generator import SliceDataset

#: (cache mode, epoch) -> SHA-256 prefix of all its batches (x, y bytes), recorded at 1e56c6f
PINNED = {
    ("ram", 0): "c76fda2d0e374cf7", ("ram", 1): "c108e9d754cc898a",
    ("ram", 5): "303103ad7f267f3b",
    ("stream", 0): "b11bac81522095f4", ("stream", 1): "67a5d2ae501db4fd",
    ("stream", 5): "51fd8382e2a2e038",
}


def _store(path: Path) -> Path:
    rng = np.random.default_rng(3)
    folds = Folds(folds=[["p0", "p1"], ["p2", "p3"]], holdout=[], n_folds=2, seed=0,
                  holdout_fraction=0.0)
    with SliceStoreWriter(path, (16, 16), 2) as writer:
        for k, n in enumerate((7, 12, 5, 9)):
            labels = np.zeros((n, 16, 16), np.uint8)
            for s in range(0, n, 3):  # every third slice has a tumour
                labels[s, 4:9, 5:11] = 1
            images = rng.integers(-40, 40, (n, 16, 16, 2)).astype(np.float16)
            writer.append(PreparedSlices(
                f"p{k}", images, labels, np.zeros(n, np.uint8),
                np.full((n, 2), 16, np.int32),
                {"slice_ids": [str(i) for i in range(n)], "channels": ["a", "b"]}))
        return writer.finish(folds, {"format": "test", "convention": "binary",
                                     "channels": ["a", "b"]})


@pytest.mark.parametrize("mode", ["ram", "stream"])
def test_batches_are_pinned(tmp_path: Path, mode: str) -> None:
    store = _store(tmp_path / "pinned.h5")
    ds = SliceDataset(store, ["p0", "p1", "p2", "p3"], "slice", 4, seed=11, cache=mode,
                      tumour_oversampling=0.5, block_slices=4, buffer_blocks=2,
                      read_processes=0)
    try:
        got = {}
        for epoch in (0, 1, 5):
            digest = hashlib.sha256()
            for i in range(len(ds)):
                x, y = ds.batch(epoch, i)
                digest.update(np.asarray(x).tobytes() + np.asarray(y).tobytes())
            got[(mode, epoch)] = digest.hexdigest()[:16]
    finally:
        ds.close()
    assert got == {k: v for k, v in PINNED.items() if k[0] == mode}
