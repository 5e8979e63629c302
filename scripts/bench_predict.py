"""Benchmark ``braintseg predict``: seconds per case, file I/O included, one view vs 3 views + TTA.

Usage:
    python scripts/bench_predict.py [--cases N] [-i BRATS_ROOT | --synthetic] [--out JSON]
    KERAS_BACKEND=jax python scripts/bench_predict.py --cases 5 --out $OUT/predict_h100.json

Untrained default models (``attention_unet``, levels 3, 64 start channels, default crop
``(42, 194, 29, 221, 2, 146)``) are built and saved as run folders in a temporary directory, so
no trained run is needed (weights do not change the timing).  Inputs are the shared real BraTS
cases when present (``../shared/data/brats``), else synthetic 240x240x155 NIfTI cases.

Scenarios: ``one_view`` (axial, no TTA) and ``three_views_tta`` (axial + sagittal + coronal, each
averaged over the 4 flips of H and W: 12 network passes per case).  Each scenario runs
``run_predict`` twice in one process: on 1 case (``first_s``: model loading, compilation and
one case) and on N cases (``total_s``); the steady-state figure is
``(total_s - first_s) / (N - 1)`` seconds per case (reading NIfTI, normalising, predicting,
writing the label NIfTI; reading and writing overlap prediction in background threads).
With ``--stages`` one case is also timed stage by stage (load+normalise, predict, write);
``--no-network`` replaces the network by a constant to time file I/O and host work alone.
GPU targets (issue 4): <= 0.5 s/case one view, <= 1.5 s/case 3 views + flips.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"
TARGETS = {"one_view": 0.5, "three_views_tta": 1.5}
SCENARIOS = {"one_view": (("axial",), False),
             "three_views_tta": (("axial", "sagittal", "coronal"), True)}


def device_info() -> dict[str, Any]:
    """Keras backend and the accelerator it sees."""
    import keras

    backend = keras.backend.backend()
    devices: list[str] = []
    if backend == "jax":
        import jax

        devices = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_physical_devices()]
    elif backend == "torch":
        import torch

        devices = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    import os

    return {"backend": backend, "devices": devices, "cpu_count": os.cpu_count()}


class ConstantModel:
    """Stands in for the network (``--no-network``): uniform probabilities at no compute, so
    the timing is file I/O, normalisation, slicing, stitching, argmax and writing alone."""

    def predict_on_batch(self, x: Any) -> Any:
        import numpy as np

        return np.full((*x.shape[:3], 4), 0.25, np.float32)


def use_constant_model() -> None:
    """Patch predict so that every run's network is :class:`ConstantModel` (TTA: no flips)."""
    import braintseg.inference.volumes as volumes
    from braintseg.inference.ensemble import SlicePredictor

    def predictors(runs: list[Any], batch_size: int, tta: bool) -> list[Any]:
        return [SlicePredictor(ConstantModel(), run.view, batch_size) for run in runs]

    volumes.predictors = predictors  # type: ignore[assignment]


def make_runs(root: Path, views: tuple[str, ...], sets: list[str]) -> dict[str, Path]:
    """Run folders (untrained; default config plus ``sets`` model overrides) for ``views``."""
    import keras

    from braintseg.config import Config, dump_config, load_config
    from braintseg.data.preprocess import VIEW_AXIS, box_shape
    from braintseg.model import build_model

    box = Config().data.crop
    runs = {}
    for view in views:
        cfg = load_config(None, [f"train.view={view}", *sets])
        sizes = [s for a, s in enumerate(box_shape(box)) if a != VIEW_AXIS[view]]
        folder = root / f"run_{view}"
        folder.mkdir(parents=True)
        keras.utils.set_random_seed(0)
        build_model(cfg.model, (*sizes, 4)).save(folder / "model.keras")
        dump_config(cfg, folder / "config.yaml")
        (folder / "run.json").write_text(json.dumps({
            "schema_version": 1, "store": None, "fold": 0, "view": view,
            "input_shape": [*sizes, 4], "n_channels": 4, "crop_box": list(box)}))
        (folder / "DONE").write_text("")
        runs[view] = folder
    return runs


def input_cases(args: argparse.Namespace, tmp: Path) -> tuple[Path, list[str], str]:
    """(root, case ids, description): shared real cases, ``-i``, or synthetic 240x240x155."""
    from braintseg.sources.brats import find_cases
    from braintseg.sources.synthetic import write_case

    root = args.input or (SHARED if SHARED.is_dir() and not args.synthetic else None)
    if root is not None:
        ids = [c.case_id for c in find_cases(root, require_labels=False)][: args.cases]
        return root, ids, f"real BraTS NIfTI under {root}"
    root = tmp / "cases"
    ids = []
    for i in range(args.cases):
        conv = "brats2023" if i % 2 else "brats2018"
        cid = f"BraTS-GLI-{i:05d}-000" if i % 2 else f"Brats18_BENCH_{i:03d}_1"
        write_case(root, cid, (240, 240, 155), seed=i, convention=conv)  # type: ignore[arg-type]
        ids.append(cid)
    return root, ids, "synthetic 240x240x155 NIfTI (int16 images, gzip)"


def time_scenario(runs: list[Path], root: Path, ids: list[str], tta: bool, out: Path,
                  batch_size: int) -> dict[str, Any]:
    """Time run_predict on 1 case, then on all ``ids``; steady-state s/case."""
    import csv

    from braintseg.inference.predict import run_predict

    sets = [f"predict.batch_size={batch_size}"]
    t = time.perf_counter()
    run_predict(runs, root, out / "first", overrides=sets, tta=tta, cases=ids[:1])
    first = time.perf_counter() - t
    result: dict[str, Any] = {"runs": len(runs), "tta": tta, "n_cases": len(ids),
                              "first_s": round(first, 3)}
    if len(ids) > 1:
        t = time.perf_counter()
        run_predict(runs, root, out / "all", overrides=sets, tta=tta, cases=ids)
        total = time.perf_counter() - t
        rows = list(csv.DictReader(open(out / "all" / "predictions.csv")))
        result.update(total_s=round(total, 3),
                      steady_s_per_case=round((total - first) / (len(ids) - 1), 3),
                      csv_case_s=[float(r["seconds"]) for r in rows])
    else:
        result["steady_s_per_case"] = None
    return result


def time_stages(runs: list[Path], root: Path, case: str, tta: bool, out: Path,
                batch_size: int) -> dict[str, float]:
    """One case stage by stage (after a warm-up of the same case)."""
    from braintseg.inference.cases import plan_cases
    from braintseg.inference.ensemble import ensemble_volume, probabilities_to_labels
    from braintseg.inference.runs import read_run
    from braintseg.inference.volumes import predictors as make_predictors
    from braintseg.inference.volumes import write_case

    infos = [read_run(r) for r in runs]
    predictors = make_predictors(infos, batch_size, tta)
    plan = plan_cases(root, infos[0].crop_box, 4, infos[0].cfg.data, [case], None)[0]
    out.mkdir(parents=True, exist_ok=True)
    ensemble_volume(predictors, plan.load().images)  # warm-up (compilation)
    t0 = time.perf_counter()
    loaded = plan.load()
    t1 = time.perf_counter()
    probs = ensemble_volume(predictors, loaded.images)
    labels = probabilities_to_labels(probs, "classes")
    t2 = time.perf_counter()
    write_case(loaded, labels, None, out / f"{case}.nii.gz", "classes")
    t3 = time.perf_counter()
    return {"load_normalise_s": round(t1 - t0, 3), "predict_s": round(t2 - t1, 3),
            "write_s": round(t3 - t2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2, help="cases per scenario (>= 2 for "
                        "a steady-state figure)")
    parser.add_argument("-i", "--input", type=Path, default=None, help="BraTS root to use")
    parser.add_argument("--synthetic", action="store_true", help="synthetic cases even when "
                        "the shared real cases are present")
    parser.add_argument("--scenarios", default="one_view,three_views_tta",
                        help=f"comma-separated subset of {list(SCENARIOS)}")
    parser.add_argument("--batch-size", type=int, default=32, help="predict.batch_size")
    parser.add_argument("--stages", action="store_true", help="also time one case per stage")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="model override, e.g. model.start_channels=4 to time the pipeline "
                        "(I/O and host work) without the default network's compute")
    parser.add_argument("--no-network", action="store_true",
                        help="replace the network by a constant: times I/O and host work only")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--tmp", type=Path, default=None, help="temporary folder parent")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = [s for s in args.scenarios.split(",") if s]
    if args.no_network:
        use_constant_model()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        root, ids, source = input_cases(args, tmp)
        views = tuple(dict.fromkeys(v for n in names for v in SCENARIOS[n][0]))
        runs = make_runs(tmp / "runs", views, args.sets)
        report: dict[str, Any] = {"device": device_info(), "input": source, "cases": ids,
                                  "model_overrides": args.sets, "no_network": args.no_network,
                                  "batch_size": args.batch_size, "scenarios": {}}
        for name in names:
            scenario_views, tta = SCENARIOS[name]
            run_dirs = [runs[v] for v in scenario_views]
            res = time_scenario(run_dirs, root, ids, tta, tmp / name, args.batch_size)
            if args.stages:
                res["stages"] = time_stages(run_dirs, root, ids[0], tta, tmp / f"{name}_st",
                                            args.batch_size)
            steady = res["steady_s_per_case"]
            res["target_s"] = TARGETS[name]
            res["ratio_to_target"] = round(steady / TARGETS[name], 2) if steady else None
            report["scenarios"][name] = res
            print(f"{name:>16}: first call {res['first_s']:.2f} s (load + compile + 1 case); "
                  + (f"steady {steady:.3f} s/case over {len(ids)} cases "
                     f"({res['ratio_to_target']}x the GPU target {TARGETS[name]} s)"
                     if steady else "steady: n/a (--cases 1)")
                  + (f"; stages {res['stages']}" if "stages" in res else ""), flush=True)
    sc = report["scenarios"]
    if all(sc.get(n, {}).get("steady_s_per_case") for n in SCENARIOS):
        ratio = sc["three_views_tta"]["steady_s_per_case"] / sc["one_view"]["steady_s_per_case"]
        report["three_views_tta_over_one_view"] = round(ratio, 2)
        print(f"3 views + TTA / one view: {ratio:.2f}x (12 network passes vs 1)")
    print(f"device: {report['device']}; input: {source}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
