"""glibc ``malloc`` settings that stop a page-fault storm when TensorFlow trains on a CPU.

On the TensorFlow backend Keras feeds a ``PyDataset`` through TensorFlow's generator dataset op,
which sets glibc's ``M_TRIM_THRESHOLD`` to 128 KB ("Memory patch applied" in the log) while it
runs.  Setting it also freezes glibc's mmap threshold at 128 KB, so every activation tensor of a
training step is ``mmap``-ed, zero-filled by the kernel page by page and unmapped again: with the
demo configuration, about 0.45 million page faults (1.8 GB) per step and as much system time as user
time.  :func:`keep_freed_memory` sets both thresholds back to large values; the training loop calls
it around every batch, because TensorFlow re-applies its setting while the data pipeline runs.

Measured (``configs/demo.yaml`` model, batch 8, 2-core CPU, TensorFlow 2.21): 1.78 s per step with
37 s of system time over 24 steps before; 0.82 s per step with 0.9 s after.  A no-op where glibc
is absent (macOS, musl); harmless on other backends.

The slice readers call it too (``SliceDataset`` on creation, the stream-mode block reader
processes at start): every batch (15 MB at batch 64) and stream block (8 MB of images, 1 MB of
labels and the chunk buffer they are decoded into) is a fresh array, and with glibc's defaults
each was page-faulted in again: about 1,360 page faults and half the time of a 32-slice axial
block read (20 ms -> 10.6 ms, one core; ``scripts/bench_train.py``).

Not applied when the user chose: ``BRAINTSEG_MALLOC_TUNING=0``, or a ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` variable in the environment (glibc's own settings win).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory kept at the top of the heap instead of returned to the kernel
TRIM_THRESHOLD = 512 * 1024 * 1024


#: environment variables that leave glibc's settings alone
OPT_OUT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MB and its trim threshold to 512 MB.

    Returns:
        True when both settings were accepted (glibc), False otherwise (also when the
        environment opts out, see the module doc).
    """
    fn = _mallopt()
    if fn is None or _opted_out():
        return False
    return bool(fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@functools.cache
def _opted_out() -> bool:
    return (os.environ.get("BRAINTSEG_MALLOC_TUNING", "1") == "0"
            or any(k in os.environ for k in OPT_OUT))
