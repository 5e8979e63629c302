"""The resume checkpoint of a run: one file, ``last.keras``, committed by one rename.

``last.keras`` holds the weights, the optimizer state (its iteration count included) AND the
resume state (``braintseg_state.json``, an extra entry in the ``.keras`` zip that Keras ignores).
It is written under a temporary name (``.tmp-<pid>-<hex>-last.keras``) and renamed onto
``last.keras``: the rename is the commit, so at every instant ``last.keras`` is one complete
checkpoint whose model and state agree.  A save at an epoch end runs these steps; a kill
between two of them leaves::

    1 model.save(tmp), state added to tmp    a stale temporary (removed by the next start);
                                             the previous checkpoint is intact
    2 os.replace(tmp, last.keras)            COMMIT
    3 new best: copy last.keras -> model.keras (temporary name + rename)
                                             model.keras one best behind: repaired on start
                                             (:func:`repair_run`: the state names the best)
    4 checkpoint/state.json                  a stale copy: rewritten on start

``checkpoint/state.json`` is a copy of the state for people and scripts; ``last.keras`` is the
authority.  Epochs are numbered from 1 everywhere (logs, ``history.csv``, the state).

The state (JSON object): ``epochs_done`` (finished epochs; the last finished epoch's number),
``optimizer_iterations`` (steps in the saved weights), ``epoch_end_iterations`` (steps when epoch
``epochs_done`` ended; smaller for a save in the middle of an epoch), ``steps_per_epoch`` (or
null when it changed between resumes), ``skipped_iterations`` (steps of interrupted epochs that
are run again on resume), ``best``/``best_epoch``/``best_iterations`` (the monitored value of
``model.keras``, its epoch and step count), ``monitor``, ``seed``, ``rng`` (seed generator
states), ``plateau`` (ReduceLROnPlateau's counters, with that schedule), ``format`` (2).

Test hook (:func:`kill_point`): ``BRAINTSEG_TEST_KILL_AT=<point>:<n>`` makes the process SIGKILL
itself the n-th time it reaches ``<point>`` (:data:`KILL_POINTS`); crash tests use it.

Only the ``save_*``/``*rng*`` functions import Keras (inside the function).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from braintseg.atomic import atomic_write, atomic_write_text
from braintseg.errors import DataError
from braintseg.training.runs import RunPaths, read_json, write_json

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

STATE_ENTRY = "braintseg_state.json"
STATE_FORMAT = 2
KILL_ENV = "BRAINTSEG_TEST_KILL_AT"
#: where :func:`kill_point` can stop the process (in the order a run reaches them)
KILL_POINTS = ("startup", "batch", "epoch-end", "save-model", "save-state", "committed",
               "best-copied", "saved")
_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``BRAINTSEG_TEST_KILL_AT`` is ``name:n`` and this is the
    n-th time (default 1) the process reaches ``name``.  A no-op otherwise (one dict lookup)."""
    spec = os.environ.get(KILL_ENV)
    if not spec or spec.partition(":")[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- reading (no Keras)


#: the resume state's integer counters (checked on load: int() of anything else would raise)
COUNTERS = ("optimizer_iterations", "epoch_end_iterations", "steps_per_epoch",
            "skipped_iterations", "best_iterations", "best_epoch")


def read_state(path: Path) -> dict[str, Any] | None:
    """The state inside a ``.keras`` file, or None when it has none (a file of an older version).

    Raises:
        DataError: the file is not a readable zip / its state is not JSON (names the file).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if STATE_ENTRY not in zf.namelist():
                return None
            state = json.loads(zf.read(STATE_ENTRY))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"checkpoint {path} is damaged ({exc}); start afresh with "
                        "--overwrite") from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {path}: {STATE_ENTRY} is not a JSON object")
    return state


def load_state(paths: RunPaths) -> dict[str, Any] | None:
    """The resume state of a run folder, or None when it holds no checkpoint (no ``last.keras``).

    A ``last.keras`` of an older braintseg without a state inside is paired with
    ``checkpoint/state.json`` (the iteration check on resume catches a mismatch).
    """
    if not paths.last.is_file():
        return None
    state = read_state(paths.last)
    if state is None:
        if not paths.state.is_file():
            raise DataError(f"{paths.last} has no resume state and {paths.state} is missing; "
                            "start afresh with --overwrite")
        state = read_json(paths.state)
    if not isinstance(state.get("epochs_done"), int):
        raise DataError(f"checkpoint {paths.last}: state has no integer epochs_done")
    for key in COUNTERS:
        value = state.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise DataError(f"checkpoint {paths.last}: state key {key} is {value!r}; expected "
                            "an integer (start afresh with --overwrite)")
    return state


def describe(paths: RunPaths) -> str:
    """One phrase about the run's checkpoint (for the Ctrl-C message); never raises."""
    try:
        state = load_state(paths)
    except Exception:  # noqa: BLE001 - a description must not fail
        return f"the checkpoint in {paths.root} could not be read"
    if state is None:
        return f"no checkpoint yet in {paths.root} (training starts again at epoch 1)"
    return (f"checkpoint {paths.last} holds {state['epochs_done']} finished epoch(s) "
            f"({state.get('optimizer_iterations', '?')} steps)")


def verify(state: dict[str, Any], iterations: int, path: Path) -> None:
    """Check the optimizer step count of loaded weights against the state.

    Args:
        state: the checkpoint state (:func:`load_state`).
        iterations: ``model.optimizer.iterations`` after loading ``path``.
        path: the checkpoint (for the message).

    Raises:
        DataError: the counts disagree: the weights are not those the state describes.
    """
    recorded = state.get("optimizer_iterations")
    if recorded is not None and int(recorded) != iterations:
        raise DataError(
            f"checkpoint {path} is inconsistent: its weights have {iterations} optimizer steps, "
            f"its state records {recorded} after {state['epochs_done']} epochs; refusing to "
            "resume (start afresh with --overwrite)")
    steps, end = state.get("steps_per_epoch"), state.get("epoch_end_iterations")
    if steps and end is not None:
        expected = state["epochs_done"] * steps + state.get("skipped_iterations", 0)
        if end != expected or not end <= iterations < end + steps:
            raise DataError(
                f"checkpoint {path} is inconsistent: {state['epochs_done']} epochs x {steps} "
                f"steps (+{state.get('skipped_iterations', 0)} of interrupted epochs) = "
                f"{expected} steps, but the state records {end} at the last epoch end and "
                f"the weights have {iterations}; refusing to resume (start afresh with "
                "--overwrite)")


def repair_run(paths: RunPaths, state: dict[str, Any]) -> None:
    """Finish what a kill after the commit left undone (steps 3-4 of a save) and drop the
    ``history.csv`` rows of epochs the checkpoint does not hold.

    ``model.keras`` is copied from ``last.keras`` when the checkpoint is the best model and
    ``model.keras`` is missing or holds another step count; ``checkpoint/state.json`` is
    rewritten when it differs from the state in ``last.keras``.
    """
    best_it = state.get("best_iterations")
    if best_it is not None and best_it == state.get("optimizer_iterations"):
        current = _iterations_of(paths.best)
        if current != best_it:
            logger.info("%s is behind its checkpoint (a save was interrupted): copying %s",
                        paths.best, paths.last.name)
            atomic_write(paths.best, lambda tmp: shutil.copyfile(paths.last, tmp))
    if "format" in state:
        try:
            mirror = read_json(paths.state) if paths.state.is_file() else None
        except DataError:
            mirror = None
        if mirror != state:
            write_json(paths.state, state)
    trim_history(paths.history, int(state["epochs_done"]))


def _iterations_of(path: Path) -> int | None:
    try:
        state = read_state(path) if path.is_file() else None
    except DataError:
        return None
    return None if state is None else state.get("optimizer_iterations")


# --------------------------------------------------------------------------- saving (Keras)


def save_checkpoint(model: keras.Model, paths: RunPaths, state: dict[str, Any],
                    new_best: bool) -> None:
    """Steps 1-4 of the module docstring: ``last.keras`` with ``state`` inside (the commit),
    then ``model.keras`` when ``new_best``, then the ``checkpoint/state.json`` copy.

    ``state`` gets ``optimizer_iterations``, ``rng`` and ``format`` filled in here.
    """
    state.update(optimizer_iterations=int(model.optimizer.iterations.numpy()),
                 rng=rng_state(model), format=STATE_FORMAT)
    text = json.dumps(state, indent=2)

    def write(tmp: Path) -> None:
        model.save(tmp)
        kill_point("save-model")
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(STATE_ENTRY, text)
        kill_point("save-state")

    atomic_write(paths.last, write)
    kill_point("committed")
    if new_best:
        atomic_write(paths.best, lambda tmp: shutil.copyfile(paths.last, tmp))
    kill_point("best-copied")
    write_json(paths.state, json.loads(text))
    kill_point("saved")


def rng_state(model: keras.Model) -> list[list[int]]:
    """States of the model's random seed generators (noise, dropout), in variable order: Keras
    does not save them in ``.keras`` files, and an exact resume needs them."""
    import keras

    return [[int(s) for s in keras.ops.convert_to_numpy(v).ravel()] for v in _seed_vars(model)]


def set_rng_state(model: keras.Model, state: list[list[int]]) -> None:
    """Restore what :func:`rng_state` returned (skipped if the layout differs)."""
    import keras

    seeds = _seed_vars(model)
    if len(seeds) != len(state):
        logger.warning("checkpoint has %d seed states, model %d: not restored",
                       len(state), len(seeds))
        return
    for v, values in zip(seeds, state, strict=True):
        v.assign(keras.ops.reshape(keras.ops.convert_to_tensor(values, v.dtype), v.shape))


def _seed_vars(model: keras.Model) -> list[Any]:
    return [v for v in model.variables if "seed_generator" in v.path]


# --------------------------------------------------------------------------- history.csv


def trim_history(path: Path, epochs_done: int) -> None:
    """Keep the rows of epochs ``1..epochs_done`` (the checkpoint's); drop later rows (a kill
    between the CSV row and the commit) and torn rows (a kill while a row was written).

    A ``history.csv`` of an older braintseg (epochs from 0) is renumbered from 1.  With nothing
    left the file is removed, so the next run writes a fresh header.
    """
    if not path.is_file():
        return
    original = path.read_text()
    text = original if original.endswith("\n") else original[: original.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        path.unlink()
        return
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    col = header.index("epoch") if "epoch" in header else 0
    shift = 1 if body and body[0][col] == "0" else 0
    keep = []
    for r in body:
        try:
            epoch = int(r[col]) + shift
        except ValueError:
            continue
        if 1 <= epoch <= epochs_done:
            keep.append([*r[:col], str(epoch), *r[col + 1:]])
    if not keep:
        path.unlink()
        return
    if [header, *keep] != rows or text != original:
        out = io.StringIO(newline="")
        csv.writer(out).writerows([header, *keep])
        atomic_write_text(path, out.getvalue())
