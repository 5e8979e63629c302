"""The epoch plan of a :class:`~braintseg.training.generator.SliceDataset`: which slice of the
dataset fills each position of every batch of an epoch, and which rows of a batch this process
reads.

Slices are numbered by *position* ``0 .. n_slices - 1``: the cases in the dataset's order, the
slices of each case in order.  The plan of epoch ``e`` is a pure function of ``(seed, e)``
(drawn from ``np.random.default_rng([seed, e])``), so every process of a distributed training
and every resumed run draws the same plan.

* RAM mode: ``source[p]`` is the position read at plan position ``p`` (a permutation when
  shuffling, then tumour oversampling).
* Stream mode: the slices are cut into *blocks* of ``block`` consecutive slices of one case
  (chunk-aligned reads); the blocks are shuffled, grouped into windows of ``buffer_blocks``
  blocks, and the slices shuffled inside each window (block shuffle; oversampling draws from
  the window).  ``source[p]`` is then a block and ``offset[p]`` the slice within it;
  ``window[b]`` is the window that reads block ``b``.

Shards: a global batch of ``B`` rows is split over ``n`` processes; process ``k`` reads rows
``[k*B/n, (k+1)*B/n)`` of it (:meth:`EpochPlans.span`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from braintseg.store.read import CHUNK_EDGE, LABEL_CHUNK_SCALE

_EMPTY: NDArray[np.int64] = np.zeros(0, np.int64)

#: slices per stream block: the depth of a label chunk (two image chunks), so each label chunk
#: is decoded once per epoch, not twice (+28 % stream slices/s: scripts/bench_train.py)
STREAM_BLOCK = LABEL_CHUNK_SCALE * CHUNK_EDGE


@dataclass(frozen=True)
class Plan:
    """Where every position of an epoch comes from (see the module).

    RAM: ``source[p]`` is a slice position.  Stream: ``source[p]`` is a block index and
    ``offset[p]`` the slice within it; ``window[b]`` is the window that reads block ``b``
    (all int64).
    """

    source: NDArray[np.int64]
    offset: NDArray[np.int64] = field(default_factory=lambda: _EMPTY)
    window: NDArray[np.int64] = field(default_factory=lambda: _EMPTY)


class Span(NamedTuple):
    """The rows of one batch: the global batch has ``size`` rows; this process reads plan
    positions ``start:stop``, rows ``skip : skip + stop - start`` of the global batch."""

    size: int
    start: int
    stop: int
    skip: int


class EpochPlans:
    """The plans of one dataset's epochs (the last one drawn is kept; thread-safe).

    Args:
        case_len: slices of each case, int64 ``(n_cases,)``.
        tumour: bool ``(n_slices,)``: the slice at that position has a labelled pixel.
        stream: stream mode (blocks and windows), else RAM mode.
        batch_size: rows of the global batch ``B``.
        shuffle: shuffle per epoch (else positions in order, no oversampling).
        seed: plan seed.
        oversampling: probability that a position is replaced by a random tumour slice.
        block: slices per stream block.
        buffer_blocks: blocks per shuffle window.
        shard: ``(k, n)``: this process's rows of each global batch (``B`` divides by ``n``).
    """

    def __init__(self, case_len: NDArray[np.int64], tumour: NDArray[np.bool_], *, stream: bool,
                 batch_size: int, shuffle: bool, seed: int, oversampling: float, block: int,
                 buffer_blocks: int, shard: tuple[int, int]) -> None:
        self.stream, self.batch_size, self.shuffle, self.seed = stream, batch_size, shuffle, seed
        self.tumour, self.oversampling, self.shard = tumour, oversampling, shard
        self.buffer_blocks = buffer_blocks
        self.n_slices = int(case_len.sum())
        case_base = np.concatenate([[0], np.cumsum(case_len)[:-1]]).astype(np.int64)
        #: stream blocks: ``(case k, first slice, stop)`` in case order
        self.blocks = [(k, s, min(s + block, n)) for k, n in enumerate(case_len.tolist())
                       for s in range(0, n, block)]
        #: position of the first slice of each block, and its number of slices
        self.block_base = np.array([case_base[k] + s for k, s, _ in self.blocks], np.int64)
        self.block_len = np.array([e - s for _, s, e in self.blocks])
        self._lock = threading.Lock()  # the reader thread and the consumer both ask
        self._last: tuple[int, Plan] | None = None

    def plan(self, epoch: int) -> Plan:
        """The plan of ``epoch`` (drawn once, then kept until another epoch is asked for)."""
        with self._lock:
            if self._last is None or self._last[0] != epoch:
                rng = np.random.default_rng([self.seed, epoch])
                plan = self._stream_plan(rng) if self.stream else self._ram_plan(rng)
                self._last = (epoch, plan)
            return self._last[1]

    def span(self, i: int) -> Span:
        """The rows of batch ``i`` this process reads (see :class:`Span`)."""
        size = self.batch_size
        g0, g1 = i * size, min((i + 1) * size, self.n_slices)
        k, n = self.shard
        skip = k * size // n
        p0 = g0 + skip
        return Span(g1 - g0, p0, max(p0, min(p0 + size // n, g1)), skip)

    def positions(self, epoch: int, i: int) -> NDArray[np.int64]:
        """Slice positions (int64) of the rows of batch ``i`` of ``epoch`` this process reads,
        in row order."""
        plan, span = self.plan(epoch), self.span(i)
        src = plan.source[span.start:span.stop]
        if not self.stream:
            return src
        return self.block_base[src] + plan.offset[span.start:span.stop]

    def block_order(self, epoch: int, start: int) -> list[int]:
        """Stream mode: the blocks of ``epoch`` from batch ``start`` on, in order of first use."""
        src = self.plan(epoch).source[start * self.batch_size:]
        _, first = np.unique(src, return_index=True)
        return src[np.sort(first)].tolist()

    def _oversample(self, order: NDArray[np.int64], tumour: NDArray[np.bool_],
                    rng: np.random.Generator) -> NDArray[np.int64]:
        """Replace each position by a random tumour position (among ``order``) with p."""
        if not (self.shuffle and self.oversampling > 0 and tumour.any()):
            return order
        pool = np.flatnonzero(tumour)
        mask = rng.random(order.size) < self.oversampling
        order = order.copy()
        order[mask] = rng.choice(pool, int(mask.sum()))
        return order

    def _ram_plan(self, rng: np.random.Generator) -> Plan:
        order = rng.permutation(self.n_slices) if self.shuffle else np.arange(self.n_slices)
        return Plan(self._oversample(order, self.tumour, rng))

    def _stream_plan(self, rng: np.random.Generator) -> Plan:
        n_blocks = len(self.blocks)
        block_order = rng.permutation(n_blocks) if self.shuffle else np.arange(n_blocks)
        sources, offsets = [], []
        window = np.empty(n_blocks, np.int64)
        for w, start in enumerate(range(0, n_blocks, self.buffer_blocks)):
            members = block_order[start:start + self.buffer_blocks]
            window[members] = w
            src = np.repeat(members, self.block_len[members])
            off = np.concatenate([np.arange(n) for n in self.block_len[members]])
            ids = self.block_base[src] + off
            local = rng.permutation(src.size) if self.shuffle else np.arange(src.size)
            local = self._oversample(local, self.tumour[ids], rng)
            sources.append(src[local])
            offsets.append(off[local])
        return Plan(np.concatenate(sources), np.concatenate(offsets), window)
