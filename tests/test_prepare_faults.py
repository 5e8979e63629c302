"""Faults ``prepare`` meets on clusters, each one line on stderr (exit 1, no traceback) with
nothing half-written: broken input files read by worker processes, inputs that are not regular
files, an output path below a file, a full disk, a read-only output folder."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from braintseg.config import load_config
from braintseg.errors import DataError
from braintseg.preparation.prepare import run_prepare
from braintseg.preparation.volumes import prepare_case
from braintseg.sources import brats as nifti
from braintseg.sources.brats import find_cases
from braintseg.sources.synthetic import write_case

SHAPE = (24, 24, 16)
SMALL = ["--set", "data.crop=auto", "--set", "model.levels=2", "--set", "data.n_folds=2"]
REPO = Path(__file__).resolve().parents[1]


def _dataset(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_case(root, f"Brats18_T_{i}_1", SHAPE, seed=i)
    return root


def _file(root: Path, case: int, suffix: str) -> Path:
    return root / f"Brats18_T_{case}_1" / f"Brats18_T_{case}_1_{suffix}.nii.gz"


def prepare_cli(*args: str | Path, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """``python -m braintseg prepare ARGS`` in a real process (stderr as a user sees it)."""
    return subprocess.run(
        [sys.executable, "-m", "braintseg", "prepare", *map(str, args)], capture_output=True,
        text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})})


def assert_one_line(res: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1, res.stderr
    assert re.search(pattern, errors[0]), errors[0]


@pytest.mark.parametrize(("content", "what"), [
    (b"", r"is empty \(0 bytes\); expected a NIfTI file"),
    (gzip.compress(b""), r"cannot read .*Brats18_T_1_1_seg\.nii\.gz as NIfTI \(WrapStructError"),
    (gzip.compress(b"not an image " * 40), r"cannot read .*Brats18_T_1_1_seg\.nii\.gz as NIfTI"),
])
def test_broken_seg_read_by_worker_processes(tmp_path: Path, content: bytes, what: str) -> None:
    root = _dataset(tmp_path / "in")
    _file(root, 1, "seg").write_bytes(content)
    res = prepare_cli("-i", root, "-o", tmp_path / "out" / "s.h5", *SMALL, "--workers", "2")
    assert_one_line(res, rf"^Error: case Brats18_T_1_1: .*{what}")
    assert not (tmp_path / "out").exists()


def test_unexpected_worker_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """Any exception type inside the worker function becomes a DataError naming case and
    folder (the pool carries it to the parent as it is)."""
    root = _dataset(tmp_path / "in", 1)
    files = find_cases(root)[0]

    def boom(_: object) -> None:
        raise RuntimeError("something odd\nsecond line")

    monkeypatch.setattr("braintseg.preparation.volumes.load_case", boom)
    cfg = load_config(None, ["model.levels=2"])
    with pytest.raises(DataError, match=r"^case Brats18_T_0_1: cannot prepare the files in "
                                        r".*Brats18_T_0_1 \(RuntimeError: something odd\)$"):
        prepare_case(files, root, (0, 24, 0, 24, 0, 16), cfg.data, "float16", skip=False)


DYING_WORKER = """\
import os, signal, sys
import braintseg.preparation.volumes as vol
from braintseg.config import load_config
from braintseg.errors import DataError
from braintseg.preparation.prepare import run_prepare

real = vol.load_case
def load_case(files):  # the worker reading this case is killed, as by the OOM killer
    if files.case_id == "Brats18_T_1_1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(files)
vol.load_case = load_case  # forked workers inherit it
try:
    run_prepare(load_config(None, ["data.crop=auto", "model.levels=2", "data.n_folds=2"]),
                sys.argv[1], sys.argv[2], workers=2)
except DataError as exc:
    print(exc)
"""


def test_worker_killed_names_its_case(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "in")
    script = tmp_path / "dying.py"
    script.write_text(DYING_WORKER)
    res = subprocess.run([sys.executable, str(script), str(root), str(tmp_path / "out" / "s.h5")],
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"a worker process died \(killed, or out of memory: try fewer "
                        r"--workers\) while these were read: (case Brats18_T_\d_1, )*"
                        r"case Brats18_T_\d_1\n", res.stdout), res.stdout
    assert "case Brats18_T_1_1" in res.stdout
    assert not (tmp_path / "out").exists()


def test_modality_linked_to_dev_zero(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "in")
    t1 = _file(root, 2, "t1")
    t1.unlink()
    t1.symlink_to("/dev/zero")
    res = prepare_cli("-i", root, "-o", tmp_path / "out" / "s.h5", *SMALL, "--workers", "2")
    assert_one_line(res, r"^Error: case Brats18_T_2_1: .*Brats18_T_2_1_t1\.nii\.gz is not a "
                         r"regular file \(character device\); expected a NIfTI file$")
    assert not (tmp_path / "out").exists()
    # --skip-invalid skips the case and says why
    res = prepare_cli("-i", root, "-o", tmp_path / "out" / "s.h5", *SMALL, "--skip-invalid",
                      "--set", "data.n_folds=2", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "character device" in (tmp_path / "out" / "s.skipped.txt").read_text()


def test_oversized_input_refused_before_reading(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "in", 2)
    big = _file(root, 1, "t2")
    bound = max(p.stat().st_size for p in root.rglob("*.nii.gz"))
    with big.open("ab") as f:  # never read: the size alone refuses it
        f.write(b"\0" * 1000)
    monkeypatch.setattr(nifti, "MAX_INPUT_BYTES", bound)
    cfg = load_config(None, ["data.crop=auto", "model.levels=2", "data.n_folds=2"])
    with pytest.raises(DataError, match=r"^case Brats18_T_1_1: .*_t2\.nii\.gz is [\d,]+ bytes; "
                                        r"larger than the [\d,]+-byte bound for one NIfTI file"):
        run_prepare(cfg, root, tmp_path / "s.h5", workers=1)
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("below", ["", "deeper"])
def test_output_below_a_file(tmp_path: Path, below: str) -> None:
    root = _dataset(tmp_path / "in", 2)
    blocker = tmp_path / "X"
    blocker.write_text("I am a file")
    res = prepare_cli("-i", root, "-o", blocker / below / "store.h5", *SMALL)
    assert_one_line(res, r"^Error: cannot create .*X/.*store\.h5: .*X is a file, not a folder$")
    assert blocker.read_text() == "I am a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "in"]


# --------------------------------------------------------------------------- mounts (root)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (unmounted afterwards); skips unless root may mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (disk-full and read-only tests)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path: Path, tmpfs: Path) -> None:
    root = _dataset(tmp_path / "in", 4)
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - 40_000))  # room for the probe, not for the store
    res = prepare_cli("-i", root, "-o", tmpfs / "out" / "s.h5", *SMALL, "--workers", "2",
                      "--set", "store.compression=none")
    assert_one_line(res, r"^Error: cannot write .*/out/s\.h5 \(No space left on device\)$")
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]  # no partial store, no folder


def test_read_only_output_folder_said_before_any_work(tmp_path: Path, tmpfs: Path) -> None:
    root = _dataset(tmp_path / "in", 2)
    (tmpfs / "runs").mkdir()
    res = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {res.stderr.strip()}")
    _file(root, 0, "t1").write_bytes(b"")  # would fail the run if any case were read
    for out in (tmpfs / "runs" / "s.h5", tmpfs / "runs" / "new" / "s.h5"):
        res = prepare_cli("-i", root, "-o", out, *SMALL)
        assert_one_line(res, r"^Error: output folder .*/runs is not writable "
                             r"\(Read-only file system\)$")
    assert [p.name for p in tmpfs.iterdir()] == ["runs"]
    assert list((tmpfs / "runs").iterdir()) == []


def test_disk_full_during_a_slice_prepare_is_one_line(tmp_path: Path, tmpfs: Path) -> None:
    """The 2D slice store writer (LGG layout) says a full disk as the volume writer does."""
    from braintseg.sources.synthetic import write_lgg

    root = tmp_path / "lgg"
    write_lgg(root, n_patients=4, n_slices=12, size=128)
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - 200_000))  # room for the sidecars, not the store
    res = prepare_cli("-i", root, "-o", tmpfs / "out" / "lgg.h5", "--set", "data.n_folds=2",
                      "--set", "store.compression=none")
    # the store or a file written beside it, whichever meets the full disk first
    assert_one_line(res, r"^Error: cannot write .*/out/lgg\.[a-z.]+ \(No space left on device\)$")
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]
