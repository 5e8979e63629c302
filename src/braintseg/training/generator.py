"""Slice batches from the store for Keras: a single reader thread per dataset prefetches.

:class:`SliceDataset` yields ``(x, y)``: ``x`` float16 ``(B, H, W, C)`` (channels FLAIR, T1,
T1ce, T2), ``y`` uint8 ``(B, H, W)`` internal labels {0 background, 1 NCR/NET, 2 edema, 3 ET}
(no one-hot here: the loss and metrics one-hot inside).  Flips are applied while gathering (one
strided copy per slice into the batch buffer, :func:`~braintseg.training.augment.gather_flipped`).
With rotation/zoom on, batches are ``((x, transforms), y)``, ``transforms`` float32 ``(B, 8)``:
the model's training step applies them on the device
(:func:`~braintseg.training.augment.install_device_affine`).

Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the epoch's *plan* (which slice
goes to which position, :mod:`braintseg.training.plan`) is drawn from
``np.random.default_rng([seed, e])`` and augmentation from ``[seed, e, i]``.  So a batch read
ahead by the reader thread (:mod:`braintseg.training.prefetch`) equals one read directly when
Keras asks out of order, and a resumed run sees the same batches as an uninterrupted one.
:meth:`SliceDataset.batch_ids` names the slices of a batch; :meth:`SliceDataset.batch_targets`
is the hook of a subclass with other targets.

Modes (``cache``):

* ``"ram"``: every slice of the cases is read once (``read_view``) into contiguous arrays
  ``(N, H, W, C)`` float16 and ``(N, H, W)`` uint8; batches are fancy-indexed.
* ``"stream"``: chunk-aligned blocks of consecutive slices (``read_slices``); the epoch shuffles
  the blocks of all cases, groups them into windows of ``buffer_blocks`` blocks and shuffles the
  slices inside a window (block shuffle), so memory is bounded by one window, not the store.
* ``"auto"``: RAM when the arrays fit the budget, else stream.  The budget is
  :data:`CACHE_FRACTION` of the memory available now (``MemAvailable`` in ``/proc/meminfo``),
  capped by ``cache_max_gb`` when given; the choice is logged.

Keras 3 calls ``__getitem__(0), (1), …`` in order from one thread when ``workers=1`` and
``use_multiprocessing=False`` (``fit(shuffle=False)``); the reader thread runs ``prefetch``
batches ahead of that index, so reading and decompression overlap the accelerator step.  Every
HDF5 call goes through :data:`braintseg.store.arrays.HDF5_LOCK`, so a training and a validation
dataset in one process never touch HDF5 at the same time.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from numpy.typing import NDArray

from braintseg.errors import ConfigError, DataError
from braintseg.malloc import keep_freed_memory
from braintseg.store.blockprocs import BlockProcesses, processes_unavailable
from braintseg.store.read import SliceStore
from braintseg.store.readahead import BlockReadAhead
from braintseg.training.augment import (
    Augmenter,
    Draws,
    device_transforms,
    empty_batch,
    gather_flipped,
    pixels,
)
from braintseg.training.plan import STREAM_BLOCK, EpochPlans, Plan
from braintseg.training.prefetch import BatchReader, Blocks, SyncBlocks

logger = logging.getLogger(__name__)

Cache = Literal["auto", "ram", "stream"]
_STORES: dict[tuple[str, int], SliceStore] = {}
_STORES_LOCK = threading.Lock()


#: share of the available memory that ``cache: auto`` may fill (training and validation each
#: decide in turn, the second seeing what the first took)
CACHE_FRACTION = 0.5
FALLBACK_BUDGET_GB = 16.0


def available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cache_budget(cache_max_gb: float | None) -> tuple[float, str]:
    """``(bytes, how it was chosen)`` of the RAM budget of ``cache: auto``."""
    avail = available_memory()
    if avail is None:
        gb = cache_max_gb if cache_max_gb is not None else FALLBACK_BUDGET_GB
        return gb * 1e9, f"available memory unknown; {gb:g} GB"
    share = CACHE_FRACTION * avail
    why = f"{CACHE_FRACTION:.0%} of {avail / 1e9:.1f} GB available"
    if cache_max_gb is not None and cache_max_gb * 1e9 < share:
        return cache_max_gb * 1e9, f"train.cache_max_gb; {why} is more"
    return share, why


def usable_cores() -> int:
    """CPU cores this process may run on (affinity mask where the OS has one)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def shared_store(path: Path) -> SliceStore:
    """One :class:`SliceStore` per path and process (the handle opens lazily in each process)."""
    import os

    key = (str(Path(path).resolve()), os.getpid())
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = SliceStore(Path(path))
        return _STORES[key]


def release_store(path: Path) -> None:
    """Close this process's shared handle of ``path`` (after its datasets are closed)."""
    import os

    with _STORES_LOCK:
        store = _STORES.pop((str(Path(path).resolve()), os.getpid()), None)
    if store is not None:
        store.close()


class SliceDataset(keras.utils.PyDataset):
    """2D slices of some cases of a store, in one view, as shuffled, augmented batches.

    Args:
        store_path: a store written by ``braintseg prepare``.
        case_ids: cases to read (e.g. a fold's training ids).
        view: ``axial`` (z → (X, Y)), ``coronal`` (y → (X, Z)) or ``sagittal`` (x → (Y, Z)).
        batch_size: slices per batch; the last batch may be smaller.
        shuffle: shuffle per epoch (training); False keeps case/slice order (validation).
        seed: plan and augmentation seed.
        augment: an :class:`Augmenter` or None (no augmentation).
        cache: ``"ram"``, ``"stream"`` or ``"auto"`` (RAM when it fits the budget).
        cache_max_gb: cap on the ``auto`` budget (None: :data:`CACHE_FRACTION` of the
            available memory alone).
        prefetch: batches the reader thread keeps ready.
        tumour_oversampling: probability that a position is replaced by a random slice with
            tumour (from the same window in stream mode); 0 disables it.
        max_batches: cap on batches per epoch (``train.steps_per_epoch``).
        block_slices: slices per stream block (:data:`STREAM_BLOCK`).
        buffer_blocks: blocks per shuffle window (stream mode); the next window's blocks are
            read ahead while one is consumed (memory: about two windows).
        read_threads: stream mode: threads that read blocks ahead (HDF5 calls stay one at a
            time under the store lock); default: usable cores, at most 4.
        read_processes: stream mode: worker processes that read blocks into shared memory
            (:mod:`braintseg.store.blockprocs`), instead of threads of this process; None: usable
            cores, at most 4, where processes can run (else threads, logged); 0: threads.
        shard: ``(k, n)``: this process reads only rows ``[k*B/n, (k+1)*B/n)`` of every batch
            of ``B = batch_size`` rows (the global batch of a multi-process training; every
            process draws the same epoch plan from ``seed``, so the rows of all processes
            together are exactly the one-process batch, augmentation included).
        drop_remainder: leave out the last batch of an epoch when it is incomplete (a batch
            split over several devices is never ragged).

    Raises:
        DataError: unknown case id or view.  ConfigError: bad batch size or cache mode.
    """

    def __init__(
        self, store_path: Path, case_ids: list[str], view: str, batch_size: int, *,
        shuffle: bool = True, seed: int = 0, augment: Augmenter | None = None,
        cache: Cache = "auto", cache_max_gb: float | None = None, prefetch: int = 4,
        tumour_oversampling: float = 0.0, max_batches: int | None = None,
        block_slices: int = STREAM_BLOCK, buffer_blocks: int = 16, read_threads: int | None = None,
        read_processes: int | None = None, shard: tuple[int, int] = (0, 1),
        drop_remainder: bool = False,
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        keep_freed_memory()  # fresh batches and blocks without page faults (see the module)
        if batch_size < 1 or prefetch < 1 or block_slices < 1 or buffer_blocks < 1:
            raise ConfigError(f"batch_size, prefetch, block_slices and buffer_blocks must be >= 1;"
                              f" received {batch_size}, {prefetch}, {block_slices}, "
                              f"{buffer_blocks}")
        if not case_ids:
            raise DataError(f"no cases to read from {store_path} (view {view})")
        if not 0 <= shard[0] < shard[1] or batch_size % shard[1]:
            raise ConfigError(f"shard {shard[0]}/{shard[1]} of batches of {batch_size} rows: "
                              "the batch must divide by the number of shards")
        self.shard, self.drop_remainder = shard, drop_remainder
        self.store = shared_store(store_path)
        hw = self.store.slice_shape(view)  # checks the view (slice stores: only 'slice')
        self.view, self.batch_size, self.shuffle, self.seed = view, batch_size, shuffle, seed
        self.rows = [self.store.index_of(c) for c in case_ids]
        self.case_ids = list(case_ids)
        #: slices of each case (all equal for volume stores; per patient for slice stores)
        self.case_len = np.array([self.store.n_slices(r, view) for r in self.rows], np.int64)
        self.case_base = np.concatenate([[0], np.cumsum(self.case_len)[:-1]]).astype(np.int64)
        self.input_shape: tuple[int, int, int] = (hw[0], hw[1], self.store.n_channels)
        self.n_slices = int(self.case_len.sum())
        self.augment = augment if augment is not None and augment.enabled else None
        self.prefetch, self.oversampling = prefetch, tumour_oversampling
        self.max_batches, self.block, self.buffer_blocks = max_batches, block_slices, buffer_blocks
        self.read_threads = read_threads or min(4, usable_cores())
        self.read_processes = (min(4, usable_cores()) if read_processes is None
                               else max(0, read_processes))
        self._procs: BlockProcesses | None = None
        self.tumour = np.concatenate(
            [np.isin(np.arange(n), self.store.tumour_slices(r, view))
             for r, n in zip(self.rows, self.case_len.tolist(), strict=True)])
        self.mode = self._choose_mode(cache, cache_max_gb)
        self.epoch = 0
        self._lock = threading.RLock()  # consumer state (reader, epoch)
        #: the epoch plans (:mod:`braintseg.training.plan`; also used by the reader thread)
        self.plans = EpochPlans(
            self.case_len, self.tumour, stream=self.mode == "stream", batch_size=batch_size,
            shuffle=shuffle, seed=seed, oversampling=tumour_oversampling, block=block_slices,
            buffer_blocks=buffer_blocks, shard=shard)
        self._reader: BatchReader | None = None
        self._closed = False
        if self.mode == "ram":
            self._load_ram()

    # -- set-up
    def _choose_mode(self, cache: str, cache_max_gb: float | None) -> str:
        if cache not in ("auto", "ram", "stream"):
            raise ConfigError(f"train.cache must be auto, ram or stream; received {cache!r}")
        if cache != "auto":
            return cache
        h, w, c = self.input_shape
        nbytes = self.n_slices * h * w * (2 * c + 1)
        budget, why = cache_budget(cache_max_gb)
        mode = "ram" if nbytes <= budget else "stream"
        logger.info("train.cache auto: %d %s slices need %.2f GB; RAM budget %.2f GB (%s): %s",
                    self.n_slices, self.view, nbytes / 1e9, budget / 1e9, why, mode)
        return mode

    def _load_ram(self) -> None:
        shape = (self.n_slices, *self.input_shape)
        self._x = np.empty(shape, np.float16)
        self._y = np.empty(shape[:3], np.uint8)
        for k, row in enumerate(self.rows):
            x, y = self.store.read_view(row, self.view)
            s0, s1 = self.case_base[k], self.case_base[k] + self.case_len[k]
            self._x[s0:s1], self._y[s0:s1] = x, y
        logger.debug("cached %d %s slices in RAM (%.2f GB)", self.n_slices, self.view,
                     (self._x.nbytes + self._y.nbytes) / 1e9)

    # -- Keras PyDataset interface
    def __len__(self) -> int:
        n = (self.n_slices // self.batch_size if self.drop_remainder
             else math.ceil(self.n_slices / self.batch_size))
        return min(n, self.max_batches) if self.max_batches else n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range 0..{len(self) - 1}")
        with self._lock:
            if self._closed:  # a pipeline thread outliving fit must not restart the reader
                raise RuntimeError("SliceDataset is closed")
            r = self._reader
            if r is None or r.epoch != self.epoch or r.next != i:
                self._stop_reader()
                r = self._reader = BatchReader(self._block_source, self._make_batch, len(self),
                                               self.epoch, i, self.prefetch)
            return r.get()

    def on_epoch_end(self) -> None:
        """Advance to the next epoch (a new plan)."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Use the plan of ``epoch`` from now on (a resumed run starts at its next epoch)."""
        with self._lock:
            if epoch != self.epoch:
                self._stop_reader()
                self.epoch = epoch

    def close(self) -> None:
        """Stop the reader thread for good (the store handle stays open for this process)."""
        with self._lock:
            self._closed = True
            self._stop_reader()
            if self._procs is not None:
                self._procs.close()
                self._procs = None

    def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    # -- batches
    def batch(self, epoch: int, i: int) -> Any:
        """Batch ``i`` of ``epoch`` read directly (no reader thread)."""
        blocks = SyncBlocks(self._read_block)
        try:
            return self._make_batch(epoch, i, blocks)
        finally:
            blocks.close()

    def batch_ids(self, epoch: int, i: int) -> NDArray[np.int64]:
        """Which slices fill batch ``i`` of ``epoch``: their positions (int64, in row order)
        among all slices of the dataset, numbered ``0 .. n_slices - 1`` with the cases in
        ``case_ids`` order and the slices of a case in order (case ``k``'s slices start at
        ``case_base[k]``).  Only the rows this process reads (``shard``), after tumour
        oversampling, in either cache mode: the rows :meth:`batch` returns."""
        return self.plans.positions(epoch, i)

    def batch_targets(self, epoch: int, i: int, labels: NDArray[np.uint8]) -> Any:
        """The targets of batch ``i`` of ``epoch`` given its label maps ``(B, H, W)`` uint8
        (after the flips): the label maps themselves.  A hook for subclasses whose model has
        more outputs (:class:`~braintseg.training.head_targets.HeadSliceDataset`)."""
        return labels

    def _block_source(self, epoch: int, start: int) -> Blocks:
        """Stream mode: blocks of ``epoch`` from batch ``start`` on, read ahead in the order of
        first use on ``read_threads`` threads (see :mod:`braintseg.store.readahead`)."""
        if self.mode != "stream":
            return SyncBlocks(self._read_block)
        order = self.plans.block_order(epoch, start)
        procs = self._block_processes()
        if procs is not None:
            return BlockReadAhead(self._proc_reader(procs), order, self.buffer_blocks,
                                  procs.processes, release=procs.release)
        return BlockReadAhead(self._read_block, order, self.buffer_blocks, self.read_threads)

    def _block_processes(self) -> BlockProcesses | None:
        """The worker processes of stream mode (started on first use, kept until
        :meth:`close`), or None: threads read (``read_processes`` 0, or processes cannot run
        here: logged once)."""
        if self._procs is not None or self.read_processes == 0:
            return self._procs
        h, w, c = self.input_shape
        slot = self.block * h * w * (c * self.store.read_dtype.itemsize + 1)
        why = processes_unavailable(slot, 3 * self.buffer_blocks + 2 * self.read_processes)
        if why is not None:
            logger.info("stream mode reads on %d threads: %s", self.read_threads, why)
            self.read_processes = 0
            return None
        self._procs = BlockProcesses(self.store.path, self.read_processes, slot,
                                     self.store.chunk_counts())
        logger.debug("stream mode reads blocks in %d worker processes", self.read_processes)
        return self._procs

    def _proc_reader(self, procs: BlockProcesses) -> Callable[[int], Any]:
        def read(b: int) -> Any:
            k, s0, s1 = self.plans.blocks[b]
            return procs.read(self.rows[k], self.view, s0, s1)
        return read

    def _read_block(self, b: int) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        k, s0, s1 = self.plans.blocks[b]
        return self.store.read_slices(self.rows[k], self.view, s0, s1)

    def _make_batch(self, epoch: int, i: int, blocks: Blocks) -> Any:
        plan = self.plans.plan(epoch)
        size, p0, p1, skip = self.plans.span(i)
        draws = None
        if self.augment is not None:  # the global batch's draws; this process keeps its rows
            draws = self.augment.draw(np.random.default_rng([self.seed, epoch, i, 1]), size)
            draws = draws.rows(skip, skip + p1 - p0)
        if self.mode == "ram":
            rows = plan.source[p0:p1]
            x, y = gather_flipped(self._x, rows, draws), gather_flipped(self._y, rows, draws)
        else:
            x, y = self._gather_stream(plan, p0, p1, blocks, draws)
        targets = self.batch_targets(epoch, i, y)
        if draws is not None and self.augment is not None and self.augment.geometric:
            return (x, device_transforms(draws, *self.input_shape[:2])), targets
        return x, targets

    def _gather_stream(
        self, plan: Plan, p0: int, p1: int, blocks: Blocks, draws: Draws | None,
    ) -> tuple[NDArray[np.float16], NDArray[np.uint8]]:
        src, off = plan.source[p0:p1], plan.offset[p0:p1]
        first_window = plan.window[src].min()
        blocks.drop([b for b in blocks.held() if plan.window[b] < first_window])  # finished
        x = empty_batch((p1 - p0, *self.input_shape), np.float16)
        y = empty_batch((p1 - p0, *self.input_shape[:2]), np.uint8)
        step_h = np.where(draws.flip_h, -1, 1).tolist() if draws else [1] * len(src)
        step_w = np.where(draws.flip_w, -1, 1).tolist() if draws else [1] * len(src)
        px = pixels(x)
        for j, (b, o, sh, sw) in enumerate(zip(src.tolist(), off.tolist(), step_h, step_w,
                                               strict=True)):
            bx, by = blocks.get(b)  # a tuple, or a SharedBlock (worker processes)
            px[j], y[j] = pixels(bx)[o, ::sh, ::sw], by[o, ::sh, ::sw]  # one copy, flips in
        return x, y
