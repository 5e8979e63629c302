"""What every ``prepare`` layout shares about its output: the store path checks, its folder,
the input fingerprint that lets a rerun keep a finished store, and the files beside the store.

A store ``<stem>.h5`` has beside it ``<stem>.folds.json`` (labelled stores), ``<stem>.config.yaml``
and, with skipped cases, ``<stem>.skipped.txt``; their texts are also kept inside the store's
header (``sidecars``) so a rerun that keeps the store rewrites them.

Test hook: ``BRAINTSEG_PREPARE_KILL_AT=<point>`` makes the process SIGKILL itself at that point
(:data:`KILL_POINTS`, see :func:`kill_point`), so crash tests can stop it at exact places.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from braintseg.atomic import atomic_write_text, remove_stale_temporaries
from braintseg.config import Config, to_dict
from braintseg.data.folds import Folds
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

Failure = tuple[str, str]  # (case id, message)
#: the files written beside the store, in the order they are written (the store comes last)
SIDECARS = (".skipped.txt", ".config.yaml", ".folds.json")
#: where ``BRAINTSEG_PREPARE_KILL_AT`` may stop the process (crash tests)
KILL_POINTS = ("scanned", "appended", "closed", "sidecars", "renamed")


def kill_point(name: str) -> None:
    """Crash-test hook: SIGKILL this process at ``name`` when BRAINTSEG_PREPARE_KILL_AT says so."""
    if os.environ.get("BRAINTSEG_PREPARE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def sidecar(store: Path, suffix: str) -> Path:
    """``<store stem><suffix>`` beside the store, e.g. ``sidecar(p, ".skipped.txt")``."""
    return store.with_name(f"{store.stem}{suffix}")


def sidecar_texts(cfg: Config, folds: Folds | None, failures: Iterable[Failure]
                  ) -> dict[str, str | None]:
    """Suffix → text of each file beside the store (None: no such file for this store)."""
    lines = [f"{cid}\t{msg}" for cid, msg in failures]
    return {
        ".skipped.txt": ("# case_id<TAB>reason: cases skipped by braintseg prepare "
                         "--skip-invalid\n" + "\n".join(lines) + "\n") if lines else None,
        ".config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
        ".folds.json": folds.to_json() if folds is not None else None,
    }


def write_sidecars(output: Path, texts: dict[str, str | None]) -> None:
    """Write (atomically) or remove each file beside the store, in :data:`SIDECARS` order."""
    for suffix in SIDECARS:
        path, text = sidecar(output, suffix), texts.get(suffix)
        if text is None:
            try:
                path.unlink(missing_ok=True)  # e.g. an --overwrite'n store's old folds
            except OSError as exc:
                raise DataError(f"cannot remove {path} ({exc.strerror})") from None
        else:
            atomic_write_text(path, text)


def input_fingerprint(cfg: Config, root: Path, files: Iterable[tuple[str, str, Path]],
                      problems: Sequence[Failure], options: dict[str, Any],
                      extra: Sequence[Path] = ()) -> str:
    """SHA-256 over the config, the options, and every input file's path, size and mtime.

    ``files``: ``(case id, key, path)`` of every file a layout reads per case (e.g. ``flair``,
    ``seg``; ``image <slice>``, ``mask <slice>``); ``extra``: other files read, such as a patient
    table or a folds file (a missing file counts as such).
    """
    entries = []
    for cid, key, p in [*files, *(("", "extra", Path(e)) for e in extra)]:
        try:
            st = os.stat(p)
            entries.append([cid, key, str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            entries.append([cid, key, str(p), None, None])
    text = json.dumps({"config": to_dict(cfg), "root": str(root.resolve()), "options": options,
                       "files": entries, "problems": [list(p) for p in problems]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def kept_store(output: Path, fingerprint: str) -> bool:
    """True when ``output`` is a complete store made from the same input and config (its
    files beside it are rewritten from the copies inside it)."""
    from braintseg.store.read import open_store

    try:
        with open_store(output) as store:
            header = store.header
    except DataError:
        return False
    if header.get("input_fingerprint") != fingerprint:
        return False
    write_sidecars(output, header.get("sidecars", {}))
    logger.info("%s is already prepared from these input files with this config; kept it "
                "(use --overwrite to prepare it again)", output)
    return True


def check_output(output: Path) -> None:
    """Before any work: ``output`` can be created (no file where a folder must be, the nearest
    existing folder writable: a probe file), and stale temporaries of killed runs are removed.

    Raises:
        DataError: naming the path at fault and the system's reason.
    """
    if output.is_dir():
        raise DataError(f"output {output} is a folder; expected a store file path like store.h5")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        if os.path.lexists(folder):  # a dangling symlink
            raise DataError(f"cannot create {output}: {folder} is a broken link")
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"cannot create {output}: {folder} is a file, not a folder")
    probe = folder / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{output.name}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"output folder {folder} is not writable ({exc.strerror})") from None
    if folder == output.parent:
        remove_stale_temporaries(folder, {output.name, *(sidecar(output, s).name
                                                          for s in SIDECARS)})


@contextlib.contextmanager
def output_folder(output: Path) -> Iterator[None]:
    """Create the store's folder; on failure remove the folders created here (when empty)."""
    missing = [p for p in output.parents if not p.exists()]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {output.parent} "
                        f"({exc.strerror})") from None
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
