"""The files ``evaluate`` writes, shared by its layout strategies (:mod:`.volumes`, :mod:`.slices`).

Names beside the per-case CSV ``output`` (``<stem>`` = its name without the suffix): the shard
suffix, ``<stem>_summary.csv`` / ``<stem>_slices.csv`` / ``<stem>.json``; the folder is checked
for writing before anything is scored; every file is written under a temporary name, then renamed
(:func:`braintseg.atomic.atomic_write_text`).  CSV text has ``\\n`` line ends and the union of the
rows' keys (first-seen order) as its header; JSON text turns NaN into null where asked.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from braintseg.atomic import atomic_write_text
from braintseg.errors import DataError
from braintseg.training.distribute import shard_suffix

__all__ = ["check_writable", "csv_text", "file_paths", "nan_to_none", "shard_output", "stem",
           "write_texts"]


def stem(output: Path) -> str:
    """``output``'s name without its suffix (the whole name when it has none)."""
    return output.name[: -len(output.suffix)] if output.suffix else output.name


def shard_output(output: Path, shard: tuple[int, int] | None) -> Path:
    """``<stem>.shard-K-of-N<suffix>`` beside ``output`` for shard ``(K, N)``; ``output`` for
    None."""
    return output.with_name(f"{stem(output)}{shard_suffix(shard)}{output.suffix}")


def file_paths(output: Path) -> dict[str, str]:
    """``{"per_case", "summary_csv", "json"}``: ``output`` and the files written beside it."""
    name = stem(output)
    return {"per_case": str(output), "summary_csv": str(output.with_name(f"{name}_summary.csv")),
            "json": str(output.with_name(f"{name}.json"))}


def check_writable(output: Path) -> None:
    """Create ``output``'s folder; DataError when it cannot be made or written, or ``output`` is
    a folder."""
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {folder} for {output.name}: "
                        f"{exc.strerror}") from None
    if output.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"cannot write metrics to {output}; expected a writable file path")


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV text (header: every row's keys in first-seen order; empty for no rows)."""
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def nan_to_none(value: Any) -> Any:
    """``value`` with every float NaN (in nested dicts and lists too) replaced by None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def write_texts(files: dict[Path, str]) -> None:
    """Write each ``path: text`` atomically, in the given order."""
    for path, text in files.items():
        atomic_write_text(path, text)
