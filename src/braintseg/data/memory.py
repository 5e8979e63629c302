"""Keep freed buffers in the process: glibc ``malloc`` tuning for the slice readers.

Every batch (a 64-slice batch is 15 MB) and every stream block (8 MB of images, 1 MB of
labels, and the chunk buffer they are decoded into) is a fresh array.  glibc serves requests
above its mmap threshold (128 KiB at first, raised as such blocks are freed) with a new
``mmap`` and gives them back with ``munmap``, so each array is page-faulted in again: measured
here, about 1,360 page faults and half the time of a 32-slice block read (20 ms -> 10.6 ms with
the tuning below; ``scripts/bench_train.py``).  :func:`keep_freed_memory` sets the threshold
to 32 MiB (arrays smaller than that come from the heap and are reused; the RAM cache and other
large arrays are still mapped) and the trim threshold to 1 GiB (freed heap memory stays in the
process, up to the peak it reached once).

Skipped where it cannot apply or the user chose: not glibc (no ``mallopt``), any ``MALLOC_*``
variable set in the environment, or ``BRAINTSEG_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

#: mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**30
_DONE: list[bool] = []


def keep_freed_memory() -> bool:
    """Tune glibc malloc as the module doc says (once a process); True if it was applied."""
    if _DONE:
        return _DONE[0]
    applied = False
    user_set = any(k.startswith("MALLOC_") for k in os.environ)
    if (sys.platform.startswith("linux") and not user_set
            and os.environ.get("BRAINTSEG_MALLOC_TUNING", "1") != "0"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            mallopt = None
        if mallopt is not None:
            applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    logger.debug("malloc tuning for the slice readers: %s", "on" if applied else "off")
    _DONE.append(applied)
    return applied
