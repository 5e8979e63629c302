"""The contract between the ``prepare`` stage (:func:`braintseg.preparation.prepare.run_prepare`)
and its layout strategies: :class:`Job` (what one run prepares) and :class:`Layout` (how one
store layout is scanned, checked and written).

A source's ``LAYOUT`` (:mod:`braintseg.sources.registry`) picks the strategy: ``volumes``
(:class:`braintseg.preparation.volumes.VolumeLayout`, BraTS NIfTI → a volume store) or ``slices``
(:class:`braintseg.preparation.slices.SliceLayout`, 2D slice sets → a slice store).  The stage
calls, in this order and each at most once::

    fingerprint = layout.scan()            # find cases; the input fingerprint
    (keep a finished store of the same fingerprint, or refuse an existing one)
    failures = layout.check()              # scan problems → failures or raise; pre-work checks
    with worker pool, output folder:
        path = layout.write_store(pool, failures, fingerprint)   # store + sidecars, renamed last
    log "skipped …" (with failures) and "wrote <path>: " + layout.summary(elapsed, workers)
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from braintseg.config import Config
from braintseg.preparation.output import Failure


@dataclass(frozen=True)
class Job:
    """One ``prepare`` run's arguments (see :func:`braintseg.preparation.prepare.run_prepare`);
    ``fmt`` is the detected or forced source format."""

    cfg: Config
    root: Path
    output: Path
    fmt: str
    skip_invalid: bool
    require_labels: bool
    folds_from: Path | None
    validation_cases: Path | None


class Layout(Protocol):
    """A store layout's part of ``prepare``; constructed with the :class:`Job`."""

    #: what one case is called in messages ("case", "patient")
    NOUN: str
    #: the cases found by :meth:`scan` (its source's file records)
    cases: list[Any]

    def scan(self) -> str:
        """Find the cases (and the problems of a scan); return the input fingerprint."""
        ...

    def check(self) -> list[Failure]:
        """Before any heavy work: problems of the scan become failures (``skip_invalid``) or
        raise; feasibility checks (folds, sizes).  Returns the failures list to extend."""
        ...

    def write_store(self, pool: tuple[Executor, int], failures: list[Failure],
                    fingerprint: str) -> Path:
        """Write the store (temporary name), its sidecars, then rename it into place."""
        ...

    def summary(self, elapsed: float, workers: int) -> str:
        """The text after ``wrote <path>: `` in the final log line."""
        ...
