"""Crash consistency of ``braintseg train`` with real processes and real signals.

A run is SIGKILLed at chosen points (``BRAINTSEG_TEST_KILL_AT``, see braintseg.training.checkpoint),
inside the checkpoint save too, and resumed until it finishes; the result must equal the
uninterrupted ``two_epoch_run`` (conftest: same store, fold, and smoke.yaml with 2 epochs):
history.csv, optimizer step count, the weights of last.keras and model.keras, and no temporary
file left.  SIGTERM during start-up exits 75 and leaves a folder that reruns; Ctrl-C says what
is saved and how to continue.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from braintseg.config import Config
from braintseg.training.checkpoint import KILL_ENV, KILL_POINTS, read_state
from braintseg.training.runs import RunPaths, read_json

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
#: history.csv columns that measure time, not training
TIMING = {"slices_per_s"}


def _args(store: Path, run: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [sys.executable, "-m", "braintseg", "train", "-i", str(store), "--fold", "0",
            "-o", str(run), "-c", str(SMOKE), "--set", f"train.epochs={epochs}", *extra]


def _env(kill: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    return {**env, KILL_ENV: kill} if kill else env


def _history(run: Path) -> list[dict[str, float]]:
    with (run / "history.csv").open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if k not in TIMING}
                for row in csv.DictReader(f)]


def _weights(path: Path) -> tuple[list[np.ndarray], int]:
    import keras

    import braintseg.model  # noqa: F401
    import braintseg.training.losses  # noqa: F401 - registers custom objects
    import braintseg.training.metrics  # noqa: F401

    model = keras.saving.load_model(path, safe_mode=True)
    opt = [np.asarray(v) for v in model.optimizer.variables]
    return [np.asarray(w) for w in model.weights] + opt, int(model.optimizer.iterations)


def assert_same_run(run: Path, reference: Path) -> None:
    """``run`` finished exactly as ``reference``: history (timing aside), steps, weights, best
    model, state; and holds no temporary file."""
    assert (run / "DONE").is_file()
    assert _history(run) == _history(reference)
    for name in ("last.keras", "model.keras"):
        (w, it), (w_ref, it_ref) = _weights(run / name), _weights(reference / name)
        assert it == it_ref, name
        assert len(w) == len(w_ref)
        for a, b in zip(w, w_ref, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    state, ref = read_state(run / "last.keras"), read_state(reference / "last.keras")
    assert state is not None and ref is not None
    assert {k: state[k] for k in ref} == ref
    assert read_json(run / "checkpoint" / "state.json") == state  # the copy caught up
    assert _temporaries(run) == []


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.startswith(".tmp-") or ".partial-" in p.name]


def _kill_chain(store: Path, run: Path, kills: list[str]) -> None:
    """One process per kill point (each must die there), then --resume to the end; the first
    is a plain run (no --resume, no --overwrite).  A process that finds temporaries of a
    killed one removes them and says so."""
    stale: list[Path] = []
    for i, kill in enumerate([*kills, None]):
        extra = ("--resume",) if i else ()
        proc = subprocess.run(_args(store, run, *extra), env=_env(kill), capture_output=True,
                              text=True, timeout=900)
        expected = 0 if kill is None else -signal.SIGKILL
        assert proc.returncode == expected, (kill, proc.returncode, proc.stderr[-3000:])
        if stale:
            assert "stale temporary" in proc.stderr and stale[0].name in proc.stderr
            assert not any(p.exists() for p in stale)
        stale = _temporaries(run)


def test_kill_points_are_known() -> None:
    for name in KILL_POINTS:
        assert name.replace("-", "").isalpha()
    source = (REPO / "src" / "braintseg").rglob("*.py")
    used = {p for f in source for p in KILL_POINTS if f'kill_point("{p}")' in f.read_text()}
    assert used == set(KILL_POINTS)


@pytest.mark.slow
def test_sigkill_at_every_point_then_resume_equals_uninterrupted(
    synthetic_store: Path, two_epoch_run: Path, tmp_path: Path
) -> None:
    """Every kill point (``committed``: the default test), epoch 1 then epoch 2; after the
    last one the run is complete and the final --resume only writes DONE."""
    run = tmp_path / "run"
    kills = ["startup:1", "batch:2", "epoch-end:1", "save-model:1", "save-state:1",
             "best-copied:1", "batch:2", "epoch-end:1", "saved:1"]
    assert set(KILL_POINTS) - {k.partition(":")[0] for k in kills} == {"committed"}
    _kill_chain(synthetic_store, run, kills)
    assert_same_run(run, two_epoch_run)


def _default_sigint() -> None:  # a shell's background job inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_signal(args: list[str], watch: Path, sig: int) -> subprocess.CompletedProcess:
    """Start ``args``, send ``sig`` as soon as ``watch`` is (re)written, wait for the end."""
    before = watch.stat().st_ino if watch.exists() else None
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 300
        while not (watch.exists() and watch.stat().st_ino != before):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"{watch} never written"
            time.sleep(0.01)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_sigterm_at_startup_then_sigkill_inside_checkpoint_saves_then_resume_equals_uninterrupted(
    synthetic_store: Path, smoke_cfg: Config, two_epoch_run: Path, tmp_path: Path
) -> None:
    """1. SIGTERM while Keras is being imported (run.json is written just before): exit 75, one
    line, no traceback, no TensorFlow start-up banner; the folder holds config and run.json but
    no checkpoint, so it is not a started run and --resume would start it at epoch 1.
    2. A plain rerun (no --overwrite) is SIGKILLed while the first checkpoint is a complete but
    uncommitted temporary file; 3. a --resume just after the commit (model.keras and
    state.json not updated yet); 4. a last --resume finishes: the run equals the uninterrupted
    one.  (Three processes that train: the default run's share of crash tests.)"""
    from braintseg.training.train import check_run_dir
    from conftest import TINY_TRAIN

    run = tmp_path / "run"
    done = _start_and_signal(_args(synthetic_store, run), run / "run.json", signal.SIGTERM)
    assert done.returncode == 75, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("braintseg: SIGTERM during start-up") and "--resume" in last, last
    assert "Traceback" not in done.stderr
    assert "cpu_feature_guard" not in done.stderr and "absl::InitializeLog" not in done.stderr
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()
    assert not (run / "last.keras").exists() and not RunPaths(run).started()
    cfg, run_info = smoke_cfg.replace(train=TINY_TRAIN), read_json(run / "run.json")
    assert check_run_dir(RunPaths(run), cfg, run_info, resume=True, overwrite=False) is None

    _kill_chain(synthetic_store, run, ["save-state:1", "committed:1"])
    assert_same_run(run, two_epoch_run)


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(
    synthetic_store: Path, two_epoch_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    args = _args(synthetic_store, run, "--resume", epochs=3)
    done = _start_and_signal(args, run / "run.json", signal.SIGINT)
    assert done.returncode == 130, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert last.startswith("braintseg: interrupted; checkpoint ") and "2 finished epoch" in last
    command = (f"braintseg train -i {synthetic_store} --fold 0 -o {run} -c {SMOKE} "
               "--set train.epochs=3 --resume")
    assert last.endswith(f"continue with: {command}"), last
    assert read_state(run / "last.keras")["epochs_done"] == 2  # untouched


def _block_readers(store: Path) -> list[int]:
    """Live (not zombie) block reader processes of ``store`` on this machine."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"braintseg.store.blockprocs" in cmd and str(store).encode() in cmd and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.slow  # three trainings, ~2 min on 2 cores
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_stream_mode_sigkill_leaves_no_reader_and_resume_equals_uninterrupted(
    synthetic_store: Path, tmp_path: Path
) -> None:
    """Stream mode with worker processes: SIGKILL of the trainer just after epoch 1's commit
    leaves no block reader process and no shared-memory segment, and --resume finishes exactly
    as an uninterrupted stream-mode run."""
    stream = ("--set", "train.cache=stream", "--set", "train.read_processes=2")
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_args(synthetic_store, ref, *stream), env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stream mode reads on" not in done.stderr  # worker processes, not the fallback
    proc = subprocess.Popen(_args(synthetic_store, run, *stream), env=_env("committed:1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    deadline = time.monotonic() + 30
    segments = lambda: list(Path("/dev/shm").glob(f"braintseg_{proc.pid}_*"))  # noqa: E731
    while (_block_readers(synthetic_store) or segments()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _block_readers(synthetic_store) == [] and segments() == []
    done = subprocess.run(_args(synthetic_store, run, *stream, "--resume"), env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, ref)


def _catches(pid: int, sig: int) -> bool:
    """Process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigCgt"))
    return bool(mask >> (sig - 1) & 1)


def _signal_early(args: list[str], sig: int, after: float) -> subprocess.CompletedProcess:
    """Start ``args`` and send ``sig`` ``after`` seconds after the first instant the process
    has a handler for it: braintseg's first code (the package's import).  Before that only
    Python itself runs and no handler can exist; a signal then kills the process (0.05 s on
    an idle machine, seconds on a busy one: a fixed instant after the start is no test)."""
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not _catches(proc.pid, sig):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no handler after 120 s"
            time.sleep(0.001)
        time.sleep(after)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_a_stop_signal_in_the_first_instants_ends_with_75_before_training(
    synthetic_store: Path, tmp_path: Path, sig: int
) -> None:
    """From the first instant braintseg code runs (the package's import, long before click,
    the config and the store: 0.2-0.4 s on a busy machine, during which a signal used to kill
    the process with 138/143, so train.sbatch did not requeue) to the Keras import: exit 75,
    one line, no traceback, nothing trained."""
    name = signal.Signals(sig).name
    for when in (0.0, 0.05, 0.2, 0.5):
        run = tmp_path / f"run-{when}"
        done = _signal_early(_args(synthetic_store, run), sig, when)
        assert done.returncode == 75, (when, done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("braintseg:")]
        assert len(lines) == 1 and lines[0] == done.stderr.strip().splitlines()[-1], done.stderr
        # the start-up phase it lands in depends on the machine's speed: "start-up" (before
        # Keras), "start-up (importing Keras)" or "start-up (building the model)"
        assert re.match(rf"braintseg: {name} during start-up( \([a-zA-Z ]+\))?: stopped before "
                        r"training began, no checkpoint yet \(", lines[0]), lines[0]
        assert not (run / "last.keras").exists()


def test_a_stop_signal_while_the_command_reads_its_config_ends_with_75(
    synthetic_store: Path, tmp_path: Path
) -> None:
    """The config is a FIFO: ``train`` waits in the config's read (before run_train and its
    handlers) until the test writes it; a USR1 meanwhile used to kill the process (-10)."""
    fifo = tmp_path / "slow.yaml"
    os.mkfifo(fifo)
    run = tmp_path / "run"
    args = [*_args(synthetic_store, run)[:-4], "-c", str(fifo)]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        with fifo.open("w") as f:  # returns once train opened the config for reading
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            f.write(SMOKE.read_text())
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "braintseg: SIGUSR1 during start-up: stopped before training began"), err[-3000:]


def test_a_stop_signal_at_the_start_of_a_resume_names_the_unchanged_checkpoint(
    synthetic_store: Path, two_epoch_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    before = (run / "last.keras").read_bytes()
    done = _signal_early(_args(synthetic_store, run, "--resume", epochs=3), signal.SIGUSR1,
                         0.0)
    assert done.returncode == 75, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert last.startswith(f"braintseg: SIGUSR1 during start-up: stopped before training "
                           f"began, its checkpoint {run / 'last.keras'} is unchanged"), last
    assert (run / "last.keras").read_bytes() == before


def _shm_segments(pid: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"braintseg_{pid}_*"))


@pytest.mark.slow  # two trainings (~2 min on a busy 2-core machine)
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_stream_mode_usr1_to_the_whole_process_group_ends_with_75_then_resumes(
    synthetic_store: Path, tmp_path: Path
) -> None:
    """``kill -USR1 -- -PGID`` (what ``scancel --signal=USR1`` / srun's forwarding does: every
    process of the step) while stream mode trains with 2 reader processes: the readers and
    multiprocessing's resource tracker survive it, the trainer saves and exits 75 with one
    line and no traceback, no reader or shared-memory segment is left, and --resume ends."""
    stream = ("--set", "train.cache=stream", "--set", "train.read_processes=2")
    run = tmp_path / "run"
    proc = subprocess.Popen(_args(synthetic_store, run, *stream, epochs=1), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while len(_block_readers(synthetic_store)) < 2 or not _shm_segments(proc.pid):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the block readers never started"
            time.sleep(0.05)
        readers = _block_readers(synthetic_store)
        os.killpg(proc.pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    for bad in ("Traceback", "KeyError", "resource_tracker", "died"):
        assert bad not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("braintseg:")]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err[-3000:]
    assert lines[0].startswith("braintseg: SIGUSR1: checkpoint saved in "), lines[0]
    assert (run / "last.keras").is_file()
    assert not any(Path(f"/proc/{r}").exists() and " Z " not in Path(f"/proc/{r}/stat")
                   .read_text() for r in readers)
    assert _block_readers(synthetic_store) == [] and _shm_segments(proc.pid) == []
    done = subprocess.run(_args(synthetic_store, run, *stream, "--resume", epochs=1),
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "DONE").is_file() and "Traceback" not in done.stderr
