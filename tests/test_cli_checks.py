"""``train``/``predict`` refuse bad arguments before Keras is imported, in one line; a read-only
run folder is named before any work; TensorFlow's C++ banners are off unless -vv; the run
folder's history is numbered from 1 and trimmed to its checkpoint."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.errors import DataError
from braintseg.training.checkpoint import trim_history
from braintseg.training.runs import check_writable

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"

CHECKS = textwrap.dedent("""
    import json, os, sys, click
    from braintseg.cli import cli
    out = []
    for args in json.loads(sys.argv[1]):
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        try:
            cli(args, standalone_mode=False)
            out.append(["ok", os.environ.get("TF_CPP_MIN_LOG_LEVEL")])
        except click.ClickException as exc:
            out.append([exc.format_message(), os.environ.get("TF_CPP_MIN_LOG_LEVEL")])
    print(json.dumps({"results": out, "keras": "keras" in sys.modules,
                      "tensorflow": "tensorflow" in sys.modules}))
""")


def test_bad_train_and_predict_arguments_fail_before_keras_is_imported(
    synthetic_store: Path, tmp_path: Path
) -> None:
    """Fold out of range, unknown view, missing store, an output below a file, run folders
    that are missing or hold no model: each a one-line error, and the process never imported
    Keras or TensorFlow (the checks take well under a second instead of a TensorFlow import)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    (no_model / "run.json").write_text("{}")
    train = ["train", "-i", str(synthetic_store), "-c", str(SMOKE)]
    cases = [
        ([*train, "--fold", "7", "-o", str(tmp_path / "r")], "fold 7 does not exist"),
        ([*train, "--fold", "0", "-o", str(tmp_path / "r"), "--set", "train.view=sagital"],
         "sagital"),
        (["train", "-i", str(tmp_path / "none.h5"), "--fold", "0", "-o", str(tmp_path / "r")],
         "none.h5"),
        ([*train, "--fold", "0", "-o", str(blocker / "run")], f"{blocker} is a file"),
        (["-vv", *train, "--fold", "7", "-o", str(tmp_path / "r")], "fold 7"),
        (["predict", "-m", str(tmp_path / "missing-run"), "-i", str(tmp_path), "-o",
          str(tmp_path / "p")], "missing-run"),
        (["predict", "-m", str(no_model), "-i", str(tmp_path), "-o", str(tmp_path / "p")],
         "model.keras"),
    ]
    proc = subprocess.run([sys.executable, "-c", CHECKS, json.dumps([a for a, _ in cases])],
                          capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(proc.stdout)
    for (args, expected), (message, tf_level) in zip(cases, report["results"], strict=True):
        assert expected in message and "\n" not in message, (args, message)
        assert tf_level == (None if args[0] == "-vv" else "3"), args
    assert not report["keras"] and not report["tensorflow"]
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` read-only for root too: a read-only tmpfs mounted on it, else the
    immutable attribute; skip when neither is allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    tries = [(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
              ["umount", str(folder)], "read-only tmpfs"),
             (["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)], "chattr +i")]
    reasons = []
    for on, off, how in tries:
        try:
            done = subprocess.run(on, capture_output=True, text=True, timeout=30)
        except OSError as exc:
            reasons.append(f"{on[0]}: {exc}")
            continue
        if done.returncode == 0:
            try:
                yield how
            finally:
                subprocess.run(off, capture_output=True, timeout=30)
            return
        reasons.append(f"{on[0]}: {done.stderr.strip()}")
    pytest.skip("cannot make a read-only folder here: " + "; ".join(reasons))


@pytest.mark.parametrize("inside", [False, True], ids=["parent-read-only", "run-read-only"])
def test_read_only_run_folder_is_named_before_any_work(
    synthetic_store: Path, tmp_path: Path, inside: bool
) -> None:
    scratch = tmp_path / "scratch"
    with _read_only(scratch):
        run = scratch if inside else scratch / "run"
        result = CliRunner().invoke(cli, ["train", "-i", str(synthetic_store), "--fold", "0",
                                          "-o", str(run), "-c", str(SMOKE)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and len(result.output.splitlines()) == 1
        assert f"{scratch} is not writable" in result.output, result.output
        assert not (scratch / "run").exists() and list(scratch.iterdir()) == []


def test_check_writable_names_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match=r"f is a file, not a folder"):
        check_writable(tmp_path / "f" / "sub" / "run")
    check_writable(tmp_path / "new" / "run")  # created later, in a writable folder
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]  # the probe is gone


HEADER = "epoch,loss,val_loss\r\n"


@pytest.mark.parametrize(("text", "done", "expected"), [
    pytest.param(HEADER + "1,3.0,2.0\r\n2,2.5,1.5\r\n3,2.0,1.0\r\n", 2,
                 HEADER + "1,3.0,2.0\r\n2,2.5,1.5\r\n", id="row-after-the-checkpoint"),
    pytest.param(HEADER + "1,3.0,2.0\r\n2,2.5", 1, HEADER + "1,3.0,2.0\r\n", id="torn-row"),
    pytest.param(HEADER + "1,3.0,2.0\r\n1", 5, HEADER + "1,3.0,2.0\r\n", id="torn-epoch"),
    pytest.param(HEADER + "0,3.0,2.0\r\n1,2.5,1.5\r\n", 2,
                 HEADER + "1,3.0,2.0\r\n2,2.5,1.5\r\n", id="older-0-based-renumbered"),
    pytest.param(HEADER + "1,3.0,2.0\r\n", 0, None, id="nothing-left-removed"),
    pytest.param("epo", 0, None, id="torn-header-removed"),
])
def test_trim_history(tmp_path: Path, text: str, done: int, expected: str | None) -> None:
    path = tmp_path / "history.csv"
    path.write_bytes(text.encode())
    trim_history(path, done)
    assert (path.read_bytes().decode() if path.exists() else None) == expected
