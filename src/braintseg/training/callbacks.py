"""Keras callbacks of ``braintseg train`` that log and tune (not the stop/checkpoint ones).

Every callback here must keep Keras' asynchronous dispatch: no per-batch ``*_end`` hook that
reads device values (see ``keras.callbacks.CallbackList._async_train``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import keras

from braintseg.config import Config
from braintseg.malloc import keep_freed_memory
from braintseg.training.generator import SliceDataset
from braintseg.training.runs import RunPaths, read_json, write_json

logger = logging.getLogger(__name__)


class EpochLogs(keras.callbacks.Callback):
    """Sets the dataset's epoch, measures slices/s and compilation, adds ``val_dice_mean``.

    ``slices_per_s`` counts the training part of an epoch from the start of its *second* batch
    (the first step of a process holds tracing and compilation, and the reader's warm-up), so
    short runs do not under-report; an epoch of one batch is timed whole.  The first training
    step of the process and the first validation batch are written apart, as ``compile_s`` and
    ``val_compile_s`` (seconds, including that step's work) into ``run_json`` when given.
    Only begin hooks are used: no per-batch ``*_end`` hook (async dispatch stays on).
    """

    def __init__(self, data: SliceDataset, run_json: Path | None = None) -> None:
        super().__init__()
        self.data, self.run_json = data, run_json
        self.t0 = self.t1 = self.t_second = self.v0 = 0.0
        self.first_epoch = True
        self.timing: dict[str, float] = {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.data.set_epoch(epoch)
        self.t0, self.t1, self.t_second = time.perf_counter(), 0.0, 0.0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == 0:
            self.t0 = time.perf_counter()
        elif batch == 1:
            self.t_second = time.perf_counter()
            if self.first_epoch:
                self.timing["compile_s"] = self.t_second - self.t0

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.v0 = time.perf_counter()
        if not self.t1:  # the training part of the epoch ends where validation begins
            self.t1 = self.v0

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == 1 and self.first_epoch:
            self.timing["val_compile_s"] = time.perf_counter() - self.v0

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.first_epoch:
            self.timing.setdefault("val_compile_s", time.perf_counter() - self.v0)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.t1 = self.t1 or time.perf_counter()
        if self.first_epoch:
            self.first_epoch = False
            self.timing.setdefault("compile_s", self.t1 - self.t0)  # a one-batch epoch
            self._write_timing()
        if logs is None:
            return
        n = min(self.data.n_slices, len(self.data) * self.data.batch_size)
        if self.t_second:
            n -= min(self.data.batch_size, n)
            logs["slices_per_s"] = n / max(self.t1 - self.t_second, 1e-9)
        else:
            logs["slices_per_s"] = n / max(self.t1 - self.t0, 1e-9)
        regions = [logs.get(f"val_dice_{r}") for r in ("wt", "tc", "et")]
        if "val_dice_mean" not in logs and all(v is not None for v in regions):
            logs["val_dice_mean"] = float(sum(float(v) for v in regions) / 3)  # type: ignore[arg-type]

    def _write_timing(self) -> None:
        if self.run_json is None or not self.run_json.is_file():
            return
        run = read_json(self.run_json)
        run.update({k: round(v, 3) for k, v in self.timing.items()})
        write_json(self.run_json, run)


class KeepFreedMemory(keras.callbacks.Callback):
    """Around every batch: undo TensorFlow's malloc setting (see :mod:`braintseg.malloc`)."""

    async_safe = True  # a mallopt call from any thread; never blocks the training loop

    def _tune(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        keep_freed_memory()

    on_train_batch_begin = on_train_batch_end = _tune
    on_test_batch_begin = on_test_batch_end = _tune


class HistoryCSV(keras.callbacks.CSVLogger):
    """Keras' CSVLogger with epochs numbered from 1, as the log prints them."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch + 1, logs)


class EpochTensorBoard(keras.callbacks.Callback):
    """Epoch-level TensorBoard scalars without per-batch hooks (so Keras dispatch stays async).

    Writes ``epoch_<metric>`` at step ``epoch`` into ``LOGDIR/train`` (training metrics, the
    learning rate, slices/s) and ``LOGDIR/validation`` (``val_*`` metrics without the prefix),
    the layout and tags of ``keras.callbacks.TensorBoard(update_freq="epoch")``.  Event files
    are written with the ``tensorboard`` package alone (no TensorFlow needed, any backend).
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if name not in self._writers:
            self._writers[name] = EventFileWriter(str(self.log_dir / name))
        return self._writers[name]

    def _write(self, name: str, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=f"epoch_{k}", simple_value=v)
                                 for k, v in values.items()])
        writer = self._writer(name)
        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        writer.flush()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        train: dict[str, float] = {}
        val: dict[str, float] = {}
        for key, value in (logs or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if key.startswith("val_"):
                val[key[4:]] = number
            else:
                train[key] = number
        lr = getattr(getattr(self.model, "optimizer", None), "learning_rate", None)
        if lr is not None and "learning_rate" not in train:
            train["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        self._write("train", epoch, train)
        if val:
            self._write("validation", epoch, val)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def logging_callbacks(cfg: Config, paths: RunPaths, train: SliceDataset,
                      state: dict[str, Any] | None) -> list[keras.callbacks.Callback]:
    """Epoch logs, malloc tuning, LR schedule on plateau, ``history.csv`` and TensorBoard."""
    t = cfg.train
    cbs: list[keras.callbacks.Callback] = [EpochLogs(train, paths.run_json)]
    if keras.backend.backend() == "tensorflow" and keep_freed_memory():
        cbs.append(KeepFreedMemory())
    if t.schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(
            monitor=t.monitor, mode="min" if t.monitor == "val_loss" else "max",
            factor=0.5, patience=5))
    cbs.append(HistoryCSV(str(paths.history), append=state is not None))
    try:
        import tensorboard  # noqa: F401 - the event file writer comes from the package
        cbs.append(EpochTensorBoard(paths.tensorboard))
    except ImportError:
        logger.warning("the tensorboard package is not installed: no TensorBoard logs")
    return cbs
