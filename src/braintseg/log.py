"""Logging set-up and progress bars.

Only :mod:`braintseg.cli` calls :func:`setup_logging`; library modules use
``logging.getLogger(__name__)`` and :func:`progress`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_QUIET = False
#: TensorFlow's (and JAX/XLA's) C++ log threshold: 3 hides the start-up lines printed on
#: stderr at import (absl's "All log messages before absl::InitializeLog()", oneDNN, CPU
#: features, "E0000 ... AVX-512", CUDA probing); ERROR-level lines need 3, not 2
NATIVE_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"


def quiet_native_logs(verbosity: int) -> None:
    """Below ``-vv``, hide the C++ start-up lines of TensorFlow/JAX unless the user set
    :data:`NATIVE_LOG_ENV`.  Call before anything imports TensorFlow; worker processes (block
    readers, case loaders) inherit the environment."""
    if verbosity < 2:
        os.environ.setdefault(NATIVE_LOG_ENV, "3")


def setup_logging(verbosity: int = 0) -> None:
    """Configure the ``braintseg`` logger: -1 quiet (warnings), 0 info, 1+ debug."""
    global _QUIET
    _QUIET = verbosity < 0
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logger = logging.getLogger("braintseg")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False


def progress(
    items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on a terminal; a plain iterator otherwise (Slurm logs)."""
    if _QUIET or not sys.stderr.isatty():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True)
