"""What ``train`` refuses before training (issue #21): a resume on a re-split store, a second
trainer in a run folder, a checkpoint without its resume state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.errors import DataError
from braintseg.store.read import SliceStore
from braintseg.training.runs import check_same_split, read_json
from conftest import TINY_TRAIN as TINY

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _moved_run(two_epoch_run: Path, store: Path, tmp_path: Path) -> Path:
    """A copy of the finished two-epoch run whose run.json names ``store``."""
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    record = read_json(run / "run.json")
    (run / "run.json").write_text(json.dumps({**record, "store": str(store.resolve())}))
    return run


def test_resume_refuses_a_store_split_again(synthetic_root: Path, synthetic_store: Path,
                                            two_epoch_run: Path, tmp_path: Path) -> None:
    store = Path(shutil.copy(synthetic_store, tmp_path / "store.h5"))
    run = _moved_run(two_epoch_run, store, tmp_path)
    train = ["train", "-c", SMOKE, "-i", str(store), "--fold", "0", "-o", str(run), "--resume",
             *[a for k, v in {**TINY, "epochs": 3}.items() for a in ("--set", f"train.{k}={v}")]]
    folds = SliceStore(store).folds
    for seed in range(1, 20):  # prepare --overwrite with another seed until the split changes
        res = CliRunner().invoke(cli, ["prepare", "-c", SMOKE, "-i", str(synthetic_root), "-o",
                                       str(store), "--overwrite", "--set", f"data.seed={seed}"])
        assert res.exit_code == 0, res.output
        if SliceStore(store).folds != folds:
            break
    else:
        pytest.fail("no seed changed the split")
    before = _snapshot(run)
    res = CliRunner().invoke(cli, train)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and f"store {store.resolve()} has other folds" in lines[0], lines
    assert f"run {run} started" in lines[0] and "validation patients" in lines[0]
    assert _snapshot(run) == before


def test_runs_without_the_digest_compare_their_case_lists() -> None:
    saved = {"store": "s.h5", "train_cases": ["a", "b"], "val_cases": ["c"]}
    check_same_split(saved, {**saved, "folds_sha256": "x"}, Path("r"))
    with pytest.raises(DataError, match="store s.h5 has other folds than when run r started"):
        check_same_split(saved, {**saved, "train_cases": ["a", "c"], "val_cases": ["b"]},
                         Path("r"))
    with pytest.raises(DataError, match="other folds"):
        check_same_split({**saved, "folds_sha256": "x"}, {**saved, "folds_sha256": "y"},
                         Path("r"))


def test_folds_digest_ignores_order_within_a_fold() -> None:
    from braintseg.data.folds import folds_digest

    assert folds_digest([["a", "b"], ["c"]]) == folds_digest([["b", "a"], ["c"]])
    assert folds_digest([["a", "b"], ["c"]]) != folds_digest([["a", "c"], ["b"]])
    assert folds_digest([["a"]], ["h"]) != folds_digest([["a"]])



HOLD = ("import sys, time; from pathlib import Path; from braintseg.training.runs import lock_run\n"
        "with lock_run(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)\n")


def test_a_second_train_into_a_locked_folder_is_refused(synthetic_store: Path,
                                                        tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from braintseg.training.runs import lock_run

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        res = CliRunner().invoke(cli, ["train", "-c", SMOKE, "-i", str(synthetic_store),
                                       "--fold", "0", "-o", str(run)])
        assert res.exit_code == 1
        assert res.output.strip() == (f"Error: run folder {run} is in use by another braintseg "
                                      f"train (pid {holder.pid}); wait for it to end or choose "
                                      "another folder")
        assert sorted(p.name for p in run.iterdir()) == [".train.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock_run(run):  # the OS released the dead holder's lock
        assert (run / ".train.lock").read_text() == f"{os.getpid()}\n"
    with lock_run(tmp_path / "new" / "deep"):
        assert (tmp_path / "new" / "deep" / ".train.lock").is_file()
    assert not (tmp_path / "new").exists()  # folders it created, holding only the lock, go


def test_a_checkpoint_without_its_saved_state_is_one_line(synthetic_store: Path,
                                                          two_epoch_run: Path,
                                                          tmp_path: Path) -> None:
    """``last.keras`` without its saved weights/optimizer state (``model.weights.h5``; Keras
    raised KeyError/ValueError from ``load_weights``), and a resume state whose counters are not
    integers: refused in one line, nothing in the folder changed."""
    import zipfile

    from braintseg.training.checkpoint import STATE_ENTRY

    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    last = run / "last.keras"
    with zipfile.ZipFile(last) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(last, "w") as zf:
        for name, data in entries.items():
            if name != "model.weights.h5":
                zf.writestr(name, data)
    before = _snapshot(run)
    train = ["train", "-c", SMOKE, "-i", str(synthetic_store), "--fold", "0", "-o", str(run),
             "--resume",
             *[a for k, v in {**TINY, "epochs": 3}.items() for a in ("--set", f"train.{k}={v}")]]
    res = CliRunner().invoke(cli, train)
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.strip().splitlines() if " INFO " not in ln]
    assert len(errors) == 1 and f"checkpoint {last} cannot be resumed" in errors[0], errors
    assert "--overwrite" in errors[0] and "Traceback" not in res.output
    assert _snapshot(run) == before

    state = json.loads(entries[STATE_ENTRY])
    with zipfile.ZipFile(last, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, json.dumps({**state, "optimizer_iterations": "4x"})
                        if name == STATE_ENTRY else data)
    res = CliRunner().invoke(cli, train)
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: checkpoint {last}: state key optimizer_iterations is '4x'; expected an "
        "integer (start afresh with --overwrite)")
