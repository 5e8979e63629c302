"""Crash consistency of ``prepare``: SIGKILL at several points (``BRAINTSEG_PREPARE_KILL_AT``)
and from outside, then a rerun without ``--overwrite``; no worker process outlives its parent;
the Python API runs from a plain script without a ``__main__`` guard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from braintseg.preparation.output import KILL_POINTS
from braintseg.sources.synthetic import write_case
from braintseg.store.read import open_store

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--set", "data.crop=auto", "--set", "model.levels=2", "--set", "data.n_folds=2"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
N_CASES = 4


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash_in")
    for i in range(N_CASES):
        write_case(root, f"Brats18_K_{i}_1", (32, 32, 24), seed=i)
    return root


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def wait_group_gone(pgid: int, seconds: float = 5.0) -> list[int]:
    """Wait up to ``seconds`` for process group ``pgid`` to empty; the members left."""
    deadline = time.monotonic() + seconds
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def start(root: Path, out: Path, *extra: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:
    """``braintseg prepare`` with 2 workers in its own process group (pgid = its pid)."""
    return subprocess.Popen(
        [sys.executable, "-m", "braintseg", "prepare", "-i", str(root), "-o", str(out), *ARGS,
         "--workers", "2", *extra], env={**ENV, **(env or {})}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """A background job of a non-interactive shell (``cmd &``) inherits SIGINT ignored (and a
    thread may have it blocked), and so would braintseg: restore what a terminal's process has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for ``proc``; assert no process of its group outlives it by more than 5 s."""
    proc.wait(timeout=300)
    left = wait_group_gone(proc.pid)
    if left:  # orphans hold the pipes open: end them before reading
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert not left, f"processes of the killed prepare still run: {left}"
    return proc.returncode, err


def check_complete(out: Path) -> None:
    """A finished store with its files beside it, and no temporary file in its folder."""
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["s.config.yaml", "s.folds.json", "s.h5"], names
    store = open_store(out)
    assert store.n_cases == N_CASES and len(store.folds) == 2
    store.close()


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_each_point_then_plain_rerun(cases: Path, tmp_path: Path, point: str) -> None:
    out = tmp_path / "out" / "s.h5"
    code, err = finish(start(cases, out, env={"BRAINTSEG_PREPARE_KILL_AT": point}))
    assert code == -signal.SIGKILL, err
    # what a kill leaves: no store, or (killed after the rename) a store with its files
    assert out.exists() == (point == "renamed")
    if out.exists():
        check_complete(out)
    code, err = finish(start(cases, out))  # no --overwrite
    assert code == 0, err
    check_complete(out)
    if point in ("appended", "closed"):
        assert "removed 1 stale temporary file(s)" in err


def test_sigkill_from_outside_leaves_no_worker(cases: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    proc = start(cases, out, env={"BRAINTSEG_PREPARE_KILL_AT": ""})
    deadline = time.monotonic() + 60
    while len(group_members(proc.pid)) < 3 and proc.poll() is None:  # parent + 2 workers
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)  # hold it mid-run (tiny cases go fast), then kill it
    os.kill(proc.pid, signal.SIGKILL)
    code, _ = finish(proc)  # asserts the whole group is gone within 5 s
    assert code == -signal.SIGKILL
    assert not out.exists()


def test_ctrl_c_is_one_line_and_leaves_nothing(cases: Path, tmp_path: Path) -> None:
    """SIGINT to the whole group, as a terminal sends it: the parent says so in one line, the
    workers print nothing and end, and no temporary file is left."""
    out = tmp_path / "s.h5"
    for _ in range(5):  # tiny cases: a run may end before it is caught mid-run; try again
        proc = start(cases, out)
        deadline = time.monotonic() + 60
        while len(group_members(proc.pid)) < 3 and proc.poll() is None:  # parent + 2 workers
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)  # hold it mid-run while the group gets the SIGINT
        if proc.poll() is None:
            break
        finish(proc)
        for p in tmp_path.iterdir():
            p.unlink()
    else:
        pytest.fail("prepare ended five times before it could be interrupted mid-run")
    os.killpg(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    code, err = finish(proc)
    assert code == 130, err
    assert [ln for ln in err.splitlines() if " INFO " not in ln] == ["braintseg: interrupted"]
    assert list(tmp_path.iterdir()) == []


SCRIPT = """\
import logging, sys, threading, time
from braintseg import load_config, prepare

logging.basicConfig(level=logging.DEBUG)
if sys.argv[3] == "thread":  # a thread running: fork is unsafe, prepare must cope anyway
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
if sys.argv[3] == "runtime":  # as after `train` in the same script (stands for TensorFlow)
    sys.modules["tensorflow"] = type(sys)("tensorflow")
cfg = load_config(None, ["data.crop=auto", "model.levels=2", "data.n_folds=2"])
prepare(cfg, sys.argv[1], sys.argv[2], workers=2)
print("prepared", flush=True)
"""


@pytest.mark.parametrize("threads", ["none", "thread", "runtime"])
def test_api_from_a_script_without_main_guard(cases: Path, tmp_path: Path, threads: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(SCRIPT))
    res = subprocess.run([sys.executable, str(script), str(cases), str(tmp_path / "s.h5"),
                          threads], capture_output=True, text=True, timeout=300, env=ENV,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("prepared") == 1  # the script ran once: no worker re-imported it
    assert "bootstrapping phase" not in res.stderr
    assert ("loading cases in this process (worker processes are not used" in res.stderr) == (
        threads != "none")
    assert open_store(tmp_path / "s.h5").n_cases == N_CASES
