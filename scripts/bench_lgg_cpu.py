"""Training speed of the LGG network on ONE CPU core against the floor its FLOPs set.

Usage:
    python scripts/bench_lgg_cpu.py [-c configs/lgg_cv.yaml] [--downsample 1,2,4]
                                    [--backends tensorflow,jax] [--batch 4] [--seconds 20]
                                    [--json docs/bench/lgg_cpu_speed.json]

For each backend and ``model.downsample`` it starts a child process pinned to one core (one
TensorFlow / XLA / OpenMP thread) that builds the config's network for 256x256x3 slices, compiles
it with the config's loss (``braintseg.training.losses.build_loss``) and Adam, and runs training
steps on random batches held in RAM for ``--seconds``: slices per CPU-second (the child's own
user + system time; the clock starts after compilation and three warm-up steps).

The floor: the training step's FLOPs per slice from XLA's cost analysis of the compiled JAX
gradient step (forward + backward, batch ``--batch``), divided by what this core reaches on a
large float32 matrix product (numpy's BLAS, one thread, 2048x2048, per CPU-second).  Printed:
FLOPs per slice, the GEMM rate, the floor in slices/s, each measured rate and its share of the
floor.  Random
data: content does not change the speed.

And what ``model.downsample`` costs in resolution (with ``-i LGG_ROOT``, default the shared
copy when present): the per-patient Dice of each true mask against itself averaged over d x d
blocks, upsampled bilinearly and thresholded at 0.5 (the best a network working at 1/d can do
through the same resampling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "lgg_kaggle_3m"
sys.path.insert(0, str(REPO / "scripts"))
from curve_lgg import cpu_model  # noqa: E402

THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                        "--xla_force_host_platform_device_count=1"}


def _model(config: str, downsample: int, batch: int) -> tuple[Any, Any, Any, Any]:
    import dataclasses

    import numpy as np

    from braintseg.config import load_config
    from braintseg.model import build_model
    from braintseg.training.losses import build_loss

    cfg = load_config(config)
    mcfg = dataclasses.replace(cfg.model, downsample=downsample, classification_head="none")
    model = build_model(mcfg, (256, 256, 3))
    loss = build_loss(cfg.train, mcfg)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 256, 256, 3)).astype(np.float32)
    y = (rng.random((batch, 256, 256)) < 0.05).astype(np.uint8)
    return model, loss, x, y


def child_rate(config: str, downsample: int, batch: int, seconds: float) -> dict[str, float]:
    """Training slices per CPU-second of this process (run in the pinned child)."""
    import keras

    model, loss, x, y = _model(config, downsample, batch)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    for _ in range(3):
        model.train_on_batch(x, y)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < seconds:
        model.train_on_batch(x, y)
        n += batch
    return {"slices_per_cpu_s": n / (time.process_time() - c0),
            "slices_per_s": n / (time.perf_counter() - t0), "parameters": model.count_params()}


def child_flops(config: str, downsample: int, batch: int) -> float:
    """FLOPs per slice of one compiled JAX gradient step (XLA cost analysis)."""
    import jax
    import keras

    model, loss, x, y = _model(config, downsample, batch)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def f(tv: Any, ntv: Any, x: Any, y: Any) -> Any:
        out, _ = model.stateless_call(tv, ntv, x, training=True)
        return keras.ops.mean(loss(y, out))

    cost = jax.jit(jax.value_and_grad(f)).lower(tv, ntv, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / batch


def gemm_gflops() -> float:
    """float32 2048x2048 matrix product rate of numpy's BLAS on one thread, per CPU-second
    (best of 5)."""
    import numpy as np

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    best = 0.0
    for _ in range(5):
        t = time.process_time()
        a @ a
        best = max(best, 2 * 2048**3 / (time.process_time() - t) / 1e9)
    return best


def resolution_ceiling(root: Path, d: int) -> tuple[float, float]:
    """(mean, min) per-patient Dice of the masks under ROOT after d x d block means, bilinear
    upsampling and the 0.5 threshold."""
    import numpy as np
    import tifffile
    from scipy.ndimage import zoom

    dices = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        inter = total = 0
        for path in patient.glob("*_mask.tif"):
            y = tifffile.imread(path) > 0
            h, w = y.shape
            small = y.reshape(h // d, d, w // d, d).mean(axis=(1, 3))
            back = zoom(small, d, order=1) > 0.5
            inter += int((back & y).sum())
            total += int(back.sum() + y.sum())
        dices.append(2 * inter / total if total else 1.0)
    return float(np.mean(dices)), float(np.min(dices))


def spawn(backend: str, what: str, args: argparse.Namespace, d: int) -> Any:
    env = {**os.environ, **THREADS, "KERAS_BACKEND": backend}
    core = str(sorted(os.sched_getaffinity(0))[-1])
    cmd = ["taskset", "-c", core, sys.executable, __file__, "--child", what,
           "-c", str(args.config), "--batch", str(args.batch), "--seconds", str(args.seconds),
           "--downsample", str(d)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{backend} {what} (downsample {d}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "lgg_cv.yaml")
    ap.add_argument("--downsample", default="1,2,4")
    ap.add_argument("--backends", default="tensorflow,jax")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("-i", "--input", type=Path, default=SHARED)
    ap.add_argument("--child", choices=["rate", "flops"], default=None)
    args = ap.parse_args()
    if args.child == "rate":
        print(json.dumps(child_rate(str(args.config), int(args.downsample), args.batch,
                                    args.seconds)))
        return
    if args.child == "flops":
        print(json.dumps(child_flops(str(args.config), int(args.downsample), args.batch)))
        return
    for key, value in THREADS.items():
        os.environ.setdefault(key, value)
    gemm = gemm_gflops()
    load0 = os.getloadavg()
    rows = []
    print(f"one core: float32 GEMM {gemm:.1f} GFLOP per CPU-s (numpy BLAS, 2048^2)")
    for d in (int(v) for v in args.downsample.split(",")):
        flops = spawn("jax", "flops", args, d)
        floor = gemm * 1e9 / flops
        print(f"downsample {d}: {flops / 1e9:.2f} GFLOP per training slice (XLA), floor "
              f"{floor:.1f} slices/s per core")
        for backend in args.backends.split(","):
            r = spawn(backend, "rate", args, d)
            share = r["slices_per_cpu_s"] / floor
            print(f"  {backend:10s} {r['slices_per_cpu_s']:6.2f} slices per CPU-s "
                  f"({100 * share:.0f} % of the floor)", flush=True)
            rows.append({"downsample": d, "backend": backend, "gflop_per_slice": flops / 1e9,
                         "floor_slices_per_s": floor, **r, "share_of_floor": share})
    ceiling = {}
    if args.input.is_dir():
        for d in (int(v) for v in args.downsample.split(",")):
            ceiling[d] = resolution_ceiling(args.input, d)
            print(f"downsample {d}: the true masks resampled keep per-patient Dice mean "
                  f"{100 * ceiling[d][0]:.1f} % (worst patient {100 * ceiling[d][1]:.1f} %)")
    result = {"gemm_gflops_one_core": gemm, "rows": rows, "resolution_ceiling": ceiling,
              "batch": args.batch,
              "config": str(args.config), "machine": cpu_model(),
              "cpu_count": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
