"""``braintseg train``: one cross-validation fold, resumable, walltime-safe.

On SIGTERM/SIGUSR1 the current training step finishes, ``last.keras`` (with the optimizer state)
and ``checkpoint/state.json`` are saved and :class:`~braintseg.errors.Interrupted` is raised (the
CLI exits 75).  An epoch is recorded in ``history.csv`` and counted in the state only when it
finished (training and validation), so ``--resume`` restarts an interrupted epoch from its first
batch with the weights reached so far: no epoch is repeated or missing in the history.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import keras

from braintseg import __version__
from braintseg.callbacks import logging_callbacks
from braintseg.checkpoint import save_checkpoint, save_model, set_rng_state, trim_history
from braintseg.config import Config, dump_config, load_config
from braintseg.data.augment import Augmenter, install_device_affine
from braintseg.data.generator import SliceDataset, release_store
from braintseg.data.preprocess import view_axis
from braintseg.data.store import SliceStore, open_store
from braintseg.errors import ConfigError, DataError, Interrupted
from braintseg.runs import RunPaths, read_json, resume_differences, write_json

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _StopRequested(Exception):  # noqa: N818 - internal control flow
    """Raised from a callback after the step during which a signal arrived; ``saved`` when the
    checkpoint of the epoch that just ended is already written."""

    def __init__(self, saved: bool = False) -> None:
        super().__init__()
        self.saved = saved


class _Guard(keras.callbacks.Callback):
    """Catches SIGTERM/SIGUSR1 (a flag) and stops after the current training step.

    The flag is checked before each batch, not after: a per-batch ``*_end`` hook would turn off
    Keras' asynchronous callback dispatch and make every step wait for the device (JAX, torch).
    """

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("received %s: stopping after this step", signal.Signals(signum).name)
        self.signum = signum

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.signum is not None:
            raise _StopRequested


class _Checkpoints(keras.callbacks.Callback):
    """After each epoch: best model by ``monitor``, ``last.keras`` and the resume state."""

    def __init__(self, paths: RunPaths, monitor: str, best: float | None, seed: int,
                 guard: _Guard) -> None:
        super().__init__()
        self.paths, self.monitor, self.best, self.seed, self.guard = (
            paths, monitor, best, seed, guard)
        self.higher = monitor != "val_loss"

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and (self.best is None or (
                value > self.best if self.higher else value < self.best)):
            self.best = float(value)
            save_model(self.model, self.paths.best)
            logger.info("epoch %d: %s %.4f, saved %s", epoch + 1, self.monitor, value,
                        self.paths.best)
        save_checkpoint(self.model, self.paths, epoch + 1, self.best, self.seed)
        if self.guard.signum is not None:
            raise _StopRequested(saved=True)


def _optimizer(cfg: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    t = cfg.train
    lr: Any = t.learning_rate
    if t.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, t.epochs * steps_per_epoch)
    wd = t.weight_decay or None
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=t.momentum, weight_decay=wd)
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)


def _check_inputs(cfg: Config, store_path: Path, fold: int) -> tuple[SliceStore, dict[str, Any]]:
    """Store, fold, view and shape checks; returns the store and the run.json content."""
    store = open_store(store_path)
    if not store.has_labels:
        raise DataError(f"store {store_path} has cases without labels; training needs labels")
    train_ids, val_ids = store.fold_cases(fold)
    axis = view_axis(cfg.train.view)
    hw = [s for a, s in enumerate(store.volume_shape) if a != axis]
    factor = 2 ** cfg.model.levels
    if hw[0] % factor or hw[1] % factor:
        raise ConfigError(
            f"{cfg.train.view} slices of {store_path} are {hw[0]}x{hw[1]}; model.levels="
            f"{cfg.model.levels} needs both divisible by {factor} (adjust data.crop or levels)")
    run = {"store": str(Path(store_path).resolve()), "fold": fold, "view": cfg.train.view,
           "input_shape": [*hw, store.n_channels], "n_channels": store.n_channels,
           "crop_box": list(store.crop_box), "schema_version": store.schema_version,
           "train_cases": train_ids, "val_cases": val_ids, "braintseg_version": __version__}
    return store, run


def _prepare_run_dir(paths: RunPaths, cfg: Config, run: dict[str, Any], resume: bool,
                     overwrite: bool) -> dict[str, Any] | None:
    """Check RUN_DIR against the flags; returns the resume state (None for a fresh run)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; choose one")
    if resume:
        if not paths.state.is_file() or not paths.last.is_file():
            raise DataError(f"{paths.root} holds no checkpoint to resume "
                            f"(expected {paths.last.name} and {paths.state})")
        saved = load_config(paths.config)
        diffs = resume_differences(saved, cfg, read_json(paths.run_json), run)
        if diffs:
            raise ConfigError(f"--resume: {paths.root} was trained with other settings: "
                              + "; ".join(diffs))
        return read_json(paths.state)
    if paths.started():
        what = "a finished run" if paths.done.exists() else "a started run"
        if not overwrite:
            raise DataError(f"{paths.root} already holds {what}; use --resume to continue it "
                            "or --overwrite to start afresh")
        paths.clear()
    return None


def _datasets(cfg: Config, store_path: Path, run: dict[str, Any]) -> tuple[SliceDataset, ...]:
    t = cfg.train
    common = {"view": t.view, "batch_size": t.batch_size, "cache": t.cache,
              "cache_max_gb": t.cache_max_gb, "prefetch": t.prefetch, "seed": t.seed}
    train = SliceDataset(store_path, run["train_cases"], shuffle=True,
                         augment=Augmenter(t.flip, t.rotate_degrees, t.zoom),
                         tumour_oversampling=t.tumour_oversampling,
                         max_batches=t.steps_per_epoch, **common)
    val = SliceDataset(store_path, run["val_cases"], shuffle=False,
                       max_batches=t.validation_steps, **common)
    return train, val


def _build(cfg: Config, run: dict[str, Any], steps: int, state: dict[str, Any] | None,
           paths: RunPaths) -> keras.Model:
    from braintseg.losses import build_loss
    from braintseg.metrics import build_metrics
    from braintseg.model import build_model

    model = build_model(cfg.model, tuple(run["input_shape"]))
    model.compile(optimizer=_optimizer(cfg, steps), loss=build_loss(cfg.train, cfg.model),
                  metrics=build_metrics(cfg.model))
    if state is not None:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(paths.last)
        set_rng_state(model, state.get("rng", []))
    return model


def _callbacks(cfg: Config, paths: RunPaths, train: SliceDataset, guard: _Guard,
               state: dict[str, Any] | None) -> list[keras.callbacks.Callback]:
    best = state.get("best") if state else None
    return [guard, *logging_callbacks(cfg, paths, train, state),
            _Checkpoints(paths, cfg.train.monitor, best, cfg.train.seed, guard)]


def run_train(cfg: Config, store: Path, fold: int, run_dir: Path, *, resume: bool = False,
              overwrite: bool = False) -> Path:
    """Train fold ``fold`` of ``store`` into ``run_dir``; return ``run_dir``.

    Raises:
        DataError: store missing/invalid, fold out of range, RUN_DIR holds a run.
        ConfigError: shape not divisible by ``2**model.levels``; ``--resume`` with other
            model/data settings (names the keys).
        Interrupted: SIGTERM/SIGUSR1 arrived; the checkpoint was saved first.
    """
    paths = RunPaths(Path(run_dir))
    _, run = _check_inputs(cfg, Path(store), fold)
    state = _prepare_run_dir(paths, cfg, run, resume, overwrite)
    done = int(state["epochs_done"]) if state else 0
    if done >= cfg.train.epochs:  # e.g. stopped by a signal just after its last epoch
        logger.info("%s already finished %d epochs", paths.root, done)
        paths.done.write_text("finished\n")
        return paths.root
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.done.unlink(missing_ok=True)
    dump_config(cfg, paths.config)
    write_json(paths.run_json, run)
    if state is not None:
        trim_history(paths.history, done)
    keras.utils.set_random_seed(cfg.train.seed)
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(
        "float32" if cfg.train.mixed_precision == "off" else cfg.train.mixed_precision)
    guard = _Guard()
    datasets: tuple[SliceDataset, ...] = ()
    try:
        train, val = datasets = _datasets(cfg, Path(store), run)
        model = _build(cfg, run, len(train), state, paths)
        if train.augment is not None and train.augment.geometric:  # rotation/zoom on device
            install_device_affine(model, val.batch(0, 0))
        guard.install()
        _fit(model, cfg, paths, train, val, guard, state, done)
    finally:
        guard.restore()
        for ds in datasets:
            ds.close()
        release_store(Path(store))
        keras.mixed_precision.set_global_policy(policy)
    paths.done.write_text("finished\n")
    return paths.root


def _fit(model: keras.Model, cfg: Config, paths: RunPaths, train: SliceDataset,
         val: SliceDataset, guard: _Guard, state: dict[str, Any] | None, done: int) -> None:
    callbacks = _callbacks(cfg, paths, train, guard, state)
    logger.info("training %s: %d+%d cases, %d steps/epoch, epochs %d..%d (%s cache)",
                paths.root, len(train.case_ids), len(val.case_ids), len(train),
                done + 1, cfg.train.epochs, train.mode)
    try:
        model.fit(train, validation_data=val, epochs=cfg.train.epochs, initial_epoch=done,
                  shuffle=False, callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
    except _StopRequested as stop:
        ckpt = next(c for c in callbacks if isinstance(c, _Checkpoints))
        epochs_done = read_json(paths.state)["epochs_done"] if paths.state.is_file() else done
        if not stop.saved:  # mid-epoch: keep the weights reached (the epoch re-runs on resume)
            save_checkpoint(model, paths, int(epochs_done), ckpt.best, cfg.train.seed)
        name = signal.Signals(guard.signum or signal.SIGTERM).name
        raise Interrupted(f"{name}: checkpoint saved in {paths.last} after "
                          f"{epochs_done} finished epochs; continue with --resume") from None
