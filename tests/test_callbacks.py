"""Logging callbacks of ``braintseg train``: throughput after compilation, compile time, TB."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from braintseg.store.read import open_store
from braintseg.training.generator import SliceDataset


def test_slices_per_s_exclude_the_first_step_and_compile_s_is_written(
        synthetic_store: Path, tmp_path: Path) -> None:
    """A 1.5 s stall in the first step (as compilation) shows in run.json's ``compile_s`` and
    not in the epoch's slices/s; TensorBoard gets train/ and validation/ scalars."""
    import keras

    from braintseg.training.callbacks import EpochLogs, EpochTensorBoard

    class Stall(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            if batch == 0 and not hasattr(self, "done"):
                self.done = True
                time.sleep(1.5)

    ids = open_store(synthetic_store).case_ids
    train = SliceDataset(synthetic_store, ids[:2], "axial", 4, max_batches=4, seed=1)
    val = SliceDataset(synthetic_store, ids[2:3], "axial", 4, shuffle=False, max_batches=2)
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"fold": 0}))
    inp = keras.Input(train.input_shape)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1, activation="softmax")(inp))
    model.compile("adam", "sparse_categorical_crossentropy")
    cbs = [EpochLogs(train, run_json), Stall(), EpochTensorBoard(tmp_path / "tb"),
           keras.callbacks.CSVLogger(str(tmp_path / "history.csv"))]
    try:
        model.fit(train, validation_data=val, epochs=2, callbacks=cbs, verbose=0, shuffle=False)
    finally:
        train.close()
        val.close()
    run = json.loads(run_json.read_text())
    assert run["fold"] == 0 and run["compile_s"] >= 1.5 and run["val_compile_s"] > 0
    with (tmp_path / "history.csv").open() as f:
        rates = [float(r["slices_per_s"]) for r in csv.DictReader(f)]
    assert len(rates) == 2 and all(np.isfinite(rates))
    assert rates[0] > 3 * 4 / 1.5  # 3 batches of 4 after the first, in far less than the stall
    events = {p.parent.name for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}
    assert events == {"train", "validation"}


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from braintseg.training.callbacks import EpochTensorBoard

    tb = EpochTensorBoard(tmp_path)
    for epoch in range(3):
        tb.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_loss": 2.0, "val_dice_wt": 0.5})
    tb.on_train_end()
    train = EventAccumulator(str(tmp_path / "train"))
    train.Reload()
    assert [e.value for e in train.Scalars("epoch_loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    val = EventAccumulator(str(tmp_path / "validation"))
    val.Reload()
    assert [e.step for e in val.Scalars("epoch_dice_wt")] == [0, 1, 2]
