"""SliceDataset against direct store reads: views, modes, shuffling, prefetch, oversampling."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from braintseg.errors import DataError
from braintseg.store.read import open_store
from braintseg.training.augment import Augmenter
from braintseg.training.generator import SliceDataset

VIEWS = ("axial", "sagittal", "coronal")


def _reference(store_path: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    store = open_store(store_path)
    parts = [store.read_view(i, view) for i in range(store.n_cases)]
    return (np.concatenate([p[0] for p in parts]).astype(np.float16),
            np.concatenate([p[1] for p in parts]))


def _epoch(ds: SliceDataset) -> tuple[np.ndarray, np.ndarray]:
    batches = [ds[i] for i in range(len(ds))]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _keys(x: np.ndarray) -> list[bytes]:
    return sorted(s.tobytes() for s in x)


@pytest.mark.parametrize("cache", ["ram", "stream"])
@pytest.mark.parametrize("view", VIEWS)
def test_batches_equal_direct_reads(synthetic_store: Path, view: str, cache: str) -> None:
    store = open_store(synthetic_store)
    ds = SliceDataset(synthetic_store, store.case_ids, view, batch_size=5, shuffle=False,
                      cache=cache, buffer_blocks=2)  # type: ignore[arg-type]
    rx, ry = _reference(synthetic_store, view)
    assert len(ds) == math.ceil(len(rx) / 5)
    x0, y0 = ds[0]
    assert x0.dtype == np.float16 and y0.dtype == np.uint8
    assert x0.shape == (5, *rx.shape[1:]) and y0.shape == (5, *ry.shape[1:])
    assert ds.input_shape == rx.shape[1:]
    x, y = _epoch(ds)
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
    ds.close()


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_shuffle_is_a_seeded_permutation_per_epoch(synthetic_store: Path, cache: str) -> None:
    store = open_store(synthetic_store)
    kw = {"batch_size": 4, "cache": cache, "seed": 7, "augment": None, "buffer_blocks": 2}
    a = SliceDataset(synthetic_store, store.case_ids, "axial", **kw)  # type: ignore[arg-type]
    b = SliceDataset(synthetic_store, store.case_ids, "axial", **kw)  # type: ignore[arg-type]
    rx, _ = _reference(synthetic_store, "axial")
    xa0, _ = _epoch(a)
    xb0, _ = _epoch(b)
    np.testing.assert_array_equal(xa0, xb0)  # same seed, same epoch → same order
    assert not np.array_equal(xa0, rx)  # shuffled
    assert _keys(xa0) == _keys(rx)  # every slice exactly once
    a.on_epoch_end()
    xa1, _ = _epoch(a)
    assert not np.array_equal(xa1, xa0) and _keys(xa1) == _keys(rx)
    a.close()
    b.close()


def test_out_of_order_access_matches_prefetched(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    ds = SliceDataset(synthetic_store, store.case_ids, "coronal", batch_size=3, cache="stream",
                      seed=3, augment=Augmenter(True, 15.0, 0.1), prefetch=2, buffer_blocks=2)
    ds.set_epoch(2)
    order = [5, 1, 2, 3, 0, len(ds) - 1, 4]
    for i in order:
        (x, t), y = ds[i]  # rotation/zoom: the device's transforms travel with the batch
        (ex, et), ey = ds.batch(2, i)
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(t, et)
        np.testing.assert_array_equal(y, ey)
        assert set(np.unique(y)) <= {0, 1, 2, 3}
    ds.close()


def test_tumour_oversampling_full_gives_only_tumour_slices(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    for cache in ("ram", "stream"):
        ds = SliceDataset(synthetic_store, store.case_ids, "axial", batch_size=8, cache=cache,
                          augment=None, tumour_oversampling=1.0)  # type: ignore[arg-type]
        _, y = _epoch(ds)
        assert (y.reshape(len(y), -1).max(axis=1) > 0).all()
        ds.close()
    plain = SliceDataset(synthetic_store, store.case_ids, "axial", batch_size=8, augment=None)
    _, y = _epoch(plain)
    assert not (y.reshape(len(y), -1).max(axis=1) > 0).all()  # the store has empty slices


def test_auto_cache_and_max_batches(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    big = SliceDataset(synthetic_store, store.case_ids[:2], "axial", 4, cache="auto")
    small = SliceDataset(synthetic_store, store.case_ids[:2], "axial", 4, cache="auto",
                         cache_max_gb=1e-6, max_batches=3)
    assert big.mode == "ram" and small.mode == "stream"
    assert len(small) == 3 and len(big) == math.ceil(big.n_slices / 4)


def test_two_datasets_read_concurrently(synthetic_store: Path) -> None:
    """Training and validation readers in one process share HDF5 safely (one lock)."""
    store = open_store(synthetic_store)
    rx, ry = _reference(synthetic_store, "sagittal")
    results: list[bool] = []

    def consume() -> None:
        ds = SliceDataset(synthetic_store, store.case_ids, "sagittal", 3, shuffle=False,
                          cache="stream", buffer_blocks=1, block_slices=4)
        for _ in range(3):
            x, y = _epoch(ds)
            results.append(np.array_equal(x, rx) and np.array_equal(y, ry))
            ds.on_epoch_end()
        ds.close()

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 9


def test_bad_inputs(synthetic_store: Path) -> None:
    store = open_store(synthetic_store)
    with pytest.raises(DataError, match="nope"):
        SliceDataset(synthetic_store, ["nope"], "axial", 4)
    with pytest.raises(DataError, match="unknown view 'sagital'"):
        SliceDataset(synthetic_store, store.case_ids, "sagital", 4)
    with pytest.raises(DataError, match="does not exist"):
        SliceDataset(synthetic_store.with_name("missing.h5"), store.case_ids, "axial", 4)


def _old_flip_loop(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[
        np.ndarray, np.ndarray]:
    """The per-sample flip loop the fused gather replaced (reference of today's batches)."""
    x, y = x.copy(), y.copy()
    for b in range(len(x)):
        xb, yb = x[b], y[b]
        flip_h, flip_w = rng.random(2) < 0.5
        if flip_h:
            xb, yb = xb[::-1], yb[::-1]
        if flip_w:
            xb, yb = xb[:, ::-1], yb[:, ::-1]
        x[b], y[b] = xb, yb
    return x, y


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_fused_flips_equal_the_old_per_sample_loop(synthetic_store: Path, cache: str) -> None:
    """Gather + flip in one copy gives bit-identical batches to gather, then the old per-sample
    flip loop with the same seeds (epochs 0 and 1, oversampling on, through the reader)."""
    ids = open_store(synthetic_store).case_ids
    kw = {"batch_size": 6, "cache": cache, "seed": 11, "tumour_oversampling": 0.3,
          "buffer_blocks": 2, "prefetch": 2}
    aug = SliceDataset(synthetic_store, ids, "sagittal", augment=Augmenter(True),
                       **kw)  # type: ignore[arg-type]
    plain = SliceDataset(synthetic_store, ids, "sagittal", **kw)  # type: ignore[arg-type]
    flipped = 0
    for epoch in (0, 1):
        aug.set_epoch(epoch)
        for i in range(len(aug)):
            x, y = aug[i]
            rx, ry = _old_flip_loop(*plain.batch(epoch, i),
                                    np.random.default_rng([11, epoch, i, 1]))
            np.testing.assert_array_equal(x, rx)
            np.testing.assert_array_equal(y, ry)
            flipped += int(not np.array_equal(y, plain.batch(epoch, i)[1]))
    assert flipped > 0
    aug.close()
    plain.close()


def test_rotation_zoom_batches_carry_device_transforms(synthetic_store: Path) -> None:
    ids = open_store(synthetic_store).case_ids
    ds = SliceDataset(synthetic_store, ids, "axial", batch_size=4, seed=2,
                      augment=Augmenter(True, 15.0, 0.1), cache="ram")
    flips = SliceDataset(synthetic_store, ids, "axial", batch_size=4, seed=2,
                         augment=Augmenter(True), cache="ram")
    (x, t), y = ds.batch(0, 3)
    fx, fy = flips.batch(0, 3)  # flips drawn differently (angle/scale come first per sample)
    assert t.shape == (4, 8) and t.dtype == np.float32 and x.shape == fx.shape
    assert y.dtype == np.uint8 and x.dtype == np.float16
    assert not np.allclose(t[:, :6], [1, 0, 0, 0, 1, 0])


def test_block_read_ahead_order_bound_and_errors() -> None:
    from braintseg.store.readahead import BlockReadAhead

    started: list[int] = []
    lock = threading.Lock()

    def read(b: int) -> int:
        with lock:
            started.append(b)
        if b == 7:
            raise DataError("block 7 is damaged")
        return b * 10

    order = [3, 1, 4, 0, 5, 9, 2, 6, 7, 8]
    ra = BlockReadAhead(read, order, ahead=2, threads=2)
    assert ra.get(3) == 30 and ra.get(1) == 10
    assert len(ra.held()) <= 4  # the blocks asked for plus at most `ahead` more
    ra.drop([3, 1])
    for b in (4, 0, 5, 9, 2, 6):
        assert ra.get(b) == b * 10
        ra.drop([b])
    with pytest.raises(DataError, match="block 7"):
        ra.get(7)
    assert ra.get(11) == 110  # not in the order: read on the spot
    ra.close()
    assert started[:4] == [3, 1, 4, 0] or sorted(started[:4]) == [0, 1, 3, 4]


def test_auto_cache_budget_from_available_memory(synthetic_store: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from braintseg.training.generator import CACHE_FRACTION, available_memory, cache_budget

    avail = available_memory()
    if avail is None:
        pytest.skip("no /proc/meminfo")
    budget, why = cache_budget(None)
    assert budget == pytest.approx(CACHE_FRACTION * avail, rel=0.05) and "available" in why
    assert cache_budget(1e-3)[0] == 1e6  # a cap below the share wins
    assert cache_budget(1e9)[0] < 1e18  # a cap above it does not
    with caplog.at_level("INFO", logger="braintseg.training.generator"):
        ds = SliceDataset(synthetic_store, open_store(synthetic_store).case_ids[:1], "axial", 4)
    assert ds.mode == "ram" and "RAM budget" in caplog.text and "available" in caplog.text


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_batches_are_64_byte_aligned_so_jax_takes_them_without_a_copy(
        synthetic_store: Path, cache: str) -> None:
    from braintseg.training.augment import BATCH_ALIGN, empty_batch

    store = open_store(synthetic_store)
    ds = SliceDataset(synthetic_store, store.case_ids, "axial", batch_size=3, cache=cache,
                      augment=Augmenter(flip=True), buffer_blocks=2)  # type: ignore[arg-type]
    try:
        for i in range(len(ds)):
            x, y = ds[i]
            for a in (x, y):
                assert a.ctypes.data % BATCH_ALIGN == 0 and a.flags.c_contiguous
    finally:
        ds.close()
    odd = [empty_batch((5, 7), np.uint8) for _ in range(8)]
    assert all(a.ctypes.data % BATCH_ALIGN == 0 and a.shape == (5, 7) for a in odd)
    jax = pytest.importorskip("jax")
    if jax.default_backend() == "cpu":  # the CPU client aliases an aligned array
        assert jax.device_put(x).unsafe_buffer_pointer() == x.ctypes.data
