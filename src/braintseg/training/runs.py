"""The run folder written by ``braintseg train`` (read by ``predict``).

Layout of ``RUN_DIR``::

    config.yaml      resolved config (braintseg.config.dump_config)
    run.json         store path, fold, view, input shape (H, W, C), channels, crop box,
                     store schema version, training/validation case ids
    history.csv      one row per finished epoch, epochs numbered from 1 (appended on resume)
    tensorboard/     TensorBoard logs
    model.keras      best model by train.monitor (Keras native format)
    last.keras       THE checkpoint: weights, optimizer state and the resume state inside
                     (see braintseg.training.checkpoint); its rename is the commit
    checkpoint/state.json   a copy of the resume state in last.keras (for people and scripts)
    DONE             written when all epochs finished

Every file is written under a temporary name beside the target (``.tmp-<pid>-<hex>-<name>``) and
renamed on success; a run's start removes the temporaries of killed runs.  A folder "holds a run"
(:meth:`RunPaths.started`) only once it holds a checkpoint or ``DONE``: a folder left by a run
stopped before its first checkpoint is simply started again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braintseg.atomic import atomic_write_text, temporary_name
from braintseg.config import Config, to_dict
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

#: config sections and run.json keys that must match for ``--resume``
RESUME_SECTIONS: tuple[str, ...] = ("data", "model")
RESUME_RUN_KEYS: tuple[str, ...] = ("store", "fold", "view", "input_shape")


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def best(self) -> Path:
        return self.root / "model.keras"

    @property
    def last(self) -> Path:
        return self.root / "last.keras"

    @property
    def state(self) -> Path:
        return self.root / "checkpoint" / "state.json"

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    def artefacts(self) -> list[Path]:
        """Everything a run writes (what ``--overwrite`` removes)."""
        return [self.config, self.run_json, self.history, self.tensorboard, self.best,
                self.last, self.state.parent, self.done]

    def started(self) -> bool:
        """True when the folder holds a run worth keeping: a checkpoint or ``DONE``."""
        return self.last.exists() or self.done.exists()

    def has_artefacts(self) -> bool:
        """True when the folder holds any file a run writes (a started run or its beginning)."""
        return any(p.exists() for p in self.artefacts())

    def target_names(self) -> dict[Path, set[str]]:
        """The file names a run writes, by folder (whose stale temporaries a start removes)."""
        return {self.root: {p.name for p in self.artefacts() if p != self.state.parent}
                | {"write-probe"},
                self.state.parent: {self.state.name}}

    def clear(self) -> None:
        """Remove the run's artefacts (and nothing else in the folder)."""
        for p in self.artefacts():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


#: the file ``train`` holds an exclusive flock on while it runs (released by the OS at its death)
LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def lock_run(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.train.lock`` while the block runs (creates ``root``).

    The lock is an ``fcntl.flock`` on an open file: the OS releases it when the process ends in
    any way (kill -9 included), so a stale lock file never blocks a later run.  A folder this
    call created is removed again when the block leaves nothing in it but the lock file.  File
    systems without flock (``ENOLCK``/``ENOSYS``/``EOPNOTSUPP``) run unlocked, logged.

    Raises:
        DataError: another process holds the lock (names the folder and that process's pid).
    """
    root = Path(root)
    created = [p for p in (*reversed(root.parents), root) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataError(f"run folder {root} is in use by another braintseg train (pid "
                            f"{holder}); wait for it to end or choose another folder") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise DataError(f"cannot lock run folder {root} ({exc.strerror})") from None
            logger.warning("cannot lock %s (%s): a second train into it would not be refused",
                           lock, exc.strerror)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
        if created and [p.name for p in root.iterdir()] == [LOCK_NAME]:
            lock.unlink(missing_ok=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def run_folder(path: Path) -> Path:
    """The run folder meant by ``path``: the folder itself, or the folder of a ``model.keras``
    given instead (``-m run/model.keras``).

    Raises:
        DataError: ``path`` is another file (e.g. ``last.keras``: predict always uses the run's
            best model, ``model.keras``).
    """
    path = Path(path)
    if not path.is_file():
        return path
    if path.name == "model.keras":
        return path.parent
    raise DataError(f"run {path} is a file; expected a run folder written by `braintseg train` "
                    "or its model.keras")


def check_writable(folder: Path) -> None:
    """Check that files can be created in ``folder`` (and its ``checkpoint/``), or in the
    nearest existing folder above it when it does not exist yet.

    Both the permission bits (``os.access``) and a real file (created and removed at once) are
    tried: a read-only mount passes the first and fails the second, and root passes the first
    whatever the bits say.

    Raises:
        DataError: one line naming the folder that is not writable (or the file in the way).
    """
    folder = Path(folder)
    probe_in = [folder, folder / "checkpoint"] if folder.is_dir() else []
    if not probe_in:
        parent = folder
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise DataError(f"cannot create run folder {folder}: {parent} is a file, not a "
                            "folder")
        probe_in = [parent]
    for where in probe_in:
        if not where.is_dir():
            continue
        reason = None if os.access(where, os.W_OK | os.X_OK) else "permission denied"
        if reason is None:
            probe = temporary_name(where / "write-probe")
            try:
                probe.write_bytes(b"")
            except OSError as exc:
                reason = exc.strerror or str(exc)
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink(missing_ok=True)
        if reason is not None:
            what = "run folder" if where == folder else (
                "checkpoint folder" if where.parent == folder else "folder")
            raise DataError(f"{what} {where} is not writable ({reason}); training writes its "
                            f"run into {folder}")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary name beside ``path``, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; DataError naming the file if missing or invalid."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object; received {type(data).__name__}")
    return data


def check_same_split(saved_run: dict[str, Any], run: dict[str, Any], root: Path) -> None:
    """Refuse a resume on a store whose folds differ from those the run started with (a
    ``prepare --overwrite`` with another seed: the old validation patients would be trained on).

    Runs that recorded the folds' digest compare it; older ones their case lists.

    Raises:
        DataError: one line naming the store and the run folder.
    """
    if "folds_sha256" in saved_run:
        same = saved_run["folds_sha256"] == run.get("folds_sha256")
    else:
        same = all(saved_run.get(k) in (None, run.get(k)) for k in ("train_cases", "val_cases"))
    if not same:
        raise DataError(f"--resume: store {run.get('store')} has other folds than when run "
                        f"{root} started (re-prepared with another split?); resuming would "
                        "train on its validation patients: start a new run folder or use "
                        "--overwrite")


def resume_differences(
    saved_cfg: Config, cfg: Config, saved_run: dict[str, Any], run: dict[str, Any]
) -> list[str]:
    """Keys that differ between a saved run and a resume request (model/data config, store,
    fold, view, input shape), as ``"key: saved -> requested"`` strings."""
    diffs: list[str] = []
    old, new = to_dict(saved_cfg), to_dict(cfg)
    for section in RESUME_SECTIONS:
        for key in sorted(set(old[section]) | set(new[section])):
            a, b = old[section].get(key), new[section].get(key)
            if a != b:
                diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
    for key in RESUME_RUN_KEYS:
        if saved_run.get(key) != run.get(key):
            diffs.append(f"{key}: {saved_run.get(key)!r} -> {run.get(key)!r}")
    return diffs
