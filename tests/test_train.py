"""run_train on tiny synthetic stores: learning, resume, signals, bad input; real cases (shared)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tables

from braintseg.config import Config
from braintseg.errors import ConfigError, DataError
from braintseg.training.runs import read_json
from conftest import TINY_TRAIN as TINY


def _cfg(smoke_cfg: Config, **train: object) -> Config:
    return smoke_cfg.replace(train={**TINY, **train})


def _epochs(run: Path) -> list[int]:
    with (run / "history.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _weights(path: Path) -> tuple[list[np.ndarray], int]:
    import keras

    import braintseg.model  # noqa: F401
    import braintseg.training.losses  # noqa: F401 - registers custom objects
    import braintseg.training.metrics  # noqa: F401

    model = keras.saving.load_model(path, safe_mode=True)
    opt = [np.asarray(v) for v in model.optimizer.variables]
    return [np.asarray(w) for w in model.weights] + opt, int(model.optimizer.iterations)


def test_resume_equals_uninterrupted(synthetic_store: Path, smoke_cfg: Config,
                                     two_epoch_run: Path, tmp_path: Path) -> None:
    from braintseg.training.train import run_train

    full = run_train(_cfg(smoke_cfg, epochs=3), synthetic_store, 0, tmp_path / "full")
    part = Path(shutil.copytree(two_epoch_run, tmp_path / "part"))
    assert (part / "DONE").exists() and _epochs(part) == [1, 2]
    run_train(_cfg(smoke_cfg, epochs=3), synthetic_store, 0, part, resume=True)
    assert _epochs(part) == _epochs(full) == [1, 2, 3]
    wf, itf = _weights(full / "last.keras")
    wp, itp = _weights(part / "last.keras")
    assert itf == itp == 6
    assert len(wf) == len(wp)
    for a, b in zip(wf, wp, strict=True):
        np.testing.assert_array_equal(a, b)
    state = read_json(part / "checkpoint" / "state.json")
    assert state["epochs_done"] == 3 and state["optimizer_iterations"] == 6
    run = read_json(part / "run.json")
    assert run["fold"] == 0 and run["view"] == "axial" and len(run["input_shape"]) == 3
    assert (part / "model.keras").is_file() and (part / "config.yaml").is_file()


def test_learns_synthetic_task(synthetic_store: Path, smoke_cfg: Config, tmp_path: Path) -> None:
    import keras

    from braintseg.training.train import run_train

    # On JAX (CPU XLA) this tiny network collapses to background at lr 0.01 (already so before
    # the JAX CI pass existed); lr 0.001 learns there, while TensorFlow needs 0.01 in 8 epochs.
    lr = 0.001 if keras.backend.backend() == "jax" else 0.01
    cfg = smoke_cfg.replace(
        model={"levels": 2, "start_channels": 8},
        train={"epochs": 8, "batch_size": 8, "steps_per_epoch": None, "validation_steps": None,
               "optimizer": "adam", "learning_rate": lr, "flip": False})
    run = run_train(cfg, synthetic_store, 0, tmp_path / "learn")
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    best_wt = max(float(r["val_dice_wt"]) for r in rows)
    # chance (all background or random labels) scores ~0 on the tumour region
    assert best_wt > 0.5, [r["val_dice_wt"] for r in rows]
    assert float(rows[-1]["slices_per_s"]) > 0


SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from braintseg.training import generator as g
    orig = g.SliceDataset.__getitem__
    def hook(self, i):
        if self.shuffle and self.epoch == 1 and i == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return orig(self, i)
    g.SliceDataset.__getitem__ = hook
    from braintseg.cli import cli
    cli(sys.argv[1:])
""")


@pytest.mark.slow
def test_signal_mid_epoch_checkpoints_and_resumes(
    synthetic_store: Path, smoke_cfg: Config, tmp_path: Path
) -> None:
    run = tmp_path / "sig"
    args = ["train", "-i", str(synthetic_store), "--fold", "1", "-o", str(run),
            "-c", str(Path(__file__).parents[1] / "configs" / "smoke.yaml"),
            "--set", "train.epochs=3", "--set", "train.steps_per_epoch=3"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert "SIGUSR1" in proc.stderr and "--resume" in proc.stderr
    assert _epochs(run) == [1] and not (run / "DONE").exists()
    state = read_json(run / "checkpoint" / "state.json")
    assert state["epochs_done"] == 1
    assert 3 < state["optimizer_iterations"] < 6  # saved mid-epoch, after the current step
    _, iterations = _weights(run / "last.keras")
    assert iterations == state["optimizer_iterations"]
    again = subprocess.run([sys.executable, "-m", "braintseg", *args, "--resume"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _epochs(run) == [1, 2, 3] and (run / "DONE").exists()
    assert read_json(run / "checkpoint" / "state.json")["optimizer_iterations"] == (
        state["optimizer_iterations"] + 6)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_inputs(synthetic_store: Path, smoke_cfg: Config, two_epoch_run: Path,
                    tmp_path: Path) -> None:
    from braintseg.training.train import run_train

    cfg = _cfg(smoke_cfg)
    with pytest.raises(DataError, match="does not exist"):
        run_train(cfg, tmp_path / "none.h5", 0, tmp_path / "r0")
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5")
    with pytest.raises(DataError, match="not an HDF5 file"):
        run_train(cfg, fake, 0, tmp_path / "r0")
    old = tmp_path / "old.h5"
    old.write_bytes(synthetic_store.read_bytes())
    with tables.open_file(str(old), "r+") as h:
        h.root._v_attrs.schema_version = 0
    with pytest.raises(DataError, match="schema version 0"):
        run_train(cfg, old, 0, tmp_path / "r0")
    with pytest.raises(DataError, match=r"fold 5 does not exist; valid folds: 0\.\.1"):
        run_train(cfg, synthetic_store, 5, tmp_path / "r0")
    with pytest.raises(ConfigError, match="divisible by 16"):
        run_train(cfg.replace(model={"levels": 4}), synthetic_store, 0, tmp_path / "r0")
    assert not (tmp_path / "r0").exists()
    with pytest.raises(DataError, match="holds no run to resume"):
        run_train(cfg, synthetic_store, 0, tmp_path / "r0", resume=True)

    done = Path(shutil.copytree(two_epoch_run, tmp_path / "done"))
    before = _snapshot(done)
    with pytest.raises(DataError, match="already holds a finished run.*--resume.*--overwrite"):
        run_train(cfg, synthetic_store, 0, done)
    with pytest.raises(ConfigError, match=r"model\.start_channels: 4 -> 8"):
        run_train(cfg.replace(model={"start_channels": 8}), synthetic_store, 0, done,
                  resume=True)
    with pytest.raises(ConfigError, match="fold: 0 -> 1"):
        run_train(cfg, synthetic_store, 1, done, resume=True)
    assert _snapshot(done) == before  # nothing overwritten


def test_cli_unknown_view_is_one_line(synthetic_store: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from braintseg.cli import cli

    result = CliRunner().invoke(cli, ["train", "-i", str(synthetic_store), "--fold", "0",
                                      "-o", str(tmp_path / "r"), "--set", "train.view=sagital"])
    assert result.exit_code == 1
    assert "train.view" in result.output and "sagital" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_real_cases_train_end_to_end(shared_brats: Path, smoke_cfg: Config,
                                     tmp_path: Path) -> None:
    from braintseg.config import load_config
    from braintseg.preparation.prepare import run_prepare
    from braintseg.training.train import run_train

    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "BraTS-GLI-00000-000"):
        (cases / name).symlink_to(shared_brats / name)
    cfg = load_config(overrides=["data.n_folds=2", "model.start_channels=4",
                                 "train.epochs=1", "train.steps_per_epoch=2",
                                 "train.validation_steps=1", "train.batch_size=2"])
    store = run_prepare(cfg, cases, tmp_path / "real.h5", workers=2)
    run = run_train(cfg, store, 0, tmp_path / "run")
    assert _epochs(run) == [1] and (run / "DONE").exists()
    assert read_json(run / "run.json")["input_shape"] == [152, 192, 4]
    with (run / "history.csv").open() as f:
        row = next(csv.DictReader(f))
    assert np.isfinite(float(row["val_loss"])) and 0.0 <= float(row["val_dice_wt"]) <= 1.0


MALLOC_CHECK = """
import ctypes
from braintseg.malloc import _mallopt, keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mmapped(size=4 << 20):  # glibc's chunk header: the size word before it, bit 2 = IS_MMAPPED
    ptr = libc.malloc(size)
    flag = ctypes.c_size_t.from_address(ptr - ctypes.sizeof(ctypes.c_size_t)).value & 2
    libc.free(ptr)
    return bool(flag)
if _mallopt() is None:
    print("not glibc")
else:
    _mallopt()(-1, 128 * 1024)  # what TensorFlow's "memory patch" leaves behind
    _mallopt()(-3, 128 * 1024)
    print(mmapped(), keep_freed_memory(), mmapped())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_sets_glibc_thresholds() -> None:
    """The mallopt calls that undo TensorFlow's 128 KB thresholds are accepted by glibc, and a
    4 MB block (an activation tensor) then comes from the heap instead of a fresh mmap (which
    the kernel zero-fills page by page at every training step).  In a fresh process: a heap
    with free space of its own would hide the difference."""
    out = subprocess.run([sys.executable, "-c", MALLOC_CHECK], capture_output=True, text=True,
                         check=True).stdout.strip()
    if out == "not glibc":
        pytest.skip(out)
    assert out == "True True False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_leaves_the_users_malloc_settings_alone() -> None:
    code = "from braintseg.malloc import keep_freed_memory as k; print(k(), k())"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "BRAINTSEG_MALLOC_TUNING"}

    def run(extra: dict[str, str]) -> list[str]:
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, text=True,
                              capture_output=True, check=True).stdout.split()

    if run({}) == ["False", "False"]:
        pytest.skip("not glibc")
    assert run({}) == ["True", "True"]
    assert run({"MALLOC_TRIM_THRESHOLD_": "1000000"}) == ["False", "False"]
    assert run({"BRAINTSEG_MALLOC_TUNING": "0"}) == ["False", "False"]


def test_run_dir_holds_tensorboard_logs(two_epoch_run: Path) -> None:
    """With the tensorboard package (in the tf/cpu extras) a run has event files per epoch."""
    pytest.importorskip("tensorboard")
    events = list((two_epoch_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} >= {"train", "validation"}, events
    assert all(e.stat().st_size > 100 for e in events)


def test_callbacks_keep_keras_async_dispatch(synthetic_store: Path, smoke_cfg: Config,
                                             tmp_path: Path) -> None:
    """No braintseg callback has a per-batch ``*_end`` hook unless it is marked async-safe:
    one such hook turns off Keras' asynchronous dispatch and makes every step wait for the
    device (JAX/torch)."""
    import keras
    from keras.src.utils.python_utils import is_default

    from braintseg.store.read import open_store
    from braintseg.training.fit import _Guard, callbacks, datasets
    from braintseg.training.runs import RunPaths

    cfg = _cfg(smoke_cfg)
    store = open_store(synthetic_store)
    run = {"train_cases": store.case_ids[:2], "val_cases": store.case_ids[2:3]}
    store.close()
    train, val = datasets(cfg, synthetic_store, run)
    try:
        cbs = callbacks(cfg, RunPaths(tmp_path / "run"), train, _Guard(), None)
    finally:
        train.close()
        val.close()
    ours = [c for c in cbs if type(c).__module__ in ("braintseg.training.fit",
                                                      "braintseg.training.callbacks")]
    assert len(ours) >= 3
    for cb in ours:
        if getattr(cb, "async_safe", False):
            continue
        for hook in ("on_batch_end", "on_train_batch_end", "on_test_batch_end"):
            assert is_default(getattr(cb, hook)), f"{type(cb).__name__}.{hook}"
    assert keras.callbacks.CallbackList(cbs)._async_train or keras.backend.backend() in (
        "tensorflow", "numpy")  # TensorFlow is never dispatched asynchronously


def test_epochs_are_numbered_from_1_everywhere(two_epoch_run: Path) -> None:
    """history.csv, the checkpoint's state (inside last.keras) and its state.json copy count
    epochs as the log prints them (Epoch 1/2, 2/2); model.keras is the best epoch's copy."""
    from braintseg.training.checkpoint import read_state

    assert _epochs(two_epoch_run) == [1, 2]
    state = read_state(two_epoch_run / "last.keras")
    assert state is not None and state == read_json(two_epoch_run / "checkpoint" / "state.json")
    assert state["epochs_done"] == 2 and state["best_epoch"] in (1, 2)
    assert state["optimizer_iterations"] == state["epoch_end_iterations"] == 4
    assert state["steps_per_epoch"] == 2 and state["skipped_iterations"] == 0
    best = read_state(two_epoch_run / "model.keras")
    assert best is not None and best["optimizer_iterations"] == state["best_iterations"] == (
        2 * state["best_epoch"])


def _rewrite_state(last: Path, state: dict | None) -> None:
    """Replace (or with None drop) the resume state inside a .keras checkpoint."""
    import json
    import zipfile

    from braintseg.training.checkpoint import STATE_ENTRY

    with zipfile.ZipFile(last) as zf:
        entries = {n: zf.read(n) for n in zf.namelist() if n != STATE_ENTRY}
    with zipfile.ZipFile(last, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if state is not None:
            zf.writestr(STATE_ENTRY, json.dumps(state))


def test_resume_refuses_a_checkpoint_whose_step_count_disagrees(
    synthetic_store: Path, smoke_cfg: Config, two_epoch_run: Path, tmp_path: Path
) -> None:
    """The layout of older versions (state.json beside a last.keras one epoch ahead, as a kill
    between the two writes left it) and a state whose epochs x steps do not add up are both
    refused in one line before any training; nothing in the folder changes."""
    from braintseg.training.checkpoint import read_state
    from braintseg.training.train import run_train

    cfg = _cfg(smoke_cfg, epochs=3)
    old = Path(shutil.copytree(two_epoch_run, tmp_path / "old"))
    state = read_state(old / "last.keras")
    _rewrite_state(old / "last.keras", None)
    (old / "checkpoint" / "state.json").write_text(
        '{"epochs_done": 1, "best": 0.0, "seed": 100, "optimizer_iterations": 2, "rng": []}')
    before = _snapshot(old)
    with pytest.raises(DataError, match=r"weights have 4 optimizer steps, its state records 2 "
                                        r"after 1 epochs; refusing to resume"):
        run_train(cfg, synthetic_store, 0, old, resume=True)
    assert _snapshot(old) == before

    odd = Path(shutil.copytree(two_epoch_run, tmp_path / "odd"))
    _rewrite_state(odd / "last.keras", {**state, "epochs_done": 1})
    with pytest.raises(DataError, match=r"1 epochs x 2 steps .* = 2 steps, but the state "
                                        r"records 4"):
        run_train(cfg, synthetic_store, 0, odd, resume=True)


ASYNC_CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    import keras
    from braintseg.config import load_config
    from braintseg.store.read import open_store
    from braintseg.training.runs import RunPaths
    from braintseg.training.fit import _Guard, callbacks, datasets

    store_path, cfg_path, run_dir = (Path(a) for a in sys.argv[1:4])
    cfg = load_config(cfg_path, overrides=["train.batch_size=2", "train.steps_per_epoch=2"])
    store = open_store(store_path)
    run = {"train_cases": store.case_ids[:2], "val_cases": store.case_ids[2:3]}
    store.close()
    train, val = datasets(cfg, store_path, run)
    try:
        cbs = callbacks(cfg, RunPaths(run_dir), train, _Guard(), None)
    finally:
        train.close()
        val.close()
    names = ",".join(sorted(type(c).__name__ for c in cbs))
    # the dispatch mode depends on the callbacks alone; a one-layer model keeps the test fast
    # (the U-Net's eager JAX initialisation takes ~1 min on a loaded CPU)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    listed = keras.callbacks.CallbackList(cbs, model=model)
    print(keras.backend.backend(), listed._async_train, listed._async_test, names)
""")


def test_run_callbacks_keep_async_dispatch_on_jax(synthetic_store: Path, tmp_path: Path) -> None:
    """The exact callback list of ``braintseg train`` (TensorBoard included when installed),
    under ``KERAS_BACKEND=jax`` in a fresh process: Keras dispatches the train and test steps
    asynchronously (``keras.callbacks.TensorBoard`` has per-batch hooks and turned it off)."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "JAX_PLATFORMS": "cpu"}
    cfg = Path(__file__).parents[1] / "configs" / "smoke.yaml"
    proc = subprocess.run([sys.executable, "-c", ASYNC_CHECK, str(synthetic_store), str(cfg),
                           str(tmp_path / "run")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend, async_train, async_test, names = proc.stdout.strip().splitlines()[-1].split(" ", 3)
    assert backend == "jax"
    try:
        import tensorboard  # noqa: F401
        assert "TensorBoard" in names
    except ImportError:
        pass
    assert (async_train, async_test) == ("True", "True"), names


def test_a_ctrl_c_python_swallows_is_raised_again_before_the_next_batch() -> None:
    """A KeyboardInterrupt raised inside a garbage-collector callback (JAX has one) is only
    printed ("Exception ignored in"): the stop handler remembers it and the training loop's
    guard raises it before the next batch, so Ctrl-C still ends the run (exit 130)."""
    import gc
    import signal

    from braintseg.stop import StopSignals
    from braintseg.training.fit import _Guard

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's, whatever
    stop = StopSignals().install()  # the test runner was started with (a background job: SIG_IGN)
    try:
        def in_gc(phase: str, info: dict) -> None:
            if phase == "start":
                signal.raise_signal(signal.SIGINT)  # delivered here, swallowed by Python

        gc.callbacks.append(in_gc)
        try:
            gc.collect()  # prints "Exception ignored in ...", raises nothing here
        finally:
            gc.callbacks.remove(in_gc)
        assert stop.interrupted
        with pytest.raises(KeyboardInterrupt):
            _Guard(stop).on_train_batch_begin(0)
    finally:
        stop.restore()
    try:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ignored = StopSignals()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's SIGINT
        ignored.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # left as it was
        ignored.restore()
    finally:
        signal.signal(signal.SIGINT, outer)


def test_monitor_last_keeps_the_final_weights(synthetic_store: Path, smoke_cfg: Config,
                                              tmp_path: Path) -> None:
    """``train.monitor: last``: model.keras is the last epoch's model, whatever validation says
    (in a cross-validation the validation patients are the test patients)."""
    from braintseg.training.train import run_train

    run = tmp_path / "last"
    run_train(_cfg(smoke_cfg, epochs=2, monitor="last"), synthetic_store, 0, run)
    state = read_json(run / "checkpoint" / "state.json")
    assert state["best_epoch"] == 2 and state["monitor"] == "last"
    best, _ = _weights(run / "model.keras")
    last, _ = _weights(run / "last.keras")
    for a, b in zip(best, last, strict=False):  # the model's weights (model.keras: no optimizer)
        np.testing.assert_array_equal(a, b)


def test_monitor_last_refuses_the_plateau_schedule(smoke_cfg: Config) -> None:
    with pytest.raises(ConfigError, match="train.monitor: last"):
        smoke_cfg.replace(train={"monitor": "last", "schedule": "plateau"})
