"""The Slurm job scripts on a real one-node Slurm (scripts/slurm_local.sh).

The cluster is started once for this module (munged, slurmctld, slurmd with state and logs in a
temporary folder) and stopped by pid afterwards.  Tests skip when the Slurm binaries are absent
or when not running as root.  Two kinds of tests:

* the job scripts' mechanics with a stand-in trainer (a small Python program that trains
  "epochs" by sleeping, checkpoints on USR1/TERM and exits 75, as ``braintseg train`` does);
* the real thing: ``train.sbatch`` running ``braintseg train`` receives the walltime warning,
  requeues itself and resumes; ``submit_cv.sh`` runs prepare → train → predict → evaluate.
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
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm_local.sh"
SUBMIT_CV = REPO / "scripts" / "submit_cv.sh"
SLURM_DIR = REPO / "slurm"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
#: options that turn the GPU job scripts into CPU jobs on the GRES-less test cluster
CPU_OPTS = ["--gres=none", "--cpus-per-task=1", "--mem=1G"]

slurm_mark = [pytest.mark.slurm, pytest.mark.slow]


# --------------------------------------------------------------------------- no cluster needed


@pytest.mark.parametrize("name", ["prepare", "train", "predict", "evaluate"])
def test_job_script_has_usage_strict_mode_and_no_site_specifics(name):
    text = (SLURM_DIR / f"{name}.sbatch").read_text()
    header = text.split("set -euo pipefail")[0]
    assert text.startswith("#!/usr/bin/env bash\n") and "Usage" in header
    assert re.search(r"^set -euo pipefail$", text, re.M)
    assert subprocess.run(["bash", "-n", str(SLURM_DIR / f"{name}.sbatch")]).returncode == 0
    variables = set(re.findall(r"\$\{([A-Z_]+)[:}]", text)) - {
        "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
        "SLURM_CPUS_PER_TASK", "CUDA_VISIBLE_DEVICES"}
    undocumented = [v for v in variables if not re.search(rf"^#.*\b{v}\b", header, re.M)]
    assert not undocumented, f"variables read but not in the usage header: {undocumented}"
    for key in ("partition", "account"):  # placeholders only, commented out
        assert not re.search(rf"^#SBATCH --{key}", text, re.M)
        assert re.search(rf"^##SBATCH --{key}=YOUR_", text, re.M)
    assert not re.search(r"/home/|/scratch/|/work/", text)


def fake_singularity(tmp_path: Path) -> tuple[dict[str, str], Path]:
    record = tmp_path / "argv.txt"
    fake = tmp_path / "singularity"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    return env | {"SINGULARITY": str(fake), "IMAGE": str(tmp_path / "b.sif")}, record


def test_prepare_with_image_runs_singularity_exec_nv_with_workers(tmp_path):
    env, record = fake_singularity(tmp_path)
    env |= {"DATA": "/in", "STORE": str(tmp_path / "s.h5"), "N_FOLDS": "3",
            "SET": "data.crop=auto store.dtype=float32", "BIND": "/a,/b:/c",
            "SLURM_CPUS_PER_TASK": "6"}
    out = subprocess.run(["bash", str(SLURM_DIR / "prepare.sbatch")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert record.read_text().splitlines() == [
        "exec", "--nv", "--bind", "/a,/b:/c", str(tmp_path / "b.sif"), "braintseg",
        "prepare", "-i", "/in", "-o", str(tmp_path / "s.h5"), "--workers", "6",
        "--set", "data.n_folds=3", "--set", "data.crop=auto", "--set", "store.dtype=float32"]


@pytest.mark.parametrize("task, view, fold", [(0, "axial", 0), (4, "axial", 4),
                                              (5, "coronal", 0), (9, "coronal", 4)])
def test_train_maps_array_task_to_view_and_fold(tmp_path, task, view, fold):
    env, record = fake_singularity(tmp_path)
    env |= {"STORE": "/s.h5", "CV_DIR": str(tmp_path / "cv"), "VIEWS": "axial coronal",
            "SLURM_ARRAY_TASK_ID": str(task)}
    out = subprocess.run(["bash", str(SLURM_DIR / "train.sbatch")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    argv = record.read_text().splitlines()
    assert argv[argv.index("--fold") + 1] == str(fold)
    assert argv[argv.index("-o") + 1] == str(tmp_path / "cv" / "runs" / f"{view}_f{fold}")
    assert argv[-1] == f"train.view={view}" and "--resume" not in argv


def test_train_rejects_an_array_task_beyond_folds_times_views(tmp_path):
    env, _ = fake_singularity(tmp_path)
    env |= {"STORE": "/s.h5", "CV_DIR": str(tmp_path), "N_FOLDS": "2", "SLURM_ARRAY_TASK_ID": "2"}
    out = subprocess.run(["bash", str(SLURM_DIR / "train.sbatch")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "array task 2 is outside 0-1 for VIEWS='axial' N_FOLDS=2" in out.stderr


def test_submit_cv_dry_run_chains_the_four_jobs(tmp_path):
    out = subprocess.run(
        ["bash", str(SUBMIT_CV), "-d", str(tmp_path), "-o", str(tmp_path / "cv"), "-f", "3",
         "-v", "axial coronal", "--cpu", "--max-parallel", "2", "-g", "gpuq", "-n"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["prepare", "DRYRUN-prepare", "train", "DRYRUN-train",
                                  "predict", "DRYRUN-predict", "evaluate", "DRYRUN-evaluate"]
    cmds = {re.search(r"--job-name=bts-(\w+)", ln).group(1): ln
            for ln in out.stderr.splitlines() if ln.startswith("sbatch ")}
    assert "--array=0-5%2" in cmds["train"]
    assert "--dependency=afterok:DRYRUN-prepare" in cmds["train"]
    assert "--dependency=afterok:DRYRUN-train" in cmds["predict"]
    assert "--dependency=afterok:DRYRUN-predict" in cmds["evaluate"]
    for step in ("train", "predict"):
        assert "--gres=none" in cmds[step] and "--partition=gpuq" in cmds[step]
    assert "--gres" not in cmds["prepare"] + cmds["evaluate"]


@pytest.mark.parametrize("args, message", [
    (["-v", "axil"], "unknown view 'axil'"),
    (["-f", "1"], "--folds must be an integer >= 2; received '1'"),
    (["-s", "train.epochs"], "--set expects KEY=VALUE; received 'train.epochs'"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_submit_cv_rejects_bad_options(tmp_path, args, message):
    out = subprocess.run(["bash", str(SUBMIT_CV), "-d", str(tmp_path), "-o", str(tmp_path / "cv"),
                          "-n", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr, out.stderr


# --------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the local Slurm; yield the environment for sbatch & co; stop it afterwards."""
    missing = [b for b in BINARIES if shutil.which(b, path=PATH) is None]
    if missing:
        pytest.skip(f"Slurm binaries not on PATH: {', '.join(missing)} "
                    "(apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm needs root (slurmd starts jobs as their user)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(PATH=PATH, SLURM_CONF=str(folder / "slurm.conf"))
    start = subprocess.run(["bash", str(SLURM_LOCAL), "start", str(folder)], env=env,
                           capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop", str(folder)], env=env, timeout=120)


def sbatch(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    """Submit; return the job id."""
    out = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def jobs(env: dict[str, str], job_id: str) -> list[dict[str, str]]:
    """``scontrol show job`` records (one per array task) as dicts."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]


def wait(env: dict[str, str], job_ids: list[str], timeout: float) -> None:
    """Wait until none of ``job_ids`` is pending or running (they stay visible afterwards)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for j in job_ids for r in jobs(env, j)]
        if all(r["JobState"] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")
               for r in records):
            return
        time.sleep(1)
    pytest.fail(f"jobs {job_ids} not finished after {timeout} s: "
                f"{[(r['JobId'], r['JobState'], r.get('Reason')) for r in records]}")


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def epochs(history: Path) -> list[int]:
    """The ``epoch`` column of a Keras CSV log."""
    if not history.exists():
        return []
    with history.open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


# --------------------------------------------------------------------------- stand-in trainer

FAKE_TRAIN = r'''
"""Stand-in for `braintseg train`: epochs of STEPS sleeps; USR1/TERM -> checkpoint, exit 75."""
import csv, json, os, signal, sys, time
from pathlib import Path

args = sys.argv[1:]
assert args[0] == "train", args
run = Path(args[args.index("-o") + 1])
sets = dict(a.split("=", 1) for i, a in enumerate(args) if i and args[i - 1] == "--set")
total = int(sets.get("train.epochs", "4"))
stop = []
signal.signal(signal.SIGUSR1, lambda s, f: stop.append(s))
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
state = run / "checkpoint" / "state.json"
if "--resume" in args:
    start = json.loads(state.read_text())["next_epoch"]
else:
    # as braintseg: only a folder with a checkpoint holds a run (one stopped before its first
    # checkpoint starts again without a flag)
    if (run / "last.keras").exists() and "--overwrite" not in args:
        sys.exit(f"{run} holds a run; use --resume or --overwrite")
    run.mkdir(parents=True, exist_ok=True)
    (run / "history.csv").write_text("epoch,loss\n")
    start = 0
with open(run / "invocations.txt", "a") as fh:
    fh.write(" ".join(args) + f" restart={os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
for epoch in range(start, total):
    for _ in range(4):
        time.sleep(0.25)
        if stop:
            break
    if stop:  # the unfinished epoch is dropped; resume starts it again
        print(f"signal {stop[0]}: checkpoint at epoch {epoch}", flush=True)
        sys.exit(75)
    with open(run / "history.csv", "a") as fh:
        fh.write(f"{epoch},{1.0 / (epoch + 1):.4f}\n")
    state.parent.mkdir(exist_ok=True)
    (run / "last.keras").write_text(f"weights after epoch {epoch}")  # braintseg's layout
    state.write_text(json.dumps({"next_epoch": epoch + 1}))
(run / "DONE").write_text("done\n")
'''


@pytest.fixture()
def fake_env(slurm: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment for train.sbatch with the stand-in trainer, 2 folds of one view."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    return slurm | {"BRAINTSEG": f"{sys.executable} {fake}", "STORE": str(tmp_path / "s.h5"),
                    "CV_DIR": str(tmp_path / "cv"), "N_FOLDS": "2", "VIEWS": "axial"}


# --------------------------------------------------------------------------- tests


@pytest.mark.slurm
@pytest.mark.slow
def test_trivial_job_output_lands_and_exit_codes_are_reported(slurm, tmp_path):
    ok = sbatch(slurm, "-o", str(tmp_path / "ok-%j.out"), "--wrap", "echo hello $SLURM_JOB_ID")
    bad = sbatch(slurm, "-o", str(tmp_path / "bad.out"), "--wrap", "exit 3")
    wait(slurm, [ok, bad], timeout=60)
    assert (tmp_path / f"ok-{ok}.out").read_text().strip() == f"hello {ok}"
    assert jobs(slurm, ok)[0]["JobState"] == "COMPLETED"
    assert (jobs(slurm, bad)[0]["JobState"], jobs(slurm, bad)[0]["ExitCode"]) == ("FAILED", "3:0")


@pytest.mark.slurm
@pytest.mark.slow
def test_usr1_requeues_the_array_task_which_resumes_and_afterok_waits(fake_env, tmp_path):
    cv = Path(fake_env["CV_DIR"])
    env = fake_env | {"SET": "train.epochs=8"}
    array = sbatch(env, *CPU_OPTS, "--array=0-1", "-o", str(tmp_path / "t-%A_%a.out"),
                   str(SLURM_DIR / "train.sbatch"))
    after = sbatch(env, f"--dependency=afterok:{array}", "-o", str(tmp_path / "after.out"),
                   "--wrap", "date +%s.%N")
    history = cv / "runs" / "axial_f0" / "history.csv"
    wait_for(lambda: len(epochs(history)) >= 2, 60, "two epochs of task 0")
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array}_0"], env=env, check=True)
    wait(env, [array, after], timeout=120)

    tasks = {r["ArrayTaskId"]: r for r in jobs(env, array)}
    assert {t: (r["JobState"], r["Restarts"]) for t, r in tasks.items()} == {
        "0": ("COMPLETED", "1"), "1": ("COMPLETED", "0")}
    for fold in (0, 1):
        assert epochs(cv / "runs" / f"axial_f{fold}" / "history.csv") == list(range(8))
        assert (cv / "runs" / f"axial_f{fold}" / "DONE").exists()
    calls = (cv / "runs" / "axial_f0" / "invocations.txt").read_text().splitlines()
    assert len(calls) == 2 and "--resume" not in calls[0] and "--resume" in calls[1], calls
    assert "--fold 0" in calls[0] and "train.view=axial" in calls[0] and calls[1].endswith("=1")
    log = (tmp_path / f"t-{array}_0.out").read_text()  # --open-mode=append keeps both runs
    assert "got SIGUSR1" in log and f"requeueing {array}_0" in log and "restart 1" in log
    # afterok held the dependent job until the requeued task had completed
    assert jobs(env, after)[0]["JobState"] == "COMPLETED"
    ended = history.stat().st_mtime
    assert float((tmp_path / "after.out").read_text()) >= ended


@pytest.mark.slurm
@pytest.mark.slow
def test_walltime_warning_signal_requeues_until_all_epochs_are_done(fake_env, tmp_path):
    cv = Path(fake_env["CV_DIR"])
    env = fake_env | {"SET": "train.epochs=34"}  # 34 s of training > one 30 s tick
    job = sbatch(env, *CPU_OPTS, "--array=1", "--time=1", "--signal=B:USR1@40",
                 "-o", str(tmp_path / "w-%A_%a.out"), str(SLURM_DIR / "train.sbatch"))
    wait(env, [job], timeout=240)
    (task,) = jobs(env, job)
    assert task["JobState"] == "COMPLETED", task
    assert int(task["Restarts"]) >= 1, "the warning signal never caused a requeue"
    assert epochs(cv / "runs" / "axial_f1" / "history.csv") == list(range(34))
    log = (tmp_path / f"w-{job}_1.out").read_text()
    assert log.count("got SIGUSR1") >= 1 and "TIMEOUT" not in log


@pytest.mark.slurm
@pytest.mark.slow
def test_term_checkpoints_but_does_not_requeue(fake_env, tmp_path):
    cv = Path(fake_env["CV_DIR"])
    job = sbatch(fake_env | {"SET": "train.epochs=30"}, *CPU_OPTS, "--array=0",
                 "-o", str(tmp_path / "c.out"), str(SLURM_DIR / "train.sbatch"))
    history = cv / "runs" / "axial_f0" / "history.csv"
    wait_for(lambda: len(epochs(history)) >= 1, 60, "one epoch")
    subprocess.run(["scancel", job], env=fake_env, check=True)
    wait(fake_env, [job], timeout=60)
    (task,) = jobs(fake_env, job)
    assert (task["JobState"], task["Restarts"]) == ("CANCELLED", "0")
    assert (cv / "runs" / "axial_f0" / "checkpoint" / "state.json").exists()
    assert not (cv / "runs" / "axial_f0" / "DONE").exists()


# --------------------------------------------------------------------------- real braintseg

BRAINTSEG = f"{sys.executable} -m braintseg"
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.mark.slurm
@pytest.mark.slow
def test_train_job_requeues_at_the_warning_and_resumes_to_all_epochs(
    slurm, synthetic_store, tmp_path
):
    cv = tmp_path / "cv"
    env = slurm | {"BRAINTSEG": BRAINTSEG, "STORE": str(synthetic_store), "CV_DIR": str(cv),
                   "N_FOLDS": "2", "VIEWS": "axial", "CONFIG": str(SMOKE),
                   "SET": "train.epochs=6 train.steps_per_epoch=28"}
    job = sbatch(env, *CPU_OPTS, "--array=1", "-o", str(tmp_path / "train-%A_%a.out"),
                 str(SLURM_DIR / "train.sbatch"))
    run = cv / "runs" / "axial_f1"
    wait_for(lambda: len(epochs(run / "history.csv")) >= 1, 180, "the first epoch")
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], env=env, check=True)
    wait(env, [job], timeout=240)

    (task,) = jobs(env, job)
    log = (tmp_path / f"train-{job}_1.out").read_text()
    assert (task["JobState"], task["Restarts"]) == ("COMPLETED", "1"), log
    assert epochs(run / "history.csv") == list(range(1, 7)), log  # numbered from 1
    assert (run / "DONE").exists() and (run / "model.keras").exists()
    first, second = log.split("restart 1", 1)
    assert "got SIGUSR1" in first and f"requeueing {job}_1" in first and "finished" in second
    commands = [ln for ln in log.splitlines()
                if ln.startswith("train.sbatch: ") and " train -i " in ln]
    assert len(commands) == 2 and not commands[0].endswith("--resume"), commands
    assert commands[1].endswith("--resume"), commands


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_cv_chain_runs_to_metrics(slurm, synthetic_root, tmp_path):
    cv = tmp_path / "cv"
    env = slurm | {"BRAINTSEG": BRAINTSEG}
    out = subprocess.run(
        ["bash", str(SUBMIT_CV), "-d", str(synthetic_root), "-o", str(cv), "-c", str(SMOKE),
         "-f", "2", "-v", "axial", "-s", "train.epochs=2", "--cpu", "--",
         "--cpus-per-task=1", "--mem=1G"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ids = dict(line.split() for line in out.stdout.splitlines())
    assert list(ids) == ["prepare", "train", "predict", "evaluate"]
    new_case = next(p.parent for p in synthetic_root.rglob("*-seg.nii.gz"))
    ensemble = sbatch(env | {"CV_DIR": str(cv), "INPUT": str(new_case)}, "--gres=none",
                      "--cpus-per-task=1", "--mem=1G", f"--dependency=afterok:{ids['train']}",
                      "-o", str(cv / "logs" / "ensemble.out"), str(SLURM_DIR / "predict.sbatch"))
    wait(env, [*ids.values(), ensemble], timeout=420)

    states = {step: [r["JobState"] for r in jobs(env, i)] for step, i in ids.items()}
    logs = "\n".join(p.read_text() for p in sorted((cv / "logs").iterdir()))
    assert states == {"prepare": ["COMPLETED"], "train": ["COMPLETED"] * 2,
                      "predict": ["COMPLETED"], "evaluate": ["COMPLETED"]}, logs
    assert (cv / "store.h5").is_file()
    for fold in (0, 1):
        assert epochs(cv / "runs" / f"axial_f{fold}" / "history.csv") == [1, 2]  # from 1
        assert (cv / "predictions" / f"predictions_f{fold}.csv").is_file()
    with (cv / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    cases = {p.parent.name for p in synthetic_root.rglob("*seg.nii.gz")}
    assert len(cases) == 4 and {r["case"] for r in rows} == cases
    assert {r["status"] for r in rows} == {"ok"}  # every case predicted by its own fold
    assert all(0.0 <= float(r["wt_dice"]) <= 1.0 for r in rows)
    assert sorted(p.name for p in (cv / "predictions").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in cases)
    # INPUT mode: the new case predicted by the ensemble of both folds' runs
    assert jobs(env, ensemble)[0]["JobState"] == "COMPLETED", logs
    assert (cv / "predictions_input" / f"{new_case.name}.nii.gz").is_file()
    record = yaml.safe_load((cv / "predictions_input" / "predict_config.yaml").read_text())
    assert len(record["runs"]) == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_job_stops_both_tasks_at_one_step_and_the_requeue_resumes(
    slurm, synthetic_store, tmp_path
):
    """``srun`` of two ``braintseg train`` processes (JAX distribution, one CPU each) from
    train.sbatch: USR1 to the batch script reaches both tasks through srun; they stop before
    the same training step, process 0 alone writes the run, every task exits 75, the job
    requeues itself and resumes on two tasks to the full epoch count."""
    cv = tmp_path / "cv"
    env = slurm | {
        "BRAINTSEG": BRAINTSEG, "STORE": str(synthetic_store), "CV_DIR": str(cv),
        "N_FOLDS": "2", "VIEWS": "axial", "CONFIG": str(SMOKE), "JAX_PLATFORMS": "cpu",
        "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
        "SET": "train.epochs=12 train.steps_per_epoch=3 train.validation_steps=1 "
               "train.batch_size=4 train.cache=ram"}
    job = sbatch(env, "--gres=none", "--ntasks=2", "--cpus-per-task=1", "--mem=6G",
                 "--array=1", "-o", str(tmp_path / "two-%A_%a.out"),
                 str(SLURM_DIR / "train.sbatch"))
    run = cv / "runs" / "axial_f1"
    out = tmp_path / f"two-{job}_1.out"
    wait_for(lambda: len(epochs(run / "history.csv")) >= 1, 600, "the first epoch")
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], env=env, check=True)
    wait(env, [job], timeout=900)

    (task,) = jobs(env, job)
    log = out.read_text()
    assert (task["JobState"], task["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    assert epochs(run / "history.csv") == list(range(1, 13)), log[-4000:]
    assert (run / "DONE").exists() and (run / "model.keras").exists()
    first, second = log.split("restart 1", 1)
    commands = [ln for ln in log.splitlines() if ln.startswith("train.sbatch: srun ")]
    assert len(commands) == 2 and "--resume" not in commands[0].split(), commands
    assert "--resume" in commands[1].split(), commands
    assert "train.distribution=data_parallel" in commands[0]
    # both tasks stopped before the same step: process 0 saved at step S, process 1 says S
    saved = re.findall(r"checkpoint saved in \S+ after \d+ finished epochs "
                       r"\(training step (\d+)\)", first)
    peer = re.findall(r"stopped at training step (\d+) with the other processes", first)
    assert len(saved) == 1 and peer == saved, first[-4000:]
    assert f"requeueing {job}_1" in first and "finished" in second
    assert sorted(p.name for p in cv.iterdir()) == ["runs"]  # nothing beside the run
    assert sorted(p.name for p in (cv / "runs").iterdir()) == ["axial_f1"]


@pytest.mark.slurm
@pytest.mark.slow
def test_stream_mode_usr1_to_every_process_of_the_job_requeues_and_resumes(
    slurm, synthetic_store, tmp_path
):
    """``scancel --signal=USR1 --full``: the batch script, braintseg, its block reader
    processes and multiprocessing's resource tracker all get the signal, shortly after the
    start (start-up or the first steps); the task still requeues itself, resumes and
    finishes, with no traceback in its log and no shared-memory segment left."""
    cv = tmp_path / "cv"
    env = slurm | {"BRAINTSEG": BRAINTSEG, "STORE": str(synthetic_store), "CV_DIR": str(cv),
                   "N_FOLDS": "2", "VIEWS": "axial", "CONFIG": str(SMOKE),
                   "SET": "train.epochs=2 train.cache=stream train.read_processes=2"}
    job = sbatch(env, *CPU_OPTS, "--array=1", "-o", str(tmp_path / "s-%A_%a.out"),
                 str(SLURM_DIR / "train.sbatch"))
    out = tmp_path / f"s-{job}_1.out"
    wait_for(lambda: out.exists() and " train -i " in out.read_text(), 120, "the start")
    time.sleep(2)
    subprocess.run(["scancel", "--signal=USR1", "--full", f"{job}_1"], env=env, check=True)
    wait(env, [job], timeout=600)

    (task,) = jobs(env, job)
    log = out.read_text()
    run = cv / "runs" / "axial_f1"
    assert (task["JobState"], task["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    assert epochs(run / "history.csv") == [1, 2], log[-4000:]
    assert (run / "DONE").exists()
    first, _ = log.split("restart 1", 1)
    assert "got SIGUSR1" in first and f"requeueing {job}_1" in first, first[-4000:]
    assert "Traceback" not in log and "KeyError" not in log, log[-4000:]
    assert not [p for p in Path("/dev/shm").glob("braintseg_*")
                if not Path(f"/proc/{p.name.split('_')[1]}").exists()]


def test_train_killed_by_the_forwarded_usr1_while_starting_counts_as_a_stop(tmp_path):
    """A USR1 during Python's own start-up (before braintseg's first line can catch it) kills
    the trainer (exit 138): nothing was saved, so the script treats it as a stop (75, requeue
    under Slurm), not as a failure.  The stand-in keeps USR1's default action."""
    fake = tmp_path / "starting.py"
    fake.write_text("import time\ntime.sleep(60)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env |= {"BRAINTSEG": f"{sys.executable} {fake}", "STORE": "/s.h5",
            "CV_DIR": str(tmp_path / "cv")}
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "train.sbatch")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(str(fake) in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                  for p in _children(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "got SIGUSR1" in err and "killed by SIGUSR1 while starting; nothing to save" in err


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
