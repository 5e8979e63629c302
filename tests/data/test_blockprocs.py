"""Stream-mode block reads in worker processes: same batches as threads, one-line errors,
signals, and nothing left behind (real processes, real shared memory, real signals)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tables

from braintseg.errors import DataError
from braintseg.store.blockprocs import SHM_DIR, SHM_PREFIX
from braintseg.store.read import open_store
from braintseg.training.augment import Augmenter
from braintseg.training.generator import SliceDataset

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm")


def _segments(pid: int) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}{pid}_*"))


def _dataset(store: Path, processes: int, **kw: object) -> SliceDataset:
    ids = open_store(store).case_ids
    return SliceDataset(store, ids, "axial", batch_size=5, cache="stream", seed=3,
                        augment=Augmenter(flip=True), block_slices=4, buffer_blocks=2,
                        read_processes=processes, **kw)  # type: ignore[arg-type]


def _epochs(ds: SliceDataset, epochs: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for e in range(epochs):
        ds.set_epoch(e)
        out += [ds[i] for i in range(len(ds))]
    return out


def _pids(ds: SliceDataset) -> list[int]:
    assert ds._procs is not None, "the dataset did not read in worker processes"
    return [w.proc.pid for w in ds._procs._workers]


def test_worker_processes_give_the_thread_readers_batches(synthetic_store: Path) -> None:
    threads, procs = _dataset(synthetic_store, 0), _dataset(synthetic_store, 2)
    a, b = _epochs(threads), _epochs(procs)
    assert threads._procs is None and len(_pids(procs)) == 2
    assert len(a) == len(b) > 2
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
    assert _segments(os.getpid())  # slots live while the dataset does ...
    threads.close()
    procs.close()
    assert not _segments(os.getpid())  # ... and are unlinked by close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT],
                         ids=["TERM", "USR1", "INT"])
def test_stop_signals_to_the_workers_are_ignored(synthetic_store: Path, sig: int) -> None:
    """Slurm signals every process of a job step (``kill -USR1 -- -PGID``, ``scancel -s``): the
    workers leave stopping to the trainer."""
    ref = _dataset(synthetic_store, 0)
    ds = _dataset(synthetic_store, 2)
    first = ds[0]
    for pid in _pids(ds):
        os.kill(pid, sig)
    time.sleep(0.3)
    ds.set_epoch(1)
    ref.set_epoch(1)
    for i in range(len(ds)):
        assert ds[i][0].tobytes() == ref[i][0].tobytes()
    assert first[0].shape[0] == 5
    assert all(w.proc.poll() is None for w in ds._procs._workers)  # type: ignore[union-attr]
    ds.close()
    ref.close()
    assert not _segments(os.getpid())


def _read_after_killing(store: Path, sig: int, victims: int) -> str:
    """Start 2 workers, kill ``victims`` of them with ``sig``, read on: the DataError's text."""
    ds = _dataset(store, 2)
    ds[0]
    for pid in _pids(ds)[:victims]:
        os.kill(pid, sig)
    with pytest.raises(DataError) as info:
        for e in range(1, 4):
            ds.set_epoch(e)
            for i in range(len(ds)):
                ds[i]
    ds.close()
    return str(info.value)


def test_a_killed_worker_ends_in_one_line(synthetic_store: Path) -> None:
    msg = _read_after_killing(synthetic_store, signal.SIGKILL, 1)
    assert "\n" not in msg and str(synthetic_store) in msg
    assert "a block reader process died (killed by signal 9" in msg
    assert not _segments(os.getpid())


def test_a_damaged_chunk_read_by_a_worker_is_the_stores_one_line(
        synthetic_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    store.write_bytes(synthetic_store.read_bytes())
    case = open_store(store).case_ids[1]
    with tables.open_file(str(store)) as h:
        info = h.root.images.chunk_info((1, 0, 0, 0, 0))
    with store.open("r+b") as f:  # flip one byte in the middle of case 1's first chunk
        f.seek(info.offset + info.size // 2)
        byte = f.read(1)[0]
        f.seek(info.offset + info.size // 2)
        f.write(bytes([byte ^ 0x01]))
    ds = _dataset(store, 2)
    with pytest.raises(DataError, match=rf"^store {store}: case {case} cannot be read "
                       r"\(.+\); damaged: re-run prepare$"):
        _epochs(ds, 1)
    assert len(_pids(ds)) == 2
    ds.close()


def test_killing_the_trainer_leaves_no_worker_and_no_segment(synthetic_store: Path,
                                                            tmp_path: Path) -> None:
    """``kill -9`` of the process that reads: its workers end (their stdin closes) and the
    resource tracker unlinks its shared memory."""
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from braintseg.training.generator import SliceDataset
        from braintseg.store.read import open_store
        store = {str(synthetic_store)!r}
        ds = SliceDataset(store, open_store(store).case_ids, "axial", 5, cache="stream",
                          block_slices=4, buffer_blocks=2, read_processes=2)
        ds[0]
        print(" ".join(str(w.proc.pid) for w in ds._procs._workers), flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(workers) == 2 and _segments(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_segments(proc.pid) or any(
            Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text()
            .split(")")[1][:3] for w in workers)):
        time.sleep(0.2)
    assert not _segments(proc.pid)
    for w in workers:  # gone, or a zombie waiting for init to reap it
        stat = Path(f"/proc/{w}/stat")
        assert not stat.exists() or " Z " in stat.read_text(), f"worker {w} still runs"


def test_no_room_in_dev_shm_reads_on_threads(synthetic_store: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import braintseg.store.blockprocs as bp

    class Full:
        f_bavail, f_frsize = 1, 4096

    monkeypatch.setattr(bp.os, "statvfs", lambda _: Full())
    ref = _dataset(synthetic_store, 0)
    ds = _dataset(synthetic_store, 2)
    with caplog.at_level("INFO", logger="braintseg.training.generator"):
        assert ds[0][0].tobytes() == ref[0][0].tobytes()
    assert ds._procs is None and ds.read_processes == 0
    assert any("reads on" in r.message and "/dev/shm has 0 MB free" in r.message
               for r in caplog.records)
    ds.close()
    ref.close()


def test_segments_of_dead_processes_are_removed_by_the_next_reader(
        synthetic_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = SHM_DIR / f"{SHM_PREFIX}{dead}_0"
    stale.write_bytes(b"\0" * 4096)
    live = SHM_DIR / f"{SHM_PREFIX}{os.getppid()}_0"  # a running process's: kept
    live.write_bytes(b"\0" * 4096)
    try:
        ds = _dataset(synthetic_store, 2)
        with caplog.at_level("INFO", logger="braintseg.store.blockprocs"):
            ds[0]
        assert not stale.exists() and live.exists()
        assert any(stale.name in r.message for r in caplog.records)
        ds.close()
    finally:
        for p in (stale, live):
            p.unlink(missing_ok=True)


def test_a_worker_dead_of_sigbus_says_dev_shm_ran_out(synthetic_store: Path) -> None:
    """A full /dev/shm kills the worker that writes a new page of a segment with SIGBUS."""
    msg = _read_after_killing(synthetic_store, signal.SIGBUS, 2)
    assert "\n" not in msg and msg.startswith(f"store {synthetic_store}: a block reader "
                                              "process died of SIGBUS: /dev/shm ran out of "
                                              "space"), msg
    assert msg.endswith("set train.read_processes=0 to read on threads instead"), msg
    assert not _segments(os.getpid())


def _private_tmpfs_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _private_tmpfs_works(),
                    reason="needs root and unshare -m (a private 4 MB /dev/shm)")
def test_a_really_full_dev_shm_is_one_line_naming_it(synthetic_store: Path,
                                                     tmp_path: Path) -> None:
    """In a private mount namespace /dev/shm is a 4 MB tmpfs: the readers start (room for
    the read-ahead), then another file takes the rest; the first block a worker writes into a
    fresh slot is a SIGBUS, which the trainer reports in one line."""
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from braintseg.training.generator import SliceDataset
        from braintseg.store.read import open_store
        from braintseg.errors import DataError
        store = {str(synthetic_store)!r}
        ds = SliceDataset(store, open_store(store).case_ids, "axial", 5, cache="stream",
                          block_slices=4, buffer_blocks=2, read_processes=2)
        assert ds._block_processes() is not None
        with open("/dev/shm/filler", "wb") as f:  # another job fills /dev/shm
            try:
                while True:
                    f.write(bytes(65536))
                    f.flush()
            except OSError:
                pass
        try:
            ds[0]
        except DataError as exc:
            print(exc)
        ds.close()
    """))
    done = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4m tmpfs "
                           f"/dev/shm && exec {sys.executable} {script}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"store {synthetic_store}: a block reader process died of "
                                  "SIGBUS: /dev/shm ran out of space (0 MB free now"), (
        done.stdout, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_a_signal_to_the_whole_group_leaves_the_resource_tracker_quiet(
        synthetic_store: Path, tmp_path: Path) -> None:
    """``kill -USR1 -- -PGID`` reaches multiprocessing's resource tracker too: it used to die
    of it, and the tracker started in its place printed a KeyError traceback for each segment
    unregistered at close (it had never seen them)."""
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        from braintseg.training.generator import SliceDataset
        from braintseg.store.read import open_store
        got = []
        signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))  # the trainer's handler
        store = {str(synthetic_store)!r}
        ds = SliceDataset(store, open_store(store).case_ids, "axial", 5, cache="stream",
                          block_slices=4, buffer_blocks=2, read_processes=2)
        ds[0]
        os.killpg(0, signal.SIGUSR1)
        time.sleep(0.5)
        for e in range(1, 3):
            ds.set_epoch(e)
            for i in range(len(ds)):
                ds[i]
        ds.close()
        print(len(got), os.getpid())
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got, pid = done.stdout.split()
    assert got == "1"  # the reading process had the signal, and went on
    for bad in ("Traceback", "KeyError", "resource_tracker"):
        assert bad not in done.stderr, done.stderr[-3000:]
    assert not _segments(int(pid))
