"""Predict's output folder and its tables, each written atomically (temporary name beside the
target, then rename): the folder's checks and clean-up after a failure, ``predictions.csv``
text and ``predict_config.yaml``.  The predictions themselves are written by their source
(:meth:`braintseg.sources.base.Source.write_prediction`).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from braintseg.atomic import atomic_write_text
from braintseg.errors import DataError


def prepare_out_dir(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` if needed and check that files can be created in it.

    Returns:
        The folders this call created, outermost first (empty when ``out_dir`` existed), for
        :func:`remove_unused_out_dir`.

    Raises:
        DataError: it is a file, cannot be created, or is not writable (names the folder);
            nothing is left behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} is a file; expected a folder for the predictions")
    created = [p for p in (*reversed(out_dir.parents), out_dir) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        remove_unused_out_dir(out_dir, created)
        raise DataError(f"output folder {out_dir} is not writable ({exc.strerror})") from None
    return created


def remove_unused_out_dir(out_dir: Path, created: list[Path], own: tuple[str, ...] = ()) -> None:
    """After a failure: remove the folders in ``created`` if nothing but files named ``own``
    (written by this predict, e.g. its config) is in ``out_dir``; those files go with them."""
    out_dir = Path(out_dir)
    if not created or not out_dir.is_dir():
        return
    entries = list(out_dir.iterdir())
    if any(p.name not in own for p in entries):
        return
    for path in entries:
        path.unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_text(Path(path), text)


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A CSV table of ``rows`` with the header ``columns`` (``\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """A YAML mapping (``yaml.safe_dump``), atomically."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False))
