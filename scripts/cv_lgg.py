"""4-fold patient-level cross-validation on LGG kaggle_3m patients (CPU, small network).

Usage:
    python scripts/cv_lgg.py [-i LGG_ROOT] [-o OUT_DIR] [-c configs/lgg_cv.yaml] [--set KEY=VALUE]

Runs the commands a user would (``braintseg prepare``, ``train --fold k``, ``predict --fold k``
for k = 0..3), gathers every fold's predictions of its own validation patients into
``OUT/predictions`` (each patient predicted once, by the fold that did not train on it) and runs
``braintseg evaluate`` on them: per-patient Dice (Buda et al.'s metric: the Dice of each
patient's stack of slices) mean and median, pooled Dice, slice-level detection accuracy / AUC.
Prints the figures, the wall time per step and the load average; writes ``OUT/cv_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p / "data" / "lgg_kaggle_3m" for p in (REPO.parent / "shared",
                                                      REPO.parents[1] / "shared")
               if (p / "data" / "lgg_kaggle_3m").is_dir()),
              REPO.parent / "shared" / "data" / "lgg_kaggle_3m")


def braintseg(*args: str) -> float:
    """Run one ``braintseg`` command; return its wall time; stop the script on failure."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "braintseg", "-q", *args]
    print("$ braintseg", " ".join(args), flush=True)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED)
    ap.add_argument("-o", "--output", type=Path, default=Path("cv_lgg"))
    ap.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "lgg_cv.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--folds", type=int, default=4)
    args = ap.parse_args()
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    sets = [a for kv in args.overrides for a in ("--set", kv)]
    common = ["-c", str(args.config), *sets]
    load0 = os.getloadavg()
    times: dict[str, float] = {}
    store = out / "lgg.h5"
    times["prepare"] = braintseg("prepare", *common, "--set", f"data.n_folds={args.folds}",
                                 "-i", str(args.input), "-o", str(store), "--overwrite")
    gathered = out / "predictions"
    shutil.rmtree(gathered, ignore_errors=True)
    gathered.mkdir()
    csv_lines: list[str] = []
    for k in range(args.folds):
        run, pred = out / f"run_f{k}", out / f"pred_f{k}"
        times[f"train_f{k}"] = braintseg("train", *common, "-i", str(store), "--fold", str(k),
                                         "-o", str(run), "--overwrite")
        shutil.rmtree(pred, ignore_errors=True)
        times[f"predict_f{k}"] = braintseg("predict", "-m", str(run), "-i", str(store),
                                           "--fold", str(k), "-o", str(pred))
        for folder in (p for p in pred.iterdir() if p.is_dir()):
            shutil.copytree(folder, gathered / folder.name)
        lines = (pred / "predictions.csv").read_text().splitlines()
        csv_lines += lines if not csv_lines else lines[1:]
    (gathered / "predictions.csv").write_text("\n".join(csv_lines) + "\n")
    times["evaluate"] = braintseg("evaluate", "-p", str(gathered), "-t", str(args.input))
    result = json.loads((gathered / "metrics.json").read_text())
    s = result["summary"]
    summary = {"summary": s, "seconds": times, "total_seconds": sum(times.values()),
               "loadavg_start": load0, "loadavg_end": os.getloadavg(),
               "config": str(args.config), "overrides": args.overrides,
               "cpu_count": os.cpu_count()}
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=1))
    d = s["detection"]
    print(f"{s['n_patients']} patients, {s['n_slices']} slices, {args.folds} folds, "
          f"{summary['total_seconds']:.0f} s (load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"Dice per patient: mean {100 * s['dice_per_patient_mean']:.2f} %, median "
          f"{100 * s['dice_per_patient_median']:.2f} %   (Buda et al. 2019, 110 patients: "
          "83.60 % / 87.33 %)")
    print(f"pooled Dice {100 * s['dice_pooled']:.2f} %; slice detection accuracy "
          f"{100 * d['accuracy']:.2f} %, AUC {100 * (d['auc'] or 0):.2f} %")


if __name__ == "__main__":
    main()
