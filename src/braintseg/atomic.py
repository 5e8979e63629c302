"""Atomic file writes: a temporary name beside the target, then one rename.

Readers never see a half-written file, a failed write leaves nothing behind (the temporary file
is removed), and two writers of the same target never share a temporary name.

Temporary names carry the writer's pid (``.tmp-<pid>-<hex>-<name>``), so a later run can tell the
leftovers of a killed writer (:func:`remove_stale_temporaries`) from a live writer's file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from braintseg.errors import DataError

logger = logging.getLogger(__name__)
#: the longest file name (bytes) of common Linux file systems
NAME_MAX = 255
#: ``.tmp-<pid>-<hex>-<name>`` (atomic_write), ``.<name>.partial-<pid>-<hex>`` (store)
_TEMPORARY = re.compile(r"^\.(?:tmp-(?P<pid1>\d+)-[0-9a-f]{8}-(?P<name1>.+)"
                        r"|(?P<name2>.+)\.partial-(?P<pid2>\d+)-[0-9a-f]{8})$")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary path beside ``path``, then rename onto ``path``.

    The temporary name keeps ``path``'s suffixes (``.tmp-1a2b3c4d-model.keras``), so writers that
    look at the extension (Keras, nibabel) behave as for ``path``.

    Raises:
        DataError: the file cannot be written (names ``path`` and the system's reason).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        commit(tmp, path)
    except OSError as exc:
        raise DataError(f"cannot write {path} ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):  # never mask the error that got us here
            tmp.unlink(missing_ok=True)
    return path


def commit(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` durably: the data reach the disk before the rename (fsync of
    the file), and the rename before we return (fsync of the folder), so a node crash or power
    loss leaves the old file or the new one — never a renamed but empty one, which a rename
    without fsync can give on ext4/XFS after a crash."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where the file system cannot fsync a
    folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL/EBADF: file systems (and platforms) without folder fsync
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def temporary_name(path: Path) -> Path:
    """The hidden temporary path beside ``path`` that :func:`atomic_write` uses."""
    path = Path(path)
    prefix, name = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-", path.name
    room = NAME_MAX - len(prefix.encode())
    if len(name.encode()) > room:  # a long target name: keep its end (the suffixes) in room
        name = name.encode()[-room:].decode("utf-8", errors="ignore")
    return path.with_name(prefix + name)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, names: set[str] | None = None) -> list[Path]:
    """Remove the temporary files in ``folder`` (not below it) left by writers that no longer run.

    Args:
        folder: where the targets live.
        names: only temporaries of these target names (all braintseg temporaries when None).

    Returns:
        The removed paths (logged in one line). Files of live processes (this one included) and
        files that cannot be removed are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMPORARY.match(p.name)
        if not m:
            continue
        pid, name = int(m["pid1"] or m["pid2"]), m["name1"] or m["name2"]
        if (names is not None and name not in names) or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
    if removed:
        logger.info("removed %d stale temporary file(s) of killed runs in %s: %s", len(removed),
                    folder, ", ".join(p.name for p in removed))
    return removed
