"""Atomic file writes: a temporary name beside the target, then one rename.

Readers never see a half-written file, a failed write leaves nothing behind (the temporary file
is removed), and two writers of the same target never share a temporary name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from braintseg.errors import DataError


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary path beside ``path``, then rename onto ``path``.

    The temporary name keeps ``path``'s suffixes (``.tmp-1a2b3c4d-model.keras``), so writers that
    look at the extension (Keras, nibabel) behave as for ``path``.

    Raises:
        DataError: the file cannot be written (names ``path`` and the system's reason).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"cannot write {path} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
