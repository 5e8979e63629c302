"""``braintseg train``: one cross-validation fold, resumable, walltime-safe, crash-consistent.

:func:`run_train` installs the SIGTERM/SIGUSR1 handlers first, then checks everything that can
be checked without Keras (store, fold, view, shapes, the run folder and that it is writable),
and only then imports Keras (:mod:`braintseg.training.fit`), so a bad argument fails in well under a
second and a signal at any moment ends the run with :class:`~braintseg.errors.Interrupted`
(the CLI exits 75).

An epoch is recorded in ``history.csv`` and counted in the checkpoint only when it finished
(training and validation); a stop in the middle of an epoch saves the weights reached, and
``--resume`` runs that epoch again from its first batch.  The checkpoint is one file committed
by one rename (:mod:`.checkpoint`), so a kill at any instant leaves either the previous
or the new checkpoint, and ``--resume`` continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from braintseg import __version__
from braintseg.atomic import remove_stale_temporaries
from braintseg.config import Config, dump_config, load_config
from braintseg.data.folds import folds_digest
from braintseg.errors import ConfigError, DataError
from braintseg.stop import StopSignals
from braintseg.store.read import open_store
from braintseg.training import distribute
from braintseg.training.checkpoint import kill_point, load_state, repair_run
from braintseg.training.runs import (
    RunPaths,
    check_same_split,
    check_writable,
    lock_run,
    read_json,
    resume_differences,
    write_json,
)

logger = logging.getLogger(__name__)


def check_inputs(cfg: Config, store_path: Path, fold: int) -> dict[str, Any]:
    """Store, fold, view and shape checks (PyTables only, no Keras); returns run.json's content.

    Raises:
        DataError: store missing/invalid/unlabelled, fold out of range.
        ConfigError: slices not divisible by ``2**model.levels``.
    """
    store = open_store(store_path)
    try:
        if not store.has_labels:
            raise DataError(f"store {store_path} has cases without labels; training needs labels")
        train_ids, val_ids = store.fold_cases(fold)
        hw = list(store.slice_shape(cfg.train.view))  # slice stores: the only view is 'slice'
        binary = store.layout == "slices"  # 2D slice sets: labels 0/1 (binary, tumour_type)
        if binary != (cfg.model.output == "binary"):
            want = "binary" if binary else "classes or regions"
            raise ConfigError(f"store {store_path} holds {'0/1 slice' if binary else 'BraTS'} "
                              f"labels: set model.output: {want} "
                              f"(received {cfg.model.output!r})")
        factor = 2 ** cfg.model.levels
        if hw[0] % factor or hw[1] % factor:
            raise ConfigError(
                f"{cfg.train.view} slices of {store_path} are {hw[0]}x{hw[1]}; model.levels="
                f"{cfg.model.levels} needs both divisible by {factor} (adjust data.crop or "
                "levels)")
        run: dict[str, Any] = {}
        if binary:  # the share of tumour slices the head's prior is corrected for (predict)
            counts = [(len(store.tumour_slices(store.index_of(c), cfg.train.view)),
                       store.n_slices(store.index_of(c), cfg.train.view)) for c in train_ids]
            run["train_tumour_fraction"] = (sum(t for t, _ in counts)
                                            / max(1, sum(n for _, n in counts)))
        return {**run, "store": str(Path(store_path).resolve()), "fold": fold,
                "view": cfg.train.view,
                "layout": store.layout,
                "input_shape": [*hw, store.n_channels], "n_channels": store.n_channels,
                "crop_box": list(store.crop_box), "schema_version": store.schema_version,
                "train_cases": train_ids, "val_cases": val_ids,
                "folds_sha256": folds_digest(store.folds, store.holdout),
                "braintseg_version": __version__}
    finally:
        store.close()


def check_run_dir(paths: RunPaths, cfg: Config, run: dict[str, Any], resume: bool,
                  overwrite: bool) -> dict[str, Any] | None:
    """Check RUN_DIR against the flags (changes nothing); returns the resume state or None.

    A folder that holds no checkpoint (a run stopped before its first one) is not a started
    run: a plain rerun and ``--resume`` both start it again at epoch 1.

    Raises:
        ConfigError: ``--resume`` with ``--overwrite``; ``--resume`` with other model/data
            settings (names the keys).
        DataError: the folder holds a run and neither flag was given; ``--resume`` of a folder
            without any run; a damaged checkpoint; ``--resume`` on a store whose folds changed
            since the run started (its validation patients would be trained on).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; choose one")
    if overwrite:
        return None
    state = load_state(paths) if paths.root.is_dir() else None
    if resume:
        if state is None:
            if not paths.has_artefacts():
                raise DataError(f"{paths.root} holds no run to resume (no {paths.last.name}, "
                                f"{paths.config.name} or {paths.run_json.name}); check the "
                                "path or drop --resume")
            logger.info("%s holds no checkpoint yet: starting at epoch 1", paths.root)
            return None
        if paths.config.is_file() and paths.run_json.is_file():
            saved, saved_run = load_config(paths.config), read_json(paths.run_json)
            check_same_split(saved_run, run, paths.root)
            diffs = resume_differences(saved, cfg, saved_run, run)
            if diffs:
                raise ConfigError(f"--resume: {paths.root} was trained with other settings: "
                                  + "; ".join(diffs))
        return state
    if paths.started():
        what = "a finished run" if paths.done.exists() else "a started run"
        raise DataError(f"{paths.root} already holds {what}; use --resume to continue it "
                        "or --overwrite to start afresh")
    return None


def run_train(cfg: Config, store: Path, fold: int, run_dir: Path, *, resume: bool = False,
              overwrite: bool = False, launch: distribute.Launch | None = None) -> Path:
    """Train fold ``fold`` of ``store`` into ``run_dir``; return ``run_dir``.

    ``train.distribution`` and ``launch`` (several processes) spread the training over devices
    (:mod:`braintseg.training.distribute`); only process 0 writes ``run_dir``.

    Raises:
        DataError: store missing/invalid, fold out of range, RUN_DIR holds a run, RUN_DIR (or
            the folder it would be created in) is not writable.
        ConfigError: shape not divisible by ``2**model.levels``; ``--resume`` with other
            model/data settings (names the keys).
        Interrupted: SIGTERM/SIGUSR1 arrived; the checkpoint was saved first (if training had
            begun).
    """
    stop = StopSignals().install()
    try:
        with distribute.session(cfg, launch) as dist:
            stop.collective = dist.n_processes > 1
            paths = RunPaths(dist.local_run_dir(Path(run_dir)))
            _run(cfg, Path(store), fold, paths, resume, overwrite, stop, dist)
        return Path(run_dir)
    finally:
        stop.restore()


def _run(cfg: Config, store: Path, fold: int, paths: RunPaths, resume: bool, overwrite: bool,
         stop: StopSignals, dist: distribute.Session) -> Path:
    run = check_inputs(cfg, store, fold)
    check_writable(paths.root)
    with lock_run(paths.root):  # one trainer a folder (process 0's is the real one)
        return _run_locked(cfg, store, fold, paths, resume, overwrite, stop, dist, run)


def _run_locked(cfg: Config, store: Path, fold: int, paths: RunPaths, resume: bool,
                overwrite: bool, stop: StopSignals, dist: distribute.Session,
                run: dict[str, Any]) -> Path:
    state = check_run_dir(paths, cfg, run, resume, overwrite)
    dist.agree("store, fold and checkpoint", [run, state])
    for folder, names in paths.target_names().items():
        remove_stale_temporaries(folder, names)
    done = int(state["epochs_done"]) if state else 0
    if state is not None and done >= cfg.train.epochs:  # e.g. stopped after its last epoch
        logger.info("%s already finished %d epochs", paths.root, done)
        repair_run(paths, state)
        paths.done.write_text("finished\n")
        return paths.root
    if state is None:  # a fresh run, one stopped before its first checkpoint, --overwrite
        paths.clear()
        _write_run_files(paths, cfg, run)
    kill_point("startup")
    stop.check("start-up", paths.last if state is not None else None)
    _fit(cfg, store, run, paths, state, stop, dist)
    paths.done.write_text("finished\n")
    return paths.root


def _write_run_files(paths: RunPaths, cfg: Config, run: dict[str, Any]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.done.unlink(missing_ok=True)
    dump_config(cfg, paths.config)
    write_json(paths.run_json, run)


def _fit(cfg: Config, store: Path, run: dict[str, Any], paths: RunPaths,
         state: dict[str, Any] | None, stop: StopSignals, dist: distribute.Session) -> None:
    """Import Keras, build (a resume: load and verify the checkpoint, then repair the folder and
    rewrite its config; nothing in the folder changes before the checkpoint is verified), fit."""
    import keras

    from braintseg.training import fit
    from braintseg.training.augment import install_device_affine
    from braintseg.training.generator import release_store

    checkpoint = paths.last if state is not None else None
    stop.check("start-up (importing Keras)", checkpoint)
    keras.utils.set_random_seed(cfg.train.seed)
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(
        "float32" if cfg.train.mixed_precision == "off" else cfg.train.mixed_precision)
    datasets: tuple[Any, ...] = ()
    try:
        train, val = datasets = fit.datasets(cfg, store, run, dist)
        model = fit.build(cfg, run, len(train), state, paths, dist)
        if train.augment is not None and train.augment.geometric:  # rotation/zoom on device
            install_device_affine(model, val.batch(0, 0))
        if state is not None:
            repair_run(paths, state)
            _write_run_files(paths, cfg, run)
        stop.check("start-up (building the model)", checkpoint)
        fit.fit(model, cfg, paths, train, val, stop, state, dist)
    finally:
        for ds in datasets:
            ds.close()
        release_store(store)
        keras.mixed_precision.set_global_policy(policy)
