"""Ids that become paths (figshare PID, LGG patient folder, BraTS case folder) are checked where
they enter, and writers refuse names that would leave their output folder (issue #21, item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.data.ids import check_id, child
from braintseg.errors import DataError
from braintseg.inference.slices import write_patient
from braintseg.sources.brats import scan_cases
from braintseg.sources.registry import source
from braintseg.sources.synthetic import write_case, write_figshare, write_lgg

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.mark.parametrize("name", ["../../X", "/tmp/X", "..", ".", "", ".hidden", "a/b",
                                  "a\\b", "a..b", "a\x00b"])
def test_unsafe_ids_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected a plain name") as info:
        check_id(name, "f.mat", "PID")
    assert "f.mat" in str(info.value) and repr(name) in str(info.value)
    with pytest.raises(DataError, match="would leave the folder"):
        child(tmp_path, name)
    assert check_id("TCGA_CS_4941_19960909", "f") == "TCGA_CS_4941_19960909"
    assert child(tmp_path, "100360") == tmp_path / "100360"


@pytest.mark.parametrize("pid", ["../../X", "/tmp/evil_pid"])
def test_figshare_pid_path_refused_by_prepare(tmp_path: Path, pid: str) -> None:
    root = write_figshare(tmp_path / "fig", {"A": [(1, 16, 1)], pid: [(2, 16, 2)]})
    store = tmp_path / "s.h5"
    res = CliRunner().invoke(cli, ["prepare", "-c", SMOKE, "-i", str(root), "-o", str(store)])
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(root / "2.mat") in lines[0] and repr(pid) in lines[0], lines
    assert "expected a plain name" in lines[0]
    assert not store.exists() and not Path("/tmp/evil_pid").exists()


def test_lgg_patient_folder_refused(tmp_path: Path) -> None:
    root = write_lgg(tmp_path / "lgg", n_patients=2, n_slices=3, size=16)
    bad = root / "TCGA..X"
    next(p for p in root.iterdir() if p.is_dir()).rename(bad)
    res = CliRunner().invoke(cli, ["prepare", "-c", SMOKE, "-i", str(root), "-o",
                                   str(tmp_path / "s.h5")])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1
    assert f"patient folder {bad}: patient id 'TCGA..X' is refused" in res.output


def test_brats_case_folder_refused(tmp_path: Path) -> None:
    write_case(tmp_path / "in", "Brats18_A_1", shape=(8, 8, 8))
    folder = write_case(tmp_path / "in", "x..y", shape=(8, 8, 8))
    cases, problems = scan_cases(tmp_path / "in")
    assert [c.case_id for c in cases] == ["Brats18_A_1"]
    assert problems == [("x..y", f"case folder {folder}: case id 'x..y' is refused; expected "
                                 "a plain name without '/', '\\', '..', NUL or a leading '.'")]


def test_slice_writer_refuses_to_leave_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    probs = np.zeros((1, 4, 4, 2), np.float32)
    sizes = np.array([[4, 4]], np.int32)
    with pytest.raises(DataError, match="would leave the folder"):
        write_patient(source("lgg"), out, "../../X", ["1"], probs, sizes, False)
    with pytest.raises(DataError, match="would leave the folder"):
        write_patient(source("lgg"), out, "P", ["../1"], probs, sizes, False)
    assert not (tmp_path / "X").exists() and sorted(p.name for p in tmp_path.rglob("*")) == [
        "P", "deep", "out"]
    rows, files = write_patient(source("lgg"), out, "P", ["7"], probs, sizes, False)
    assert files == [out / "P" / "7_mask.tif"] and files[0].is_file()
