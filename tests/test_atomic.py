"""Atomic, durable writes (braintseg.atomic): the rename is the commit, fsyncs around it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from braintseg.atomic import atomic_write, atomic_write_text
from braintseg.errors import DataError


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(DataError, match=r"cannot write .*state\.json \(No space left on device\)"):
        atomic_write(target, fail)
    assert target.read_text() == "new"  # the old file stays, the temporary is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_commit_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path: Path) -> None:
    """The system calls of a real write, in order (strace): the temporary file's data reach the
    disk before the rename, and the folder entry after it."""
    target = tmp_path / "last.keras"
    code = ("from pathlib import Path; from braintseg.atomic import atomic_write_text; "
            f"atomic_write_text(Path({str(target)!r}), 'weights')")
    log = tmp_path / "strace.log"
    # main thread only (no -f): the write happens there, and no other thread's calls interleave
    proc = subprocess.run(["strace", "-e", "trace=openat,fsync,rename,renameat,renameat2",
                           "-o", str(log), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    fds: dict[str, str] = {}  # fd -> what it opened
    events = []
    for call in calls:
        opened = re.match(r'openat\(\w+, "([^"]+)", [^)]*\) = (\d+)', call)
        if opened:
            fds[opened.group(2)] = opened.group(1)
        synced = re.match(r"fsync\((\d+)\)\s+= 0", call)
        if synced:
            events.append(("fsync", fds.get(synced.group(1), "?")))
        if re.match(r"rename(at2?)?\(.*last\.keras.*= 0", call):
            events.append(("rename", "last.keras"))
    rename = events.index(("rename", "last.keras"))
    assert any(kind == "fsync" and ".tmp-" in what and what.endswith("-last.keras")
               for kind, what in events[:rename]), events
    assert ("fsync", str(tmp_path)) in events[rename + 1:], events
    assert target.read_text() == "weights"


def test_a_too_long_name_is_the_file_systems_error_in_one_line(tmp_path: Path) -> None:
    """ENAMETOOLONG surfaces (the clean-up of the temporary name, longer still, used to raise
    its own OSError over the DataError); a long name that fits is written (its temporary name
    is shortened, keeping the suffixes)."""
    long = tmp_path / ("a" * 300 + ".nii.gz")
    with pytest.raises(DataError) as info:
        atomic_write_text(long, "x")
    assert str(info.value) == f"cannot write {long} (File name too long)"
    fits = tmp_path / ("b" * 240 + ".nii.gz")
    seen: list[Path] = []
    atomic_write(fits, lambda tmp: (seen.append(tmp), tmp.write_text("y")))
    assert fits.read_text() == "y" and seen[0].name.endswith("b.nii.gz")
    assert len(seen[0].name.encode()) == 255
    assert list(tmp_path.iterdir()) == [fits]
