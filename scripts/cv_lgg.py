"""k-fold patient-level cross-validation on LGG kaggle_3m patients (CPU), and measured pairs.

Usage:
    python scripts/cv_lgg.py [-i LGG_ROOT] [-o OUT_DIR] [-c configs/lgg_cv.yaml] [--set KEY=VALUE]
                             [--run-folds 0,1] [--threads 1] [--jobs 2] [--reuse]
                             [--baseline OTHER_OUT_DIR] [--bench docs/bench/NAME.json]
                             [--min-component-sizes 50,100,200]

Runs the commands a user would (``braintseg prepare``, ``train --fold k``, ``predict --fold k``
for each fold k of ``--run-folds``, default all ``--folds``), gathers every fold's predictions
of its own validation patients into ``OUT/predictions`` (each patient predicted once, by the
fold that did not train on it) and runs ``braintseg evaluate`` on them: per-patient Dice (Buda
et al.'s metric: the Dice of each patient's stack of slices) mean and median, pooled Dice,
slice-level detection accuracy / AUC (and the classification head's, when the config has one).
Prints the figures, the wall and CPU time per step and the load average (sampled after every
command); writes ``OUT/cv_summary.json``.

``--jobs N`` trains and predicts N folds at a time (each command's CPU seconds are its own).
``--threads N`` sets TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS / OMP_NUM_THREADS for the
commands.  ``--reuse`` keeps an existing store, the folds whose ``pred_f<k>`` is complete and
the finished runs (``run_f<k>/DONE``: predicted again when ``pred_f<k>`` is gone).
``--min-component-sizes 50,100,...`` predicts every fold again with each
``predict.min_component_size`` (small 8-connected components removed from each slice's mask,
:mod:`braintseg.inference.slices`) into ``OUT/pred_mcs<N>_f<k>`` and scores them the same way:
the figures per size go to ``cv_summary.json`` under ``min_component_size``.
``--baseline DIR`` (another output folder of this script, e.g. the run without ``--set``)
scores DIR's predictions of the same folds too and writes both summaries and their per-patient
pairs into the ``--bench`` JSON (a measured pair: same patients, same folds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p / "data" / "lgg_kaggle_3m" for p in (REPO.parent / "shared",
                                                      REPO.parents[1] / "shared")
               if (p / "data" / "lgg_kaggle_3m").is_dir()),
              REPO.parent / "shared" / "data" / "lgg_kaggle_3m")
LOADS: list[float] = []


def braintseg(*args: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run one ``braintseg`` command; return its (wall, CPU) seconds; stop on failure.  The
    CPU seconds (user + system) are the command's own (``os.wait4``), so commands may run side
    by side (``--jobs``)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "braintseg", "-q", *args]
    print("$ braintseg", " ".join(args), flush=True)
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    LOADS.append(os.getloadavg()[0])
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def gather(out: Path, folds: list[int], name: str, prefix: str = "pred_f") -> Path:
    """Copy the predictions of ``folds`` (``OUT/<prefix><k>``) into ``OUT/<name>`` with one
    ``predictions.csv``; returns that folder."""
    gathered = out / name
    shutil.rmtree(gathered, ignore_errors=True)
    gathered.mkdir()
    header: str | None = None
    lines: list[str] = []
    for k in folds:
        pred = out / f"{prefix}{k}"
        for folder in (p for p in pred.iterdir() if p.is_dir()):
            shutil.copytree(folder, gathered / folder.name)
        rows = (pred / "predictions.csv").read_text().splitlines()
        if header is not None and rows[0] != header:
            sys.exit(f"{pred}/predictions.csv has other columns than the first fold's")
        header = rows[0]
        lines += rows[1:]
    (gathered / "predictions.csv").write_text("\n".join([header or "", *lines]) + "\n")
    return gathered


def evaluate(gathered: Path, truth: Path, env: dict[str, str]) -> dict[str, Any]:
    braintseg("evaluate", "-p", str(gathered), "-t", str(truth), env=env)
    return json.loads((gathered / "metrics.json").read_text())


def fold_patients(out: Path, folds: list[int]) -> dict[str, list[str]]:
    folds_json = json.loads((out / "lgg.folds.json").read_text())
    return {str(k): sorted(folds_json["folds"][k]) if "folds" in folds_json else [] for k in folds}


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def describe(s: dict[str, Any]) -> list[str]:
    d = s["detection"]
    lines = [f"Dice per patient: mean {pct(s['dice_per_patient_mean'])}, median "
             f"{pct(s['dice_per_patient_median'])}   (Buda et al. 2019, 110 patients: "
             "83.60 % / 87.33 %)",
             f"pooled Dice {pct(s['dice_pooled'])}; slice detection (max tumour probability): "
             f"accuracy {pct(d['accuracy'])}, AUC {pct(d['auc'])}"]
    if "detection_head" in s:
        h = s["detection_head"]
        lines.append(f"slice detection (classification head): accuracy {pct(h['accuracy'])}, "
                     f"AUC {pct(h['auc'])}; better: {s['detection_better']}")
    return lines


def postprocessed(out: Path, folds: list[int], sizes: list[int], args: argparse.Namespace,
                  env: dict[str, str]) -> dict[int, dict[str, Any]]:
    """Every fold predicted again with each ``predict.min_component_size``, gathered, scored."""
    result = {}
    for n in sizes:
        for k in folds:
            pred = out / f"pred_mcs{n}_f{k}"
            shutil.rmtree(pred, ignore_errors=True)
            braintseg("predict", "-m", str(out / f"run_f{k}"), "-i", str(out / "lgg.h5"),
                      "--fold", str(k), "-o", str(pred), "--set",
                      f"predict.min_component_size={n}", env=env)
        gathered = gather(out, folds, f"predictions_mcs{n}", prefix=f"pred_mcs{n}_f")
        result[n] = evaluate(gathered, args.input, env)["summary"]
        print(f"min_component_size {n}:")
        print("\n".join(describe(result[n])))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED)
    ap.add_argument("-o", "--output", type=Path, default=Path("cv_lgg"))
    ap.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "lgg_cv.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--run-folds", default=None, help="comma-separated folds (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--baseline", type=Path, default=None)
    ap.add_argument("--bench", type=Path, default=None)
    ap.add_argument("--min-component-sizes", default="")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    folds = ([int(k) for k in args.run_folds.split(",")] if args.run_folds
             else list(range(args.folds)))
    env = dict(os.environ)
    if args.threads:
        for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            env[key] = str(args.threads)
    sets = [a for kv in args.overrides for a in ("--set", kv)]
    common = ["-c", str(args.config), *sets]
    load0 = os.getloadavg()
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(name: str, *cmd: str) -> None:
        times[name], cpu[name] = braintseg(*cmd, env=env)

    store = out / "lgg.h5"
    if not (args.reuse and store.is_file()):
        step("prepare", "prepare", *common, "--set", f"data.n_folds={args.folds}", "-i",
             str(args.input), "-o", str(store), "--overwrite")
    def fold(k: int) -> None:
        run, pred = out / f"run_f{k}", out / f"pred_f{k}"
        if args.reuse and (pred / "predictions.csv").is_file():
            return
        if not (args.reuse and (run / "DONE").is_file()):
            step(f"train_f{k}", "train", *common, "-i", str(store), "--fold", str(k), "-o",
                 str(run), "--overwrite")
        shutil.rmtree(pred, ignore_errors=True)
        step(f"predict_f{k}", "predict", "-m", str(run), "-i", str(store), "--fold", str(k),
             "-o", str(pred))

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(fold, folds))
    name = "predictions" if len(folds) == args.folds else "predictions_f" + "-".join(
        map(str, folds))
    result = evaluate(gather(out, folds, name), args.input, env)
    s = result["summary"]
    summary = {"summary": s, "folds": folds, "n_folds": args.folds,
               "fold_patients": fold_patients(out, folds), "seconds": times,
               "cpu_seconds": cpu, "total_seconds": sum(times.values()),
               "total_cpu_seconds": sum(cpu.values()),
               "loadavg_start": load0, "loadavg_end": os.getloadavg(),
               "loadavg_after_each_command": LOADS,
               "config": str(args.config), "overrides": args.overrides,
               "threads": args.threads, "cpu_count": os.cpu_count(),
               "cases": result["cases"], "command": " ".join(sys.argv)}
    sizes = [int(v) for v in args.min_component_sizes.split(",") if v]
    if sizes:
        summary["min_component_size"] = {0: s, **postprocessed(out, folds, sizes, args, env)}
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{s['n_patients']} patients, {s['n_slices']} slices, folds {folds} of {args.folds}, "
          f"{summary['total_seconds']:.0f} s wall, {summary['total_cpu_seconds']:.0f} s CPU "
          f"(load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print("\n".join(describe(s)))
    bench: dict[str, Any] = {"variant": summary}
    if args.baseline is not None:
        base_pred = args.baseline / f"pred_f{folds[0]}"
        if not base_pred.is_dir():
            sys.exit(f"{args.baseline} holds no predictions of fold {folds[0]}")
        if fold_patients(args.baseline, folds) != summary["fold_patients"]:
            sys.exit(f"{args.baseline} has other patients in folds {folds}: not a pair")
        base = evaluate(gather(args.baseline, folds, name), args.input, env)
        dice_b = {c["case"]: c["dice"] for c in base["cases"]}
        bench["baseline"] = {"summary": base["summary"], "dir": str(args.baseline),
                             "cases": base["cases"]}
        bench["pairs"] = [{"case": c["case"], "dice_variant": c["dice"],
                           "dice_baseline": dice_b.get(c["case"])} for c in result["cases"]]
        print(f"baseline {args.baseline} on the same folds:")
        print("\n".join(describe(base["summary"])))
    if args.bench is not None:
        args.bench.parent.mkdir(parents=True, exist_ok=True)
        args.bench.write_text(json.dumps(bench, indent=1) + "\n")
        print(f"wrote {args.bench}")


if __name__ == "__main__":
    main()
