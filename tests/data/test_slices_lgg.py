"""LGG reader refusals (issue #21): bit depth, duplicate slice numbers, patient table without
its patient column, truncated TIFFs; each one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from braintseg.errors import DataError
from braintseg.sources.lgg import find_cases, load_case, read_grades
from braintseg.sources.synthetic import write_lgg


def _root(tmp_path: Path) -> tuple[Path, Path]:
    root = write_lgg(tmp_path / "r", n_patients=2, n_slices=3, size=16)
    return root, sorted(p for p in root.iterdir() if p.is_dir())[0]


def _load_all(root: Path) -> None:
    for files in find_cases(root):
        load_case(files)


def test_a_16_bit_slice_among_8_bit_ones_is_refused(tmp_path: Path) -> None:
    root, folder = _root(tmp_path)
    culprit = folder / f"{folder.name}_2.tif"
    tifffile.imwrite(culprit, np.full((16, 16, 3), 300, np.uint16))
    with pytest.raises(DataError) as info:
        _load_all(root)
    assert str(info.value) == (f"{culprit}: uint16 pixels; the patient's first slice "
                               f"{folder.name}_1.tif has uint8 (one bit depth per patient)")


def test_two_files_for_one_slice_number_are_refused(tmp_path: Path) -> None:
    root, folder = _root(tmp_path)
    for suffix in ("", "_mask"):
        src = folder / f"{folder.name}_2{suffix}.tif"
        (folder / f"{folder.name}_02{suffix}.tif").write_bytes(src.read_bytes())
    with pytest.raises(DataError, match="slice 2 is also") as info:
        find_cases(root)
    message = str(info.value)
    assert str(folder) in message and "_02" in message and "expected one file per slice" in (
        message) and "\n" not in message


def test_a_patient_table_without_the_patient_column_is_refused(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    table = root / "data.csv"
    table.write_text("Case,neoplasm_histologic_grade\nTCGA_XX_1000,1\n")
    with pytest.raises(DataError) as info:
        read_grades(root)
    assert str(info.value).startswith(f"{table}: no 'Patient' column (columns: Case, neoplasm")
    table.write_text("Patient,neoplasm_histologic_grade\nTCGA_XX_1000,1\n")
    assert read_grades(root) == {"TCGA_XX_1000": "1"}


@pytest.mark.parametrize("keep", [8, 200])  # the header alone; the header and part of the tags
def test_a_truncated_tiff_says_so(tmp_path: Path, keep: int) -> None:
    root, folder = _root(tmp_path)
    culprit = folder / f"{folder.name}_3.tif"
    culprit.write_bytes(culprit.read_bytes()[:keep])
    with pytest.raises(DataError) as info:
        _load_all(root)
    message = str(info.value)
    assert message.startswith(f"{culprit}: truncated") and "shape (0,)" not in message
    assert "\n" not in message
