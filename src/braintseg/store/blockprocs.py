"""Stream-mode block reads in worker processes, straight into shared memory.

Why processes: a block read (:meth:`~braintseg.store.read.SliceStore.read_slices`) is Blosc
decompression, which releases the GIL, plus transposing copies and Python per chunk, which
mostly do not; on threads of one process the reads of a 2-core machine used about 1.5 cores,
and the training loop's own Python competes for the same GIL.  Worker processes run their own
interpreters, so block reads use every core the job was given.

The one-reader rule holds: HDF5 is never called from two threads of one process.  Each worker
is a process with its own HDF5 library state and its own read-only handle of the finished store
(several processes reading an unchanging file is safe; what crashed the pipeline we replace was
threads sharing one HDF5 library).

Workers are plain child processes (``python -m braintseg.store.blockprocs STORE``), not
multiprocessing's: nothing re-imports ``__main__`` (an unguarded script may train), nothing is
pickled.  Protocol, one JSON line each way per block: the parent sends ``[segment, size, case
row, view, start, stop]``; the worker reads the block into the shared-memory segment, images
then labels (direct reads decode straight into it), and answers ``{"x": [dtype, shape], "y":
[dtype, shape]}`` or ``{"error": "<the store's one-line error>"}``.  A worker ignores
SIGINT and the trainer's stop signals (SIGTERM, SIGUSR1: the parent decides when to stop; Slurm
signals every process of a job) and
exits when its standard input closes — :meth:`BlockProcesses.close`, or the parent's death.

Memory: *slots*, each a :class:`~multiprocessing.shared_memory.SharedMemory` segment
(``/dev/shm/braintseg_<pid>_<n>``) holding one block, created when first needed and reused once
the consumer drops the block, so the total is what the thread reader holds (about two shuffle
windows).  Segments are unlinked by :meth:`BlockProcesses.close`; after a ``kill -9`` of the
parent, multiprocessing's resource tracker unlinks them (it is started with the stop signals
blocked, so a signal to the whole job does not kill it), and if the tracker was killed too
(Slurm's SIGKILL of every process of a job), the next reader removes segments of dead
processes.  A worker that dies of SIGBUS (a page of a segment that a full ``/dev/shm`` could
not provide) is one line naming ``/dev/shm`` and ``train.read_processes=0``.
:func:`processes_unavailable` says when processes cannot be used (no ``/dev/shm``, or too
little room there: a full tmpfs would kill a process with SIGBUS instead of failing cleanly);
the caller then reads on threads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import mmap
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from braintseg.errors import DataError
from braintseg.stop import SIGNALS as STOP_SIGNALS

logger = logging.getLogger(__name__)

#: where POSIX shared memory lives on Linux (its free space is checked before use)
SHM_DIR = Path("/dev/shm")
#: name prefix of this package's segments (``braintseg_<pid>_<n>``)
SHM_PREFIX = "braintseg_"
_COUNTER = itertools.count()


@dataclass
class SharedBlock:
    """A block read into shared memory: ``x`` images ``(n, H, W, C)``, ``y`` labels
    ``(n, H, W)`` uint8 — views of ``slot``, valid until the block is released."""

    x: NDArray[Any]
    y: NDArray[np.uint8]
    slot: SharedMemory

    def __iter__(self) -> Any:  # ``bx, by = block``, as for a block read on a thread
        return iter((self.x, self.y))


def _free_mb() -> str:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return "?"
    return f"{st.f_bavail * st.f_frsize / 1e6:.0f}"


def processes_unavailable(slot_bytes: int, max_slots: int) -> str | None:
    """Why worker processes cannot read blocks here (None: they can)."""
    if not SHM_DIR.is_dir():
        return f"no {SHM_DIR} on this system"
    st = os.statvfs(SHM_DIR)
    free = st.f_bavail * st.f_frsize
    if free < slot_bytes * max_slots:
        return (f"{SHM_DIR} has {free / 1e6:.0f} MB free, the read-ahead needs up to "
                f"{slot_bytes * max_slots / 1e6:.0f} MB")
    return None


def remove_stale_segments() -> list[str]:
    """Unlink this user's ``braintseg_<pid>_*`` segments whose process no longer runs (a job
    killed with its resource tracker, e.g. Slurm's SIGKILL of every process of a job)."""
    from braintseg.atomic import pid_alive

    removed = []
    for path in SHM_DIR.glob(f"{SHM_PREFIX}*_*"):
        pid = path.name[len(SHM_PREFIX):].split("_", 1)[0]
        try:
            if not pid.isdigit() or pid_alive(int(pid)) or path.stat().st_uid != os.getuid():
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path.name)
    if removed:
        logger.info("removed %d shared-memory segment(s) of stopped braintseg processes from "
                    "%s (%s)", len(removed), SHM_DIR, ", ".join(sorted(removed)[:3]))
    return removed


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """This thread with SIGINT, SIGTERM and SIGUSR1 blocked: a process started meanwhile
    inherits the mask, so a signal to the whole process group (``kill -USR1 -- -PGID``,
    ``scancel --signal=USR1 --full``) cannot kill it before it ignores the signal itself;
    here a signal that arrives meanwhile is delivered when the block ends (nothing is lost)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (if not running) with the stop signals blocked.

    The tracker ignores SIGINT and SIGTERM but not SIGUSR1: a signal to the whole job killed
    it, the next unregistration started another one, and that printed a ``KeyError`` traceback
    for each segment it had never seen.  It unblocks only SIGINT and SIGTERM, so a SIGUSR1
    stays pending there, never delivered.
    """
    from multiprocessing import resource_tracker

    with _stop_signals_blocked():
        resource_tracker.ensure_running()


def _new_segment(size: int) -> SharedMemory:
    """A new segment ``braintseg_<pid>_<n>``, known to the resource tracker *before* it exists:
    a ``kill -9`` between its creation and SharedMemory's own registration would leak it."""
    from multiprocessing import resource_tracker

    name = f"{SHM_PREFIX}{os.getpid()}_{next(_COUNTER)}"
    resource_tracker.register(f"/{name}", "shared_memory")
    return SharedMemory(name, create=True, size=size)


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self, store_path: Path, verified: str, counts: tuple[int, int]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p]
                                            + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with _stop_signals_blocked():  # until the worker ignores them (see main)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(store_path), verified, *map(str, counts)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        self.stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]

    def ask(self, task: list[Any]) -> dict[str, Any] | None:
        """The worker's answer to ``task``, or None if it died."""
        try:
            self.stdin.write(json.dumps(task) + "\n")
            self.stdin.flush()
            line = self.stdout.readline()
        except (BrokenPipeError, OSError, ValueError):
            return None
        return json.loads(line) if line else None

    def died(self, store_path: Path) -> str:
        """The one-line error for this worker's death (after it stopped answering)."""
        code = self.proc.wait()
        if code == -signal.SIGBUS:  # a page of a segment the full tmpfs could not provide
            return (f"store {store_path}: a block reader process died of SIGBUS: {SHM_DIR} "
                    f"ran out of space ({_free_mb()} MB free now; another job may have filled "
                    "it); set train.read_processes=0 to read on threads instead")
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return (f"store {store_path}: a block reader process died ({how}; out of memory? "
                "train.read_processes: 0 reads on threads instead)")

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self.stdout.close()


class BlockProcesses:
    """``processes`` worker processes that read blocks of one store into shared memory.

    Args:
        store_path: the store (opened read-only in each worker).
        processes: worker processes.
        slot_bytes: bytes of one slot (images then labels of the largest block).
        chunk_counts: chunks of the store's ``/images`` and ``/labels``: the workers share
            one table of verified checksums (``SliceStore.share_verified``), so a chunk is
            verified once a training, not once a worker.

    :meth:`read` may be called from several threads at once (each call uses an idle worker);
    :meth:`release` every block read; :meth:`close` once.
    """

    def __init__(self, store_path: Path, processes: int, slot_bytes: int,
                 chunk_counts: tuple[int, int]) -> None:
        self.store_path, self.processes, self.slot_bytes = Path(store_path), processes, slot_bytes
        remove_stale_segments()
        start_resource_tracker()
        self._verified = _new_segment(max(1, sum(chunk_counts)))
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(self.store_path, self._verified.name, chunk_counts)
                         for _ in range(processes)]
        for w in self._workers:
            self._idle.put(w)
        self._free: list[SharedMemory] = []
        self._all: list[SharedMemory] = []
        self._lock = threading.Lock()
        self._closed = False

    def _slot(self) -> SharedMemory:
        with self._lock:
            if self._closed:
                raise RuntimeError("BlockProcesses is closed")
            if self._free:
                return self._free.pop()
            slot = _new_segment(self.slot_bytes)
            self._all.append(slot)
            return slot

    def read(self, case: int, view: str, start: int, stop: int) -> SharedBlock:
        """Slices ``start:stop`` of case row ``case`` in ``view`` (as ``read_slices``), read
        by a worker into a slot.

        Raises:
            DataError: a damaged chunk (the store's one line), or a worker that died.
        """
        slot = self._slot()
        worker = self._idle.get()
        try:
            answer = worker.ask([slot.name, self.slot_bytes, case, view, start, stop])
        finally:
            self._idle.put(worker)
        if answer is None or "error" in answer:
            self.release_slot(slot)
            if answer is None:
                raise DataError(worker.died(self.store_path))
            raise DataError(answer["error"])
        x = np.ndarray(answer["x"][1], np.dtype(answer["x"][0]), slot.buf, 0)
        y = np.ndarray(answer["y"][1], np.dtype(answer["y"][0]), slot.buf, x.nbytes)
        return SharedBlock(x, y, slot)

    def release(self, block: SharedBlock) -> None:
        """Give ``block``'s slot back (its arrays must not be used afterwards)."""
        self.release_slot(block.slot)

    def release_slot(self, slot: SharedMemory) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(slot)

    def close(self) -> None:
        """Stop the workers and unlink every segment."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            slots, self._all, self._free = [*self._all, self._verified], [], []
        for w in self._workers:
            w.stop()
        for slot in slots:
            with contextlib.suppress(BufferError):  # a view still exists: the map goes with it
                slot.close()
            with contextlib.suppress(FileNotFoundError):
                slot.unlink()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- worker side (python -m braintseg.store.blockprocs STORE)
def _map(name: str, size: int) -> mmap.mmap:
    """Segment ``name`` mapped with a plain mmap (SharedMemory would register it with a
    resource tracker of the worker's own, which unlinks it when the worker ends)."""
    fd = os.open(SHM_DIR / name, os.O_RDWR)
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _serve(store_path: Path, verified: str, counts: tuple[int, int], tasks: IO[str],
           answers: IO[str]) -> None:
    from braintseg.store.read import SliceStore

    store = SliceStore(store_path)
    table = np.ndarray(sum(counts), np.uint8, _map(verified, max(1, sum(counts))))
    with contextlib.suppress(DataError, ValueError):  # a damaged store: the reads will say so
        store.share_verified(table[:counts[0]], table[counts[0]:])
    maps: dict[str, mmap.mmap] = {}
    for line in tasks:
        name, size, case, view, start, stop = json.loads(line)
        try:
            h, w = store.slice_shape(view)
            x_shape = (int(stop) - int(start), h, w, store.n_channels)
            x_dtype = store.read_dtype
            x_bytes = int(np.prod(x_shape)) * x_dtype.itemsize
            if x_bytes + int(np.prod(x_shape[:3])) > size:  # images, then uint8 labels
                raise DataError(f"store {store_path}: a block of {x_shape} does not fit its "
                                f"{size}-byte slot")
            if name not in maps:
                maps[name] = _map(name, size)
            buf = maps[name]
            x, y = store.read_slices(int(case), str(view), int(start), int(stop), out=(
                np.ndarray(x_shape, x_dtype, buf, 0),
                np.ndarray(x_shape[:3], np.uint8, buf, x_bytes)))
            answer: dict[str, Any] = {"x": [x.dtype.str, x.shape], "y": [y.dtype.str, y.shape]}
        except DataError as exc:
            answer = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - becomes the parent's one line
            answer = {"error": f"store {store_path}: case row {case}, slices {start}:{stop} "
                               f"of {view} cannot be read ({type(exc).__name__}: {exc})"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main(argv: list[str]) -> None:
    """Worker entry point: serve block reads of store ``argv[0]`` until standard input closes
    (``argv[1:4]``: the verified-chunk segment and the chunk counts of images and labels)."""
    # the parent stops a worker by closing its stdin, and its death closes it too (only the
    # parent holds the pipe's other end); PR_SET_PDEATHSIG would fire when the *thread* that
    # started the worker ends, so it is not used
    ignored = (*STOP_SIGNALS, signal.SIGINT)  # the trainer's stop signals and Ctrl-C
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started with them blocked (_Worker): pending
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ignored)  # ones are discarded now
    from braintseg.malloc import keep_freed_memory

    keep_freed_memory()
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed (C libraries included) goes to stderr
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        _serve(Path(argv[0]), argv[1], (int(argv[2]), int(argv[3])), sys.stdin, answers)


if __name__ == "__main__":
    main(sys.argv[1:])
