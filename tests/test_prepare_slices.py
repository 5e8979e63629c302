"""``prepare`` of slice sets (issue #21): --skip-invalid skips LGG patients whose folder is bad,
and a complete store of the same input and config is kept (as for BraTS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.sources.synthetic import write_lgg
from braintseg.store.read import SliceStore

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def _prepare(root: Path, store: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["prepare", "-c", SMOKE, "-i", str(root), "-o", str(store),
                                   "--workers", "1", *extra])
    return res.exit_code, res.output


def test_skip_invalid_skips_an_lgg_patient_without_a_mask(tmp_path: Path) -> None:
    root = write_lgg(tmp_path / "lgg", n_patients=5, n_slices=3, size=16)
    bad = sorted(p for p in root.iterdir() if p.is_dir())[1]
    (bad / f"{bad.name}_2_mask.tif").unlink()
    store = tmp_path / "s.h5"
    code, out = _prepare(root, store)
    assert code == 1 and "image without its mask" in out and not store.exists()
    proc = subprocess.run([sys.executable, "-m", "braintseg", "prepare", "-c", SMOKE, "-i",
                           str(root), "-o", str(store), "--workers", "1", "--skip-invalid"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(
                              REPO / "src")}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stderr
    assert (f"WARNING skipping patient {bad.name}: {bad / bad.name}_2.tif: image without its "
            "mask") in out
    with SliceStore(store) as s:
        assert bad.name not in s.case_ids and len(s.case_ids) == 4
    skipped = (tmp_path / "s.skipped.txt").read_text()
    assert f"{bad.name}\t" in skipped


def test_lgg_prepare_again_keeps_the_complete_store(tmp_path: Path) -> None:
    root = write_lgg(tmp_path / "lgg", n_patients=4, n_slices=3, size=16)
    store = tmp_path / "s.h5"
    assert _prepare(root, store)[0] == 0
    stamp = store.stat().st_mtime_ns, store.stat().st_ino
    code, out = _prepare(root, store)
    assert code == 0 and out.strip() == f"wrote {store}", out
    assert (store.stat().st_mtime_ns, store.stat().st_ino) == stamp  # not rewritten
    code, out = _prepare(root, store, "--set", "data.seed=7")  # another config: refused
    assert code == 1 and "already exists; use --overwrite" in out
    (root / "data.csv").write_text("Patient,neoplasm_histologic_grade\n")  # another input
    code, out = _prepare(root, store)
    assert code == 1 and "already exists; use --overwrite" in out
