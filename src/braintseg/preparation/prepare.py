"""``braintseg prepare``: a source's cases → one PyTables store + folds JSON (the stage).

Flow: check the output (parent folders, writable: a probe file; remove stale temporaries of
killed runs) → detect the format; its ``LAYOUT`` picks the strategy (:data:`LAYOUTS`: BraTS
volumes in :mod:`.volumes`, 2D slices in :mod:`.slices`; the contract is
:class:`braintseg.preparation.layout.Layout`) → the strategy finds the cases → an existing store
made from the very same input files and config is kept as it is (a rerun after a kill succeeds)
→ the strategy's checks before any heavy work → worker processes (:mod:`braintseg.workers`) turn
one case each into arrays, the parent appends them in case-id order to a temporary store → folds
→ the files beside the store ``<stem>.h5`` (``<stem>.folds.json``, ``<stem>.config.yaml`` and,
with skipped cases, ``<stem>.skipped.txt``; each written atomically,
:mod:`braintseg.preparation.output`) → the store is renamed into place last.  A kill at any
instant leaves either no store or a complete store with its files (their texts are also kept
inside the store and rewritten by a rerun).

Every error, in a worker or here, is one :class:`DataError` naming the case and file (or the
output path and the system's reason, e.g. "No space left on device").
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from braintseg.config import Config
from braintseg.errors import DataError
from braintseg.preparation.layout import Job, Layout
from braintseg.preparation.output import (
    check_output,
    kept_store,
    kill_point,
    output_folder,
    sidecar,
)
from braintseg.preparation.slices import SliceLayout
from braintseg.preparation.volumes import VolumeLayout
from braintseg.workers import loader_pool

logger = logging.getLogger(__name__)

#: a source's ``LAYOUT`` → its prepare strategy (a :class:`Layout` made for one :class:`Job`)
LAYOUTS: dict[str, type[VolumeLayout] | type[SliceLayout]] = {
    "volumes": VolumeLayout,
    "slices": SliceLayout,
}


def layout_for(fmt: str, job: Job) -> Layout:
    """The prepare strategy for source format ``fmt`` (by its ``LAYOUT``), made for ``job``."""
    from braintseg.sources.registry import source

    return LAYOUTS[source(fmt).LAYOUT](job)


def run_prepare(cfg: Config, input_dir: Path, output: Path, *, workers: int | None = None,
                overwrite: bool = False, skip_invalid: bool = False,
                require_labels: bool = True, fmt: str | None = None,
                folds_from: Path | None = None, validation_cases: Path | None = None) -> Path:
    """Prepare a store from the cases below ``input_dir``: BraTS case folders (a volume store) or
    a 2D slice data set (a slice store).  The format is detected (see
    :mod:`braintseg.sources.registry`) and its ``LAYOUT`` picks the strategy (:data:`LAYOUTS`).

    Args:
        cfg: resolved config (``data.*`` and ``store.*`` used; ``model.levels`` sets the crop
            divisibility ``2**levels``).
        input_dir: BraTS root: case folders anywhere below it (nested HGG/LGG or flat); or a
            slice data set's folder.
        output: the ``.h5`` store to write (atomically: temporary name, then rename).
        workers: processes that load and normalise cases (default: all cores).
        overwrite: replace an existing store (without it, an existing store prepared from the
            same input files and config is kept and its path returned; any other is refused).
        skip_invalid: skip bad cases with a warning and list them in ``<stem>.skipped.txt``.
        require_labels: every case needs a seg file (False: inference-only store allowed).
        fmt: ``brats``, ``lgg`` or ``figshare`` to force a reader (None: detect).
        folds_from: figshare ``cvind.mat`` (the data set's official patient-level split).
        validation_cases: a file of patient ids (one a line) forming fold 0's validation set.

    Returns:
        The store path.

    Raises:
        DataError, ConfigError: bad input (one line naming the case/file/key); no store is left.
    """
    output, root = Path(output), Path(input_dir)
    check_output(output)
    from braintseg.sources.registry import detect_format

    fmt = detect_format(root, fmt)
    layout = layout_for(fmt, Job(cfg, root, output, fmt, skip_invalid, require_labels,
                                 folds_from, validation_cases))
    fingerprint = layout.scan()
    if output.exists() and not overwrite:
        if kept_store(output, fingerprint):
            return output
        raise DataError(f"store {output} already exists; use --overwrite to replace it")
    kill_point("scanned")
    failures = layout.check()
    workers = max(1, min(workers or os.cpu_count() or 1, len(layout.cases) or 1))
    start = time.perf_counter()
    with loader_pool(workers) as pool, output_folder(output):  # pool first: no HDF5 file open
        path = layout.write_store(pool, failures, fingerprint)
    elapsed = time.perf_counter() - start
    if failures:
        logger.warning("skipped %d invalid %s(s); see %s", len(failures), layout.NOUN,
                       sidecar(output, ".skipped.txt"))
    logger.info("wrote %s: %s", path, layout.summary(elapsed, workers))
    return path
