"""``braintseg prepare`` end to end: bad input, --skip-invalid, atomic writes, workers, real
data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.config import load_config
from braintseg.data.folds import folds_path
from braintseg.data.preprocess import crop
from braintseg.preparation.prepare import run_prepare
from braintseg.sources.brats import find_cases, load_case
from braintseg.sources.synthetic import write_case
from braintseg.store.read import open_store

SHAPE = (24, 24, 16)
SMALL = ["--set", "data.crop=auto", "--set", "model.levels=2", "--set", "data.n_folds=2",
         "--workers", "1"]


def _dataset(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_case(root, f"Brats18_T_{i}_1", SHAPE, seed=i)
    return root


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["prepare", *args])
    return res.exit_code, res.output


def _rewrite(path: Path, fn: Callable[[np.ndarray], np.ndarray], affine: np.ndarray | None = None
             ) -> None:
    img = nib.load(path)
    data = fn(np.asanyarray(img.dataobj))
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def _f(root: Path, case: int, suffix: str) -> Path:
    return root / f"Brats18_T_{case}_1" / f"Brats18_T_{case}_1_{suffix}.nii.gz"


def _flip_bytes(path: Path, start: int, stop: int) -> None:
    """Garble the start of the deflate stream (ISA-L raises its own error type for this)."""
    data = bytearray(path.read_bytes())
    data[start:stop] = bytes(b ^ 0x5A for b in data[start:stop])
    path.write_bytes(bytes(data))


def _nan(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.float32)
    out[3, 3, 3] = np.nan
    return out


BAD: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing-modality": (lambda r: _f(r, 1, "t2").unlink(),
                         r"case Brats18_T_1_1: missing modality 't2'; expected Brats18_T_1_1_t2"),
    "two-files": (lambda r: shutil.copy(_f(r, 1, "t1"), str(_f(r, 1, "t1"))[:-3]),
                  r"case Brats18_T_1_1: found 2 files for 't1'"),
    "truncated": (lambda r: _f(r, 2, "t1ce").write_bytes(_f(r, 2, "t1ce").read_bytes()[:2000]),
                  r"case Brats18_T_2_1: cannot read .*_t1ce.nii.gz as NIfTI"),
    "not-nifti": (lambda r: _f(r, 0, "flair").write_bytes(b"hello, I am not an image"),
                  r"case Brats18_T_0_1: cannot read .*_flair.nii.gz as NIfTI"),
    "corrupt-deflate": (lambda r: _flip_bytes(_f(r, 1, "t2"), 20, 60),
                        r"case Brats18_T_1_1: cannot read .*_t2.nii.gz as NIfTI"),
    "shape": (lambda r: _rewrite(_f(r, 1, "t2"), lambda a: a[:, :, :15]),
              r"case Brats18_T_1_1: Brats18_T_1_1_t2.nii.gz has shape \(24, 24, 15\); expected"),
    "affine": (lambda r: _rewrite(_f(r, 1, "t1"), lambda a: a, np.diag([2.0, 1, 1, 1])),
               r"case Brats18_T_1_1: Brats18_T_1_1_t1.nii.gz has a different affine"),
    "labels": (lambda r: _rewrite(_f(r, 2, "seg"), lambda a: np.where(a == 4, 5, a)),
               r"case Brats18_T_2_1: Brats18_T_2_1_seg.nii.gz: label values \[5\] outside"),
    "float-labels": (lambda r: _rewrite(_f(r, 2, "seg"), lambda a: a.astype(np.float32) * 0.5),
                     r"case Brats18_T_2_1: .*seg.nii.gz has non-integer label values"),
    "nan": (lambda r: _rewrite(_f(r, 0, "t1"), _nan),
            r"case Brats18_T_0_1: Brats18_T_0_1_t1.nii.gz contains NaN or Inf"),
    "4d": (lambda r: _rewrite(_f(r, 1, "t1"), lambda a: a[..., None].repeat(2, 3)),
           r"case Brats18_T_1_1: Brats18_T_1_1_t1.nii.gz has 4D shape .*expected a 3D volume"),
    "2d": (lambda r: _rewrite(_f(r, 1, "flair"), lambda a: a[:, :, 0]),
           r"case Brats18_T_1_1: Brats18_T_1_1_flair.nii.gz has 2D shape"),
    "zero-modality": (lambda r: _rewrite(_f(r, 1, "t2"), lambda a: a * 0),
                      r"case Brats18_T_1_1: .*modality 't2'.* is all zero"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_one_line_error_no_store(tmp_path: Path, kind: str) -> None:
    root = _dataset(tmp_path / "in")
    corrupt, pattern = BAD[kind]
    corrupt(root)
    out = tmp_path / "out"
    code, output = _run(["-i", str(root), "-o", str(out / "s.h5"), *SMALL])
    assert code == 1, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1
    assert re.search(pattern, output), output
    assert not out.exists() or list(out.iterdir()) == []
    # the same input with --skip-invalid: the bad case is skipped and reported
    code, output = _run(["-i", str(root), "-o", str(out / "s.h5"), *SMALL, "--skip-invalid"])
    assert code == 0, output
    store = open_store(out / "s.h5")
    bad_case = re.search(r"Brats18_T_\d_1", pattern).group(0)  # type: ignore[union-attr]
    assert bad_case not in store.case_ids and store.n_cases == 2
    report = (out / "s.skipped.txt").read_text()
    assert report.count("\n") == 2 and f"{bad_case}\t" in report
    store.close()


@pytest.mark.parametrize(("args", "pattern"), [
    (["--set", "data.crop=[0,64,0,16,0,16]"], r"data.crop .* outside the volume of case "
                                               r"Brats18_T_0_1: x range 0:64"),
    (["--set", "data.crop=[0,10,0,16,0,16]"], r"x size 10 is not a multiple of 4"),
    (["--set", "data.crops=auto"], r"unknown key 'data.crops'.*did you mean 'data.crop'"),
])
def test_config_errors(tmp_path: Path, args: list[str], pattern: str) -> None:
    root = _dataset(tmp_path / "in", 2)
    code, output = _run(["-i", str(root), "-o", str(tmp_path / "s.h5"),
                         "--set", "model.levels=2", "--set", "data.n_folds=2", *args])
    assert code == 1 and "Traceback" not in output
    assert re.search(pattern, output), output
    assert not (tmp_path / "s.h5").exists()


def test_empty_and_missing_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    code, output = _run(["-i", str(tmp_path / "empty"), "-o", str(tmp_path / "s.h5")])
    assert code == 1 and "no BraTS cases found under" in output
    code, output = _run(["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "s.h5")])
    assert code == 1 and "does not exist" in output


def test_overwrite_rule_and_sidecars(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "in")
    out = tmp_path / "s.h5"
    assert _run(["-i", str(root), "-o", str(out), *SMALL])[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in", "s.config.yaml", "s.folds.json", "s.h5"]
    assert load_config(tmp_path / "s.config.yaml").model.levels == 2
    before = out.read_bytes()
    # the same input and config again: the finished store is kept (a rerun after a kill)
    (tmp_path / "s.folds.json").unlink()
    code, output = _run(["-i", str(root), "-o", str(out), *SMALL])
    assert code == 0 and out.read_bytes() == before, output
    assert (tmp_path / "s.folds.json").is_file()  # restored from the copy inside the store
    # another config, or changed input files: refused without --overwrite
    code, output = _run(["-i", str(root), "-o", str(out), *SMALL, "--set", "data.seed=5"])
    assert code == 1 and "already exists; use --overwrite" in output
    os.utime(_f(root, 0, "t1"), ns=(1, 1))
    code, output = _run(["-i", str(root), "-o", str(out), *SMALL])
    assert code == 1 and "already exists; use --overwrite" in output
    assert out.read_bytes() == before
    code, _ = _run(["-i", str(root), "-o", str(out), *SMALL, "--set", "data.seed=5",
                    "--overwrite"])
    assert code == 0 and out.read_bytes() != before
    assert open_store(out).config["data"]["seed"] == 5


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    """Explicit crop = single pass: the last case fails after others were appended."""
    root = _dataset(tmp_path / "in")
    _rewrite(_f(root, 2, "t1"), _nan)
    out = tmp_path / "out"
    out.mkdir()
    old = out / "s.h5"
    old.write_bytes(b"previous store stays untouched")
    code, output = _run(["-i", str(root), "-o", str(old), "--set", "model.levels=2",
                         "--set", "data.crop=[4,20,4,20,0,16]", "--set", "data.n_folds=2",
                         "--workers", "1", "--overwrite"])
    assert code == 1 and "Brats18_T_2_1" in output
    assert sorted(p.name for p in out.iterdir()) == ["s.h5"]
    assert old.read_bytes() == b"previous store stays untouched"


def test_killed_writer_leaves_no_finished_store(tmp_path: Path) -> None:
    """A writer killed mid-run (os._exit, no clean-up) leaves only a hidden partial file that
    open_store rejects."""
    target = tmp_path / "s.h5"
    code = (
        "import os, numpy as np\n"
        "from braintseg.store.read import StoreWriter, PreparedCase\n"
        f"w = StoreWriter(r'{target}', (8, 8, 8), 4).__enter__()\n"
        "w.append(PreparedCase('a', np.zeros((8, 8, 8, 4), np.float16), None))\n"
        "w._h.flush()\n"
        "os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    assert not target.exists()
    (partial,) = list(tmp_path.iterdir())
    assert partial.name.startswith(".s.h5.partial-")
    with pytest.raises(Exception, match="not a finished braintseg store|not an HDF5"):
        open_store(partial)


def test_no_labels_store(tmp_path: Path, smoke_cfg) -> None:  # type: ignore[no-untyped-def]
    for i in range(2):
        write_case(tmp_path / "in", f"Brats18_N_{i}_1", SHAPE, seed=i, with_seg=i == 0)
    path = run_prepare(smoke_cfg, tmp_path / "in", tmp_path / "s.h5", workers=1,
                       require_labels=False)
    store = open_store(path)
    assert not store.has_labels and store.folds == []
    assert store.read_case(1)[1] is None and store.read_case(0)[1] is not None
    store.close()
    # overwriting a labelled store with this one removes the old store's folds JSON
    labelled = tmp_path / "lab"
    for i in range(4):
        write_case(labelled, f"Brats18_L_{i}_1", SHAPE, seed=i)
    run_prepare(smoke_cfg, labelled, tmp_path / "t.h5", workers=1)
    assert folds_path(tmp_path / "t.h5").is_file()
    run_prepare(smoke_cfg, tmp_path / "in", tmp_path / "t.h5", workers=1, require_labels=False,
                overwrite=True)
    assert not folds_path(tmp_path / "t.h5").exists()


def test_two_workers_same_store(synthetic_root: Path, synthetic_store: Path, smoke_cfg,  # type: ignore[no-untyped-def]
                                tmp_path: Path) -> None:
    path = run_prepare(smoke_cfg, synthetic_root, tmp_path / "w2.h5", workers=2)
    a, b = open_store(synthetic_store), open_store(path)
    assert a.case_ids == b.case_ids and a.folds == b.folds and a.crop_box == b.crop_box
    for i in range(a.n_cases):
        for x, y in zip(a.read_case(i), b.read_case(i), strict=True):
            np.testing.assert_array_equal(x, y)
    a.close()
    b.close()


# --------------------------------------------------------------------------- real data


def _check_against_nibabel(store_path: Path, root: Path) -> None:
    store = open_store(store_path)
    files = {c.case_id: c for c in find_cases(root)}
    box = store.crop_box
    assert box == (42, 194, 29, 221, 2, 146) and store.volume_shape == (152, 192, 144)
    for i, cid in enumerate(store.case_ids):
        images, labels = store.read_case(i)
        meta = store.case_meta(i)
        flair = nib.load(files[cid].images["flair"])
        np.testing.assert_allclose(meta["affine"], flair.affine)
        assert meta["original_shape"] == list(flair.shape) == [240, 240, 155]
        assert meta["qform_code"] == int(flair.header["qform_code"])
        raw_seg = np.asanyarray(nib.load(files[cid].seg).dataobj)
        conv = store.conventions[cid]
        et = 4 if conv == "brats2018" else 3
        np.testing.assert_array_equal(labels == 3, crop(raw_seg, box) == et)
        np.testing.assert_array_equal(labels == 2, crop(raw_seg, box) == 2)
        for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
            src = crop(np.asanyarray(nib.load(files[cid].images[m]).dataobj), box)
            brain = src != 0
            z = images[..., c].astype(np.float32)
            assert np.all(z[~brain] == 0)
            # clipping at the 1st/99th percentile pulls mean/sd slightly off 0/1
            assert abs(z[brain].mean()) < 0.05 and abs(z[brain].std() - 1) < 0.05, (cid, m)
        if i == 0:
            loaded = load_case(files[cid])
            assert np.array_equal(loaded.labels[tuple(slice(a, b) for a, b in
                                  zip(box[::2], box[1::2], strict=True))], labels)
    store.close()


def test_real_two_cases(shared_brats: Path, tmp_path: Path) -> None:
    root = tmp_path / "two"
    root.mkdir()
    for name in ("Brats18_2013_3_1", "BraTS-GLI-00000-000"):
        os.symlink(shared_brats / name, root / name)
    cfg = load_config(None, ["data.n_folds=2"])
    path = run_prepare(cfg, root, tmp_path / "real.h5", workers=2)
    _check_against_nibabel(path, root)
    assert open_store(path).conventions == {"BraTS-GLI-00000-000": "brats2023",
                                            "Brats18_2013_3_1": "brats2018"}


@pytest.mark.slow
def test_real_all_cases(shared_brats: Path, tmp_path: Path) -> None:
    path = run_prepare(load_config(), shared_brats, tmp_path / "all.h5", workers=2)
    assert open_store(path).n_cases == 14
    _check_against_nibabel(path, shared_brats)
