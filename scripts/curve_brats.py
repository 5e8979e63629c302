"""Dice against CPU-minutes for the BraTS demo network: a patient-level cross-validation, drawn.

Usage:
    python scripts/curve_brats.py [-i BRATS_DIR] [-o OUT_DIR] [-c configs/demo.yaml]
                                  [--folds 2] [--epochs 6,12,24] [--jobs 2] [--set KEY=VALUE]
                                  [--json docs/bench/brats_curve.json] [--png docs/brats_curve.png]

Runs the commands a user would, each on ONE CPU thread: ``braintseg prepare`` of every case of
BRATS_DIR (default: the 14 shared cases) into one store with ``--folds`` patient-level folds,
then for each ``--epochs`` value E (``--set train.epochs=E``; the demo's 40 steps of 8 slices an
epoch) and each fold k, ``--jobs`` folds at a time: ``train --fold k``, ``predict`` of the
fold's validation cases from their NIfTI files (in their own geometry and label convention), and
one ``evaluate`` of all cases' out-of-fold predictions. Training validates on one batch an epoch
(``train.validation_steps=1``; ``train.monitor: last`` never looks at it). An existing complete
``OUT/e<E>/predictions/metrics.json`` is reused. A point's x is the measured training CPU time
(user + system, start-up and compilation included, ``os.wait4``) averaged over the folds, in
minutes; its y the mean Dice over the cases of WT, TC and ET (BraTS regions).

Writes the points (with per-case Dice, the machine and the load averages) to ``--json`` and
draws them into ``--png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from curve_lgg import cpu_model  # noqa: E402
from cv_lgg import LOADS, braintseg  # noqa: E402

REGIONS = ("wt", "tc", "et")
SHARED = REPO.parent / "shared" / "data" / "brats"


def point(args: argparse.Namespace, store: Path, epochs: int,
          env: dict[str, str]) -> dict[str, Any]:
    """Train, predict and score every fold at ``epochs``; the curve point (reused when done)."""
    out = args.output / f"e{epochs}"
    gathered = out / "predictions"
    cpu_path = out / "train_cpu_seconds.json"
    folds = json.loads(store.with_suffix(".folds.json").read_text())["folds"]
    if not (gathered / "metrics.json").is_file():
        cpu: dict[str, float] = {}

        def fold(k: int) -> None:
            run, pred = out / f"run_f{k}", out / f"pred_f{k}"
            _, cpu[str(k)] = braintseg("train", "-c", str(args.config), *args.sets, "--set",
                                       f"train.epochs={epochs}", "-i", str(store), "--fold",
                                       str(k), "-o", str(run), "--overwrite", env=env)
            shutil.rmtree(pred, ignore_errors=True)
            braintseg("predict", "-m", str(run), "-i", str(args.input), "--cases",
                      ",".join(sorted(folds[k])), "-o", str(pred), env=env)

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(fold, range(len(folds))))
        shutil.rmtree(gathered, ignore_errors=True)
        gathered.mkdir(parents=True)
        for k in range(len(folds)):
            for f in (out / f"pred_f{k}").glob("*.nii.gz"):
                shutil.copy2(f, gathered / f.name)
        cpu_path.write_text(json.dumps(cpu) + "\n")
        braintseg("evaluate", "-p", str(gathered), "-t", str(args.input), env=env)
    metrics = json.loads((gathered / "metrics.json").read_text())
    cpu = json.loads(cpu_path.read_text())
    dice = metrics["summary"]["dice"]
    p = {"epochs": epochs, "train_cpu_min_per_fold": sum(cpu.values()) / len(cpu) / 60,
         "train_cpu_seconds": cpu, "n_cases": metrics["n_cases"],
         **{f"dice_{r}_mean": dice[r]["mean"] for r in REGIONS},
         **{f"dice_{r}_median": dice[r]["median"] for r in REGIONS},
         "per_case": {c["case"]: {r: c[f"{r}_dice"] for r in REGIONS} for c in metrics["cases"]}}
    print(f"{epochs:3d} epochs: {p['train_cpu_min_per_fold']:.1f} CPU-min/fold, Dice mean "
          + ", ".join(f"{r.upper()} {p[f'dice_{r}_mean']:.3f}" for r in REGIONS), flush=True)
    return p


def draw(points: list[dict[str, Any]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    xs = [p["train_cpu_min_per_fold"] for p in points]
    for r, colour in zip(REGIONS, ("tab:green", "tab:orange", "tab:red"), strict=True):
        ax.plot(xs, [100 * p[f"dice_{r}_mean"] for p in points], "o-", color=colour,
                label=f"{r.upper()} mean")
        ax.plot(xs, [100 * p[f"dice_{r}_median"] for p in points], "s--", color=colour,
                alpha=0.6, label=f"{r.upper()} median")
    for p in points:
        ax.annotate(f"{p['epochs']}", (p["train_cpu_min_per_fold"], 100 * p["dice_wt_mean"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training CPU-minutes per fold (one thread; labels: epochs of 40 steps)")
    ax.set_ylabel("Dice over cases, %")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED)
    ap.add_argument("-o", "--output", type=Path, default=Path("curve_brats"))
    ap.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", default="6,12,24")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "bench" / "brats_curve.json")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "brats_curve.png")
    args = ap.parse_args()
    # the validation cases are the fold's test cases and train.monitor is last: one batch an
    # epoch keeps the logs without costing the CPU minutes the curve counts
    args.sets = [a for kv in ["train.validation_steps=1", *args.overrides] for a in ("--set", kv)]
    args.output.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        env[key] = "1"
    load0, start = os.getloadavg(), time.perf_counter()
    store = args.output / "brats.h5"
    if not store.with_suffix(".folds.json").is_file():
        braintseg("prepare", "-c", str(args.config), *args.sets, "--set",
                  f"data.n_folds={args.folds}", "-i", str(args.input), "-o", str(store),
                  "--overwrite", env=env)
    points = [point(args, store, int(e), env) for e in sorted(map(int, args.epochs.split(",")))]
    folds = json.loads(store.with_suffix(".folds.json").read_text())["folds"]
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_model()}, {os.cpu_count()} "
              "cores; every command on one thread", "command": " ".join(sys.argv),
              "config": str(args.config), "overrides": args.overrides,
              "folds": [sorted(f) for f in folds], "wall_seconds": time.perf_counter() - start,
              "loadavg_start": load0, "loadavg_after_each_command": LOADS, "points": points}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    draw(points, args.png, f"BraTS demo network, {len(folds)}-fold CV of "
         f"{sum(map(len, folds))} cases, {time.strftime('%Y-%m-%d')}")
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
