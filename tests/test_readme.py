"""The README's Python API example, run verbatim as a plain script (``python example.py``).

Only the epoch count is changed (``train.epochs=6`` → ``train.epochs=1`` inside the snippet's own
``load_config`` call).  The script runs in a temporary folder holding a copy of
``configs/demo.yaml``, as a user runs it from the repository root.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from braintseg.demo import HOLDOUT, VALIDATION, sample_data_dir

REPO = Path(__file__).resolve().parents[1]
EPOCHS, SHORT = '"train.epochs=6"', '"train.epochs=1"'


def readme_snippet() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API\n"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no ```python block under '## Python API'"
    return match.group(1)


def test_snippet_holds_out_its_case_and_evaluates_only_it():
    code = readme_snippet()
    assert code.count(EPOCHS) == 1 and "if __name__" not in code
    assert "cases_except(cases, HOLDOUT" in code and "cases=[HOLDOUT]" in code
    assert "cases / HOLDOUT" in code and "validation_fold(store, VALIDATION)" in code
    compile(code, "README.md", "exec")


@pytest.mark.slow
def test_readme_snippet_runs_verbatim_as_a_script(tmp_path):
    code = readme_snippet()
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    (tmp_path / "example.py").write_text(code.replace(EPOCHS, SHORT))
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if "Dice" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{HOLDOUT} held-out Dice {{'wt': "), lines
    dice = re.findall(r"'(wt|tc|et)': (nan|[0-9.]+)", lines[0])
    assert [r for r, _ in dice] == ["wt", "tc", "et"]
    rows = list(csv.DictReader((tmp_path / "demo" / "predictions" / "metrics.csv").open()))
    assert [r["case"] for r in rows] == [HOLDOUT] and rows[0]["status"] == "ok"
    run_json = (tmp_path / "demo" / "run" / "run.json").read_text()
    assert HOLDOUT not in run_json and VALIDATION in run_json
    assert sorted(p.name for p in (tmp_path / "demo" / "predictions").glob("*.nii.gz")) == [
        f"{HOLDOUT}.nii.gz"]
    assert (sample_data_dir() / HOLDOUT).is_dir()  # the bundled data untouched
