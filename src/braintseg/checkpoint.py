"""Saving and restoring the resume state of a run (``last.keras`` + ``checkpoint/state.json``)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import keras

from braintseg.atomic import atomic_write, atomic_write_text
from braintseg.runs import RunPaths, write_json

logger = logging.getLogger(__name__)


def save_model(model: keras.Model, path: Path) -> None:
    """``model.save`` under a temporary ``.keras`` name beside ``path``, then rename."""
    atomic_write(path, model.save)


def save_checkpoint(model: keras.Model, paths: RunPaths, epochs_done: int,
                    best: float | None, seed: int) -> None:
    """``last.keras`` (weights + optimizer) then ``checkpoint/state.json``."""
    save_model(model, paths.last)
    write_json(paths.state, {"epochs_done": epochs_done, "best": best, "seed": seed,
                             "optimizer_iterations": int(model.optimizer.iterations.numpy()),
                             "rng": rng_state(model)})


def rng_state(model: keras.Model) -> list[list[int]]:
    """States of the model's random seed generators (noise, dropout), in variable order: Keras
    does not save them in ``.keras`` files, and an exact resume needs them."""
    return [[int(s) for s in keras.ops.convert_to_numpy(v).ravel()] for v in _seed_vars(model)]


def set_rng_state(model: keras.Model, state: list[list[int]]) -> None:
    """Restore what :func:`rng_state` returned (skipped if the layout differs)."""
    seeds = _seed_vars(model)
    if len(seeds) != len(state):
        logger.warning("checkpoint has %d seed states, model %d: not restored",
                       len(state), len(seeds))
        return
    for v, values in zip(seeds, state, strict=True):
        v.assign(keras.ops.reshape(keras.ops.convert_to_tensor(values, v.dtype), v.shape))


def _seed_vars(model: keras.Model) -> list[Any]:
    return [v for v in model.variables if "seed_generator" in v.path]


def trim_history(path: Path, epochs_done: int) -> None:
    """Drop rows of epochs the checkpoint does not contain (a kill between CSV and save)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    if len(keep) != len(rows):
        text = io.StringIO(newline="")
        csv.writer(text).writerows(keep)
        atomic_write_text(path, text.getvalue())
