"""Ids that become file or folder names (case ids, LGG patient folders, figshare PIDs).

Readers check every such id once, where it enters (:func:`check_id`); writers build their
output paths with :func:`child` (defence in depth: a store written before the readers checked,
or a bug, still cannot make them write outside their output folder).
"""

from __future__ import annotations

from pathlib import Path

from braintseg.errors import DataError

EXPECTED = "a plain name without '/', '\\', '..', NUL or a leading '.'"


def unsafe(name: object) -> bool:
    """True when ``name`` cannot be used as one file or folder name inside another folder."""
    return (not isinstance(name, str) or not name or name.startswith(".") or "/" in name
            or "\\" in name or ".." in name or "\x00" in name)


def check_id(name: str, where: str, what: str = "id") -> str:
    """``name`` itself; DataError naming ``where`` (the file or folder it came from) otherwise."""
    if unsafe(name):
        raise DataError(f"{where}: {what} {name!r} is refused; expected {EXPECTED}")
    return name


def child(folder: Path, name: str) -> Path:
    """``folder / name`` for a writer; DataError when ``name`` would leave ``folder``."""
    if unsafe(name):
        raise DataError(f"refused to write {name!r} in {folder}: it would leave the folder; "
                        f"expected {EXPECTED}")
    return Path(folder) / name
