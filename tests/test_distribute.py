"""One training over several devices and processes (``train.distribution``,
braintseg.training.distribute).

Fast tests: the batch sharding of :class:`SliceDataset` (the union of the processes' rows is the
one-process batch), the launch and batch checks.  Slow tests run real trainings in subprocesses
(the device count must be set before the framework starts): JAX with
``--xla_force_host_platform_device_count=2``, TensorFlow with two logical CPUs, two JAX
processes on 127.0.0.1, a signal to one of them, a killed peer.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from braintseg.config import Config
from braintseg.errors import ConfigError
from braintseg.training.augment import Augmenter
from braintseg.training.distribute import Launch, Session
from braintseg.training.generator import SliceDataset, release_store

REPO = Path(__file__).resolve().parents[1]
#: the run of the equality tests: one step per epoch, so history.csv holds every step's loss.
#: SGD, not Adam: Adam turns the rounding noise of a near-zero gradient (the bias of a conv
#: before BatchNorm) into a full-size step, which hides what the test compares.
STEPS = ["train.epochs=3", "train.steps_per_epoch=1", "train.validation_steps=1",
         "train.batch_size=4", "train.optimizer=sgd", "train.learning_rate=0.01",
         "train.cache=ram"]
#: run braintseg's CLI after giving TensorFlow N logical CPUs (env BTS_TF_CPUS)
TF_CLI = (
    "import os, sys\n"
    "n = int(os.environ.get('BTS_TF_CPUS', '0'))\n"
    "if n:\n"
    "    import tensorflow as tf\n"
    "    cpu = tf.config.list_physical_devices('CPU')[0]\n"
    "    tf.config.set_logical_device_configuration(\n"
    "        cpu, [tf.config.LogicalDeviceConfiguration()] * n)\n"
    "from braintseg.cli import cli\n"
    "cli(sys.argv[1:])\n"
)


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_union_of_process_shards_is_the_one_process_batch(synthetic_store: Path,
                                                          smoke_cfg: Config, cache: str) -> None:
    from braintseg.store.read import open_store

    train_ids = open_store(synthetic_store).fold_cases(0)[0]
    common = dict(view="axial", batch_size=6, shuffle=True, seed=7, cache=cache,
                  augment=Augmenter(flip=True, rotate_degrees=10.0, zoom=0.1),
                  tumour_oversampling=0.3, block_slices=8, buffer_blocks=2)
    whole = SliceDataset(synthetic_store, train_ids, **common)
    parts = [SliceDataset(synthetic_store, train_ids, shard=(k, 3), drop_remainder=True,
                          **common) for k in range(3)]
    try:
        assert len(parts[0]) == whole.n_slices // 6 == len(whole) - 1  # ragged last dropped
        for epoch in (0, 1):
            for i in (0, len(parts[0]) - 1):
                (x, t), y = whole.batch(epoch, i)  # rotation/zoom: (images, transforms)
                got = [p.batch(epoch, i) for p in parts]
                assert [g[0][0].shape[0] for g in got] == [2, 2, 2]
                np.testing.assert_array_equal(np.concatenate([g[0][0] for g in got]), x)
                np.testing.assert_array_equal(np.concatenate([g[0][1] for g in got]), t)
                np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)
        with pytest.raises(ConfigError, match="divide by the number of shards"):
            SliceDataset(synthetic_store, train_ids, **{**common, "batch_size": 4},
                         shard=(0, 3))
    finally:
        for ds in (whole, *parts):
            ds.close()
        release_store(synthetic_store)


def test_batch_must_divide_by_devices_and_launch_options_go_together(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"batch_size=6 .* the 4 devices"):
        Session(mode="data_parallel", n_devices=4).check_batch(6)
    Session(mode="data_parallel", n_devices=4).check_batch(8)
    for key in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                "KERAS_DISTRIBUTION_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    assert not Launch.from_options(None, None, None).multi_process
    with pytest.raises(ConfigError, match="--coordinator HOST:PORT, --num-processes N"):
        Launch.from_options(None, 2, 0)
    with pytest.raises(ConfigError, match="--process-id must be in 0..1"):
        Launch.from_options("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:99,10.0.0.2:99")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    assert Launch.from_options(None, None, None) == Launch("10.0.0.1:99", 2, 1)


def _env(backend: str, devices: int = 1, **extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO / "src"),
           "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env.pop("SLURM_NTASKS", None)
    env.pop("SLURM_STEP_NUM_TASKS", None)
    if backend == "jax":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env["BTS_TF_CPUS"] = str(devices)
    return env


def _train_cmd(store: Path, out: Path, *sets: str) -> list[str]:
    cmd = [sys.executable, "-c", TF_CLI, "train", "-c", str(REPO / "configs" / "smoke.yaml"),
           "-i", str(store), "--fold", "0", "-o", str(out)]
    for s in (*STEPS, *sets):
        cmd += ["--set", s]
    return cmd


def test_jax_batch_not_divisible_by_two_devices_is_one_line(synthetic_store, tmp_path) -> None:
    cmd = _train_cmd(synthetic_store, tmp_path / "r", "train.distribution=data_parallel",
                     "train.batch_size=3")
    proc = subprocess.run(cmd, env=_env("jax", 2), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert ("train.batch_size=3 (the global batch) must divide by the 2 devices"
            in proc.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- slow: real training


def _history(run: Path) -> list[float]:
    with (run / "history.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    import braintseg.model  # noqa: F401
    import braintseg.training.losses  # noqa: F401 - registers custom objects
    import braintseg.training.metrics  # noqa: F401

    model = keras.saving.load_model(path, safe_mode=True)
    return [np.asarray(w) for w in model.weights]


def _assert_same_training(a: Path, b: Path, atol: float = 1e-5) -> None:
    la, lb = _history(a), _history(b)
    assert len(la) == len(lb) == 3
    np.testing.assert_allclose(la, lb, atol=atol, rtol=0)  # per-step loss
    wa, wb = _weights(a / "last.keras"), _weights(b / "last.keras")
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)  # final weights


def _run(cmd: list[str], env: dict[str, str], timeout: int = 900) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def jax_one_device(synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jax1") / "run"
    _run(_train_cmd(synthetic_store, out), _env("jax", 1))
    return out


@pytest.mark.slow
def test_jax_two_devices_equal_one_device(synthetic_store, jax_one_device, tmp_path) -> None:
    out = tmp_path / "two"
    _run(_train_cmd(synthetic_store, out, "train.distribution=data_parallel"), _env("jax", 2))
    _assert_same_training(jax_one_device, out)


@pytest.mark.slow
def test_tensorflow_two_logical_cpus_equal_one_device(synthetic_store, tmp_path) -> None:
    """MirroredStrategy: synchronised BatchNorm and global-batch Dice sums make two replicas
    compute the one-device step (the input noise layer is off: each replica draws its own)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_train_cmd(synthetic_store, one, "model.noise_stddev=0"), _env("tensorflow", 1))
    _run(_train_cmd(synthetic_store, two, "model.noise_stddev=0",
                    "train.distribution=data_parallel"), _env("tensorflow", 2))
    _assert_same_training(one, two)


@pytest.mark.slow
def test_one_device_checkpoint_resumes_on_two_devices_as_if_never_stopped(
        synthetic_store, jax_one_device, tmp_path) -> None:
    """2 epochs on one device, the 3rd resumed on two: the same losses and weights as the
    3 epochs of the one-device run (the reverse, 2 processes -> 1 device, is below)."""
    out = tmp_path / "moved"
    _run(_train_cmd(synthetic_store, out, "train.epochs=2"), _env("jax", 1))
    assert len(_history(out)) == 2
    _run(_train_cmd(synthetic_store, out, "train.distribution=data_parallel")
         + ["--resume"], _env("jax", 2))
    _assert_same_training(jax_one_device, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(store: Path, out: Path, *sets: str, extra: tuple[str, ...] = (),
               **env: str) -> list[subprocess.Popen[str]]:
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = _train_cmd(store, out, "train.distribution=data_parallel", *sets)
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(pid), *extra]
        log = open(out.parent / f"p{pid}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, env=_env("jax", 1, **env), stdout=log,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen[str]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


@pytest.mark.slow
def test_two_jax_processes_equal_one_device_and_only_process_0_writes(
        synthetic_store, jax_one_device, tmp_path) -> None:
    out = tmp_path / "runs" / "two"
    out.parent.mkdir()
    procs = _start_two(synthetic_store, out)
    codes = _wait(procs, 900)
    logs = [(out.parent / f"p{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    _assert_same_training(jax_one_device, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["p0.log", "p1.log", "two"]
    # the saved model loads in a one-device process (here TensorFlow) and predicts as the
    # one-device run's model
    import keras

    preds = []
    for run in (jax_one_device, out):
        model = keras.saving.load_model(run / "model.keras", safe_mode=True)
        shape = (2, *model.input_shape[1:])
        x = np.random.default_rng(0).normal(size=shape).astype("float32")
        preds.append(np.asarray(model(x, training=False)))
    np.testing.assert_allclose(preds[0], preds[1], atol=1e-5)


@pytest.mark.slow
def test_usr1_to_one_process_stops_both_at_the_same_step_and_resumes_on_one_device(
        synthetic_store, tmp_path) -> None:
    out = tmp_path / "runs" / "two"
    out.parent.mkdir()
    sets = ("train.epochs=40", "train.steps_per_epoch=3")
    procs = _start_two(synthetic_store, out, *sets)
    deadline = time.monotonic() + 1800  # the first epoch (compiling) on a busy CPU
    while not (out / "history.csv").is_file() or len(_history(out)) < 1:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGUSR1)  # only the non-writer hears it
    codes = _wait(procs, 300)
    logs = [(out.parent / f"p{i}.log").read_text() for i in range(2)]
    assert codes == [75, 75], logs[0][-2000:] + logs[1][-2000:]
    from braintseg.training.runs import read_json

    state = read_json(out / "checkpoint" / "state.json")
    done = state["epochs_done"]
    assert 1 <= done < 40 and len(_history(out)) == done
    # resume 2 processes -> 1 device, to the full epoch count
    _run(_train_cmd(synthetic_store, out, *sets, "train.epochs=" + str(done + 1)) + ["--resume"],
         _env("jax", 1))
    assert len(_history(out)) == done + 1 and (out / "DONE").exists()


@pytest.mark.slow
def test_a_start_up_signal_to_one_process_ends_both_with_75(synthetic_store, tmp_path) -> None:
    """SIGTERM to process 1 after the processes met (config agreed) but before training: it
    does not leave alone (process 0 would wait for it until its peer timeout, or fail in a
    collective) but goes on to the collective stop check before the first step, where both
    stop and exit 75 (process 0 checkpoints the untrained state)."""
    out = tmp_path / "runs" / "two"
    out.parent.mkdir()
    procs = _start_two(synthetic_store, out, "train.epochs=3",
                       BRAINTSEG_PEER_TIMEOUT="300", BRAINTSEG_HEARTBEAT_TIMEOUT="10")
    log1 = out.parent / "p1.log"
    deadline = time.monotonic() + 900
    while "distribution data_parallel" not in (log1.read_text() if log1.exists() else ""):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    start = time.monotonic()
    codes = _wait(procs, 240)
    took = time.monotonic() - start
    logs = [(out.parent / f"p{i}.log").read_text() for i in range(2)]
    assert codes == [75, 75], logs[0][-2000:] + logs[1][-2000:]
    assert took < 120, took  # well inside the 300 s peer timeout
    assert "SIGTERM during start-up" in logs[1] and "stops with the others" in logs[1]
    assert "stopped at training step 0 with the other processes" in logs[1]
    assert ("a stop signal to another process: checkpoint saved in" in logs[0]
            and "after 0 finished epochs (training step 0)" in logs[0]), logs[0][-2000:]


@pytest.mark.slow
def test_killed_peer_makes_the_other_exit_nonzero_in_bounded_time(synthetic_store,
                                                                  tmp_path) -> None:
    out = tmp_path / "runs" / "two"
    out.parent.mkdir()
    procs = _start_two(synthetic_store, out, "train.epochs=200",
                       BRAINTSEG_PEER_TIMEOUT="20", BRAINTSEG_HEARTBEAT_TIMEOUT="10")
    deadline = time.monotonic() + 1800  # the first epoch (compiling) on a busy CPU
    while not (out / "history.csv").is_file() or len(_history(out)) < 1:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    procs[1].kill()
    start = time.monotonic()
    code = _wait(procs[:1], 120)[0]
    assert code != 0 and time.monotonic() - start < 120


# --------------------------------------------------------------------------- job scripts


def _fake_bin(tmp_path: Path) -> dict[str, str]:
    """``srun`` that records its argv and the distribution variables, ``scontrol`` that
    expands a node list, ``braintseg`` that records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        f'{{ printf "%s\\n" "$@"; env | grep -E "^(KERAS_|SLURM_NTASKS)" | sort; }} '
        f'> {tmp_path}/srun.txt\n')
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu07\\ngpu08\\n"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "KERAS_"))}
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def test_train_sbatch_with_several_tasks_runs_srun_with_the_jax_distribution(tmp_path) -> None:
    env = _fake_bin(tmp_path) | {
        "STORE": "/s.h5", "CV_DIR": str(tmp_path / "cv"), "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}
    out = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rec = (tmp_path / "srun.txt").read_text().splitlines()
    assert rec[1] == "braintseg" and rec[2] == "train"
    assert "train.distribution=data_parallel" in rec and "--fold" in rec
    assert "KERAS_BACKEND=jax" in rec and "KERAS_DISTRIBUTION_NUM_PROCESSES=8" in rec
    assert "KERAS_DISTRIBUTION_JOB_ADDRESSES=gpu07:21234" in rec


def test_submit_cv_gpus_nodes_and_predict_shards(tmp_path) -> None:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "submit_cv.sh"), "-d", str(tmp_path), "-o",
         str(tmp_path / "cv"), "--gpus", "4", "--nodes", "2", "--predict-shards", "3", "-n"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["evaluate", "DRYRUN-evaluate-merge"]
    cmds = {ln.split("--job-name=bts-")[1].split()[0]: ln for ln in out.stderr.splitlines()
            if ln.startswith("sbatch ")}
    assert "--nodes=2 --ntasks-per-node=4 --gres=gpu:4" in cmds["train"]
    assert "--array=0-2" in cmds["predict"] and "--array=0-2" in cmds["evaluate"]
    assert "--dependency=afterok:DRYRUN-evaluate " in cmds["evaluate-merge"]
    assert "MERGE=1" in cmds["evaluate-merge"]
    bad = subprocess.run(["bash", str(REPO / "scripts" / "submit_cv.sh"), "-d", str(tmp_path),
                          "-o", str(tmp_path / "cv"), "--gpus", "0", "-n"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--gpus, --nodes and --predict-shards" in bad.stderr


def test_processes_with_different_configs_refuse_to_start(synthetic_store, tmp_path) -> None:
    out = tmp_path / "runs" / "two"
    out.parent.mkdir()
    port = _free_port()
    procs = []
    for pid, lr in ((0, "0.01"), (1, "0.02")):
        cmd = _train_cmd(synthetic_store, out, "train.distribution=data_parallel",
                         f"train.learning_rate={lr}")
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, env=_env("jax", 1, BRAINTSEG_PEER_TIMEOUT="60"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    errs = []
    for p in procs:
        errs.append(p.communicate(timeout=300)[1])
    assert [p.returncode for p in procs] == [1, 1], errs
    last = [e.strip().splitlines()[-1] for e in errs]
    for line in last:  # whichever process compares first says so; the other relays it
        assert re.search(r"process [01] has another config than process [01] \([0-9a-f]+ != "
                         r"[0-9a-f]+\); start every process with the same command$", line), line
    assert not out.exists()  # refused before anything was written
