"""Dice against CPU-minutes: the 4-fold LGG cross-validation at several training lengths, drawn.

Usage:
    python scripts/curve_lgg.py [-i LGG_ROOT] [-o OUT_DIR] [-c configs/lgg_cv.yaml]
                                [--set KEY=VALUE] [--epochs 4,8,16,32] [--jobs 2]
                                [--label NAME] [--json docs/bench/lgg_curve.json]
                                [--png docs/lgg_curve.png]

Runs ``scripts/cv_lgg.py`` (prepare, then train / predict each fold on ONE CPU thread, ``--jobs``
folds at a time: give it the machine's cores; then evaluate) once per ``--epochs`` value E
(``--set train.epochs=E``), longest first, into ``OUT/e<E>`` (one OUT folder per series);
an existing complete ``OUT/e<E>/cv_summary.json`` is reused, so a longer point can be added
later.  Every point's x is what was *measured*: the training command's CPU seconds (user +
system, start-up and compilation included) averaged over the folds, in minutes; its y the
per-patient Dice mean and median of the patients' out-of-fold predictions, and the slice
detection AUC.

Appends (or replaces) the series ``--label`` in the ``--json`` file (with the machine, the load
averages and the command) and draws every series of that file into ``--png``: per-patient Dice
mean (solid) and median (dashed) against CPU-minutes per fold, log-scaled x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from cv_lgg import SHARED  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_point(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """One cross-validation of ``epochs`` passes (reused when complete); its curve point."""
    out = args.output / f"e{epochs}"
    summary_path = out / "cv_summary.json"
    if not summary_path.is_file():
        cmd = [sys.executable, str(REPO / "scripts" / "cv_lgg.py"), "-i", str(args.input),
               "-o", str(out), "-c", str(args.config), "--threads", "1", "--jobs", str(args.jobs),
               *[a for kv in args.overrides for a in ("--set", kv)],
               "--set", f"train.epochs={epochs}"]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "log.txt", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode:
            sys.exit(f"cross-validation of {epochs} epochs failed: see {out / 'log.txt'}")
    s = json.loads(summary_path.read_text())
    train_cpu = [v for k, v in s["cpu_seconds"].items() if k.startswith("train_f")]
    if not train_cpu:
        sys.exit(f"{summary_path} has no training times (a --reuse run): delete {out}")
    summ = s["summary"]
    point = {"epochs": epochs, "train_cpu_min_per_fold": sum(train_cpu) / len(train_cpu) / 60,
             "predict_cpu_s_per_fold": sum(v for k, v in s["cpu_seconds"].items()
                                           if k.startswith("predict_f")) / len(train_cpu),
             "dice_per_patient_mean": summ["dice_per_patient_mean"],
             "dice_per_patient_median": summ["dice_per_patient_median"],
             "dice_pooled": summ["dice_pooled"], "auc": summ["detection"]["auc"],
             "accuracy": summ["detection"]["accuracy"],
             "loadavg_after_each_command": s["loadavg_after_each_command"],
             "per_patient": {c["case"]: c["dice"] for c in s["cases"]}}
    print(f"{epochs:3d} epochs: {point['train_cpu_min_per_fold']:.1f} CPU-min/fold, Dice per "
          f"patient mean {100 * point['dice_per_patient_mean']:.1f} %, median "
          f"{100 * point['dice_per_patient_median']:.1f} %, AUC {100 * point['auc']:.1f} %",
          flush=True)
    return point


def draw(series: list[dict[str, Any]], png: Path) -> None:
    """Per-patient Dice mean (solid) and median (dashed) of every series against CPU-min."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, ser in enumerate(series):
        pts = sorted(ser["points"], key=lambda p: p["train_cpu_min_per_fold"])
        x = [p["train_cpu_min_per_fold"] for p in pts]
        color = f"C{k}"
        ax.plot(x, [100 * p["dice_per_patient_mean"] for p in pts], "o-", color=color,
                label=f"{ser['label']}: mean")
        ax.plot(x, [100 * p["dice_per_patient_median"] for p in pts], "s--", color=color,
                alpha=0.6, label=f"{ser['label']}: median")
    ax.axhline(70, color="grey", lw=0.8, ls=":")
    ax.text(ax.get_xlim()[0], 70.5, " target 70 % (mean)", color="grey", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training CPU-minutes per fold (one thread, measured)")
    ax.set_ylabel("per-patient Dice, out of fold (%)")
    ax.set_ylim(0, 100)
    ax.set_title("LGG kaggle_3m, 12 patients, 4-fold patient-level CV", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED)
    ap.add_argument("-o", "--output", type=Path, default=Path("curve_lgg"))
    ap.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "lgg_cv.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--epochs", default="4,8,16,32")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--label", default=None)
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "bench" / "lgg_curve.json")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "lgg_curve.png")
    args = ap.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    load0, t0 = os.getloadavg(), time.perf_counter()
    points = [run_point(args, e) for e in sorted(epochs, reverse=True)]
    label = args.label or (args.config.stem + "".join(f" {kv}" for kv in args.overrides))
    series = {"label": label, "config": str(args.config.relative_to(REPO)
                                            if args.config.is_relative_to(REPO) else args.config),
              "overrides": args.overrides, "points": sorted(points, key=lambda p: p["epochs"]),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "jobs": args.jobs, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
              "wall_s": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"series": []}
    doc["series"] = [s for s in doc["series"] if s["label"] != label] + [series]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    draw(doc["series"], args.png)
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
