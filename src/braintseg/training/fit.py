"""The Keras half of ``braintseg train``: datasets, model, the stop and checkpoint callbacks, fit.

Imported by :func:`.train.run_train` only after every check passed (this module imports
Keras, which takes seconds).  A stop request (:class:`~braintseg.stop.StopSignals`) is looked at
before each batch; the checkpoint is written at each epoch end and, after a stop, in the middle
of an epoch (the interrupted epoch is run again from its first batch on resume, with the weights
reached so far).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import keras

from braintseg.config import HEAD_OUTPUT, SEG_OUTPUT, Config
from braintseg.errors import DataError, Interrupted
from braintseg.stop import StopSignals
from braintseg.training import distribute
from braintseg.training.augment import Augmenter
from braintseg.training.callbacks import logging_callbacks
from braintseg.training.checkpoint import kill_point, save_checkpoint, set_rng_state, verify
from braintseg.training.generator import SliceDataset
from braintseg.training.runs import RunPaths

logger = logging.getLogger(__name__)


class _StopRequested(Exception):  # noqa: N818 - internal control flow
    """Raised from a callback after the step during which a signal arrived; ``saved`` when the
    checkpoint of the epoch that just ended is already written."""

    def __init__(self, saved: bool = False) -> None:
        super().__init__()
        self.saved = saved


class _Guard(keras.callbacks.Callback):
    """Stops after the current training step once a stop was requested.

    The flag is checked before each batch, not after: a per-batch ``*_end`` hook would turn off
    Keras' asynchronous callback dispatch and make every step wait for the device (JAX, torch).
    """

    def __init__(self, stop: StopSignals | None = None,
                 dist: distribute.Session | None = None) -> None:
        super().__init__()
        self.stop = stop or StopSignals()
        self.dist = dist or distribute.Session()

    def requested(self) -> bool:
        """A signal arrived here or in another process of the training (a collective)."""
        return self.dist.any_process(self.stop.signum is not None)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        kill_point("batch")
        if self.stop.interrupted:  # a Ctrl-C whose KeyboardInterrupt Python swallowed
            raise KeyboardInterrupt
        if self.requested():
            raise _StopRequested


class _Checkpoints(keras.callbacks.Callback):
    """After each epoch: the checkpoint (and ``model.keras`` for a new best by ``monitor``).

    Keeps the counters of the resume state (see :mod:`braintseg.training.checkpoint`); epochs are
    numbered from 1.
    """

    #: what ReduceLROnPlateau counts between epochs (its learning rate is in the optimizer)
    PLATEAU_KEYS = ("wait", "best", "cooldown_counter")

    def __init__(self, paths: RunPaths, cfg: Config, steps: int, state: dict[str, Any] | None,
                 guard: _Guard, plateau: keras.callbacks.ReduceLROnPlateau | None = None) -> None:
        super().__init__()
        self.paths, self.guard, self.monitor = paths, guard, cfg.train.monitor
        self.plateau, self.plateau_state = plateau, (state or {}).get("plateau")
        self.higher = self.monitor != "val_loss"  # (last: every epoch is the new best)
        s = state or {}
        self.epochs_done = int(s.get("epochs_done", 0))
        self.best, self.best_epoch = s.get("best"), s.get("best_epoch")
        self.best_iterations = s.get("best_iterations")
        iterations = int(s.get("optimizer_iterations", 0))
        # the steps of an interrupted epoch stay in the weights, and the epoch is run again:
        # they count as skipped, so epoch ends stay at epochs_done x steps + skipped
        self.epoch_end = iterations
        self.skipped = int(s.get("skipped_iterations", 0)) + iterations - int(
            s.get("epoch_end_iterations", iterations))
        same = state is None or ("format" in s and s.get("steps_per_epoch") == steps)
        self.steps: int | None = steps if same else None
        self.seed = cfg.train.seed

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # after ReduceLROnPlateau's own on_train_begin, which resets its counters
        if self.plateau is not None and self.plateau_state:
            for key in self.PLATEAU_KEYS:
                setattr(self.plateau, key, self.plateau_state[key])

    def state(self) -> dict[str, Any]:
        state = {"epochs_done": self.epochs_done, "epoch_end_iterations": self.epoch_end,
                 "steps_per_epoch": self.steps, "skipped_iterations": self.skipped,
                 "best": self.best, "best_epoch": self.best_epoch,
                 "best_iterations": self.best_iterations, "monitor": self.monitor,
                 "seed": self.seed}
        if self.plateau is not None:
            state["plateau"] = {k: float(getattr(self.plateau, k)) for k in self.PLATEAU_KEYS}
        return state

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        kill_point("epoch-end")
        number = epoch + 1
        iterations = int(self.model.optimizer.iterations.numpy())
        if self.monitor == "last":  # model.keras is the latest epoch's (validation unused)
            value, new_best = (logs or {}).get("loss"), True
        else:
            value = (logs or {}).get(self.monitor)
            new_best = value is not None and (self.best is None or (
                value > self.best if self.higher else value < self.best))
        self.epochs_done, self.epoch_end = number, iterations
        if new_best:
            best = float(value) if value is not None else None
            self.best, self.best_epoch, self.best_iterations = best, number, iterations
        save_checkpoint(self.model, self.paths, self.state(), new_best)
        if new_best:
            logger.info("epoch %d: %s %s, saved %s", number,
                        "loss" if self.monitor == "last" else self.monitor,
                        "?" if value is None else f"{value:.4f}", self.paths.best)
        if self.guard.requested():
            raise _StopRequested(saved=True)

    def save_now(self) -> None:
        """The checkpoint in the middle of an epoch (after a stop request)."""
        save_checkpoint(self.model, self.paths, self.state(), False)


def optimizer(cfg: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
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


def datasets(cfg: Config, store_path: Path, run: dict[str, Any],
             dist: distribute.Session | None = None) -> tuple[SliceDataset, ...]:
    """The training and validation :class:`SliceDataset` of the run's fold (this process's
    rows of each global batch under a distribution)."""
    t = cfg.train
    common: dict[str, Any] = {
        "view": t.view, "batch_size": t.batch_size, "cache": t.cache,
        "cache_max_gb": t.cache_max_gb, "prefetch": t.prefetch, "seed": t.seed,
        "read_processes": t.read_processes,
        **(dist or distribute.Session()).dataset_args()}
    cls: Any = SliceDataset
    if cfg.model.classification_head != "none":  # targets {"probabilities", "classification"}
        from braintseg.training.head_targets import HeadSliceDataset

        cls, common["head"] = HeadSliceDataset, cfg.model.classification_head
    train = cls(store_path, run["train_cases"], shuffle=True,
                augment=Augmenter(t.flip, t.rotate_degrees, t.zoom),
                tumour_oversampling=t.tumour_oversampling,
                max_batches=t.steps_per_epoch, **common)
    val = cls(store_path, run["val_cases"], shuffle=False,
              max_batches=t.validation_steps, **common)
    return train, val


def compile_args(cfg: Config) -> dict[str, Any]:
    """``loss`` and ``metrics`` for ``model.compile`` (dicts per output with a head: the
    segmentation's keep their names through :class:`UnprefixSegmentationLogs`)."""
    from braintseg.training.losses import build_head_loss, build_loss
    from braintseg.training.metrics import build_head_metrics, build_metrics

    loss, metrics = build_loss(cfg.train, cfg.model), build_metrics(cfg.model)
    if cfg.model.classification_head == "none":
        return {"loss": loss, "metrics": metrics}
    return {"loss": {SEG_OUTPUT: loss, HEAD_OUTPUT: build_head_loss(cfg.model)},
            "loss_weights": {SEG_OUTPUT: 1.0, HEAD_OUTPUT: cfg.train.classification_weight},
            "metrics": {SEG_OUTPUT: metrics, HEAD_OUTPUT: build_head_metrics(cfg.model)}}


class UnprefixSegmentationLogs(keras.callbacks.Callback):
    """With a classification head Keras names the segmentation's metrics
    ``probabilities_dice_mean`` (one prefix per output): copy them to the plain names
    (``dice_mean``, ``val_dice_mean``) that ``train.monitor``, the checkpoint, the plateau
    schedule and history.csv use.  First in the callback list; epoch end only (async-safe)."""

    PREFIX = f"{SEG_OUTPUT}_"

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        for key in list(logs):
            for pre in ("", "val_"):
                if key.startswith(pre + self.PREFIX) and not key.endswith("_loss"):
                    logs.setdefault(pre + key[len(pre + self.PREFIX):], logs[key])


def build(cfg: Config, run: dict[str, Any], steps: int, state: dict[str, Any] | None,
          paths: RunPaths, dist: distribute.Session | None = None) -> keras.Model:
    """The compiled model; with a resume ``state`` the checkpoint's weights, optimizer and seed
    states, checked against the state (:func:`braintseg.training.checkpoint.verify`)."""
    from braintseg.model import build_model

    dist = dist or distribute.Session()
    with dist.scope():  # the TF strategy's variables (nothing on JAX: the distribution is global)
        model = dist.prepare(build_model(cfg.model, tuple(run["input_shape"])))
        model.compile(optimizer=optimizer(cfg, steps), **compile_args(cfg))
        if state is not None:
            model.optimizer.build(model.trainable_variables)
            try:
                model.load_weights(paths.last)
            except (ValueError, KeyError, TypeError) as exc:  # Keras: not this model's state
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise DataError(f"checkpoint {paths.last} cannot be resumed: its weights or "
                                f"optimizer state do not fit this model ({text}); start "
                                "afresh with --overwrite") from None
            verify(state, int(model.optimizer.iterations.numpy()), paths.last)
            set_rng_state(model, state.get("rng", []))
    return model


def callbacks(cfg: Config, paths: RunPaths, train: SliceDataset, guard: _Guard,
              state: dict[str, Any] | None) -> list[keras.callbacks.Callback]:
    cbs = [guard, *logging_callbacks(cfg, paths, train, state)]
    if cfg.train.bn_recalibration:  # before EpochLogs times the validation
        from braintseg.training.precise_bn import RecalibrateBatchNorm

        cbs.insert(1, RecalibrateBatchNorm(train, cfg.train.bn_recalibration))
    if cfg.model.classification_head != "none":
        cbs.insert(0, UnprefixSegmentationLogs())
    plateau = next((c for c in cbs if isinstance(c, keras.callbacks.ReduceLROnPlateau)), None)
    return [*cbs, _Checkpoints(paths, cfg, len(train), state, guard, plateau)]


def fit(model: keras.Model, cfg: Config, paths: RunPaths, train: SliceDataset,
        val: SliceDataset, stop: StopSignals, state: dict[str, Any] | None,
        dist: distribute.Session | None = None) -> None:
    """``model.fit`` from the checkpoint's epoch to ``train.epochs``.

    Raises:
        Interrupted: a stop request; the checkpoint was saved first.
    """
    done = int(state["epochs_done"]) if state else 0
    guard = _Guard(stop, dist)
    cbs = callbacks(cfg, paths, train, guard, state)
    logger.info("training %s: %d+%d cases, %d steps/epoch, epochs %d..%d (%s cache)",
                paths.root, len(train.case_ids), len(val.case_ids), len(train),
                done + 1, cfg.train.epochs, train.mode)
    try:
        model.fit(train, validation_data=val, epochs=cfg.train.epochs, initial_epoch=done,
                  shuffle=False, callbacks=cbs, verbose=1 if sys.stdout.isatty() else 2)
    except _StopRequested as stop_at:
        ckpt = next(c for c in cbs if isinstance(c, _Checkpoints))
        if not stop_at.saved:  # mid-epoch: keep the weights reached (the epoch re-runs)
            ckpt.save_now()
        why = stop.name if stop.signum is not None else "a stop signal to another process"
        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        if dist is not None and not dist.is_writer:  # its folder is scratch: name the run's
            raise Interrupted(f"{why}: stopped at training step {step} with the other "
                              "processes; process 0 saved the checkpoint") from None
        raise Interrupted(f"{why}: checkpoint saved in {paths.last} after "
                          f"{ckpt.epochs_done} finished epochs (training step {step})") from None
    if stop.interrupted:  # swallowed during the last step: still the user's Ctrl-C
        raise KeyboardInterrupt
