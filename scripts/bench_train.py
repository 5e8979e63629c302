#!/usr/bin/env python
"""Training throughput benchmark: generator alone, model fed from RAM, model fed from the store.

Prints, in one run (slices per second):

* (a) the generator alone (``SliceDataset`` in RAM and stream mode, flips on), in a child
  process pinned to one CPU core;
* (b) the default model (attention U-Net, levels 3, 64 channels) fed from numpy arrays in RAM;
* (c) the same model fed from the store through ``SliceDataset`` (RAM and stream mode);

at each batch size, under a mixed-precision policy (default ``mixed_bfloat16``), and the ratios
(c)/(b) and (a)/(b).  Then the peak RSS (VmHWM, one child process per store) of one stream-mode
epoch over stores of 10 and of 100 synthetic cases at full BraTS crop size.

Stores are written directly with the store writer from random data (content does not change
speed).  Examples::

    python scripts/bench_train.py --batch-sizes 2 --steps 3 --rss-cases 10,20   # CPU smoke
    KERAS_BACKEND=jax python scripts/bench_train.py --out bench.json            # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (152, 192, 144)  # default crop: axial slices 152 x 192, 144 per case


def make_store(path: Path, n_cases: int, shape: tuple[int, int, int] = SHAPE) -> Path:
    """A schema-1 store of ``n_cases`` synthetic cases (4 distinct cases, cycled).

    Brain-like content, because it sets the cost of a read: z-scored noise inside an ellipsoid
    filling ~45 % of the crop box, exact zeros outside (as in prepared BraTS cases), so chunks
    outside the brain compress to almost nothing and those inside hardly at all.
    """
    from braintseg.data.store import PreparedCase, StoreWriter

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - (n - 1) / 2) / (0.47 * n)) ** 2 for g, n in zip(grid, shape, strict=True))
    inside = inside <= 1.0
    cases = []
    for _ in range(min(4, n_cases)):
        images = rng.standard_normal((*shape, 4), dtype=np.float32).astype(np.float16)
        images[~inside] = 0
        labels = np.zeros(shape, np.uint8)
        labels[40:90, 60:120, 50:100] = rng.integers(0, 4, (50, 60, 50), dtype=np.uint8)
        cases.append((images, labels))
    ids = [f"Brats18_BENCH_{i:03d}_1" for i in range(n_cases)]
    with StoreWriter(path, shape, 4, expected_cases=n_cases) as w:
        for i, case_id in enumerate(ids):
            images, labels = cases[i % len(cases)]
            w.append(PreparedCase(case_id, images, labels, {"grade": "HGG",
                                                            "convention": "brats2018"}))
        w.finish(None, {"crop_box": [0, shape[0], 0, shape[1], 0, shape[2]], "config": {}})
    return path


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_generator(store: Path, mode: str, batch: int, steps: int | None) -> dict[str, Any]:
    """(a) and the RSS measurement: read batches in order, as Keras does, on one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from braintseg.data.augment import Augmenter
    from braintseg.data.generator import SliceDataset
    from braintseg.data.store import open_store

    ids = open_store(store).case_ids
    rss0 = _vmhwm_mb()
    t0 = time.perf_counter()
    ds = SliceDataset(store, ids, "axial", batch, cache=mode, augment=Augmenter(flip=True),
                      max_batches=steps, prefetch=4)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    n = 0
    for i in range(len(ds)):
        n += len(ds[i][0])
    t2 = time.perf_counter()
    ds.close()
    return {"mode": mode, "batch": batch, "slices": n, "slices_per_s": n / (t2 - t1),
            "setup_s": t1 - t0, "vmhwm_mb": _vmhwm_mb(), "vmhwm_after_import_mb": rss0,
            "cases": len(ids)}


def run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit_rate(model: Any, data: Any, steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - t0)


def bench_model(store: Path, batch: int, steps: int, policy: str) -> dict[str, Any]:
    """(b) and (c) at one batch size: one compiled model, every feed through a PyDataset, so
    all take the same Keras adapter path and the same compiled step; (b) returns pre-made
    batches from RAM (no work per step), (c) reads the store through SliceDataset."""
    import keras

    from braintseg.config import Config
    from braintseg.data.augment import Augmenter
    from braintseg.data.generator import SliceDataset
    from braintseg.data.store import open_store
    from braintseg.losses import build_loss
    from braintseg.metrics import build_metrics
    from braintseg.model import build_model

    class Premade(keras.utils.PyDataset):
        def __init__(self, batches: list[Any], n: int) -> None:
            super().__init__()
            self.batches, self.n = batches, n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> Any:
            return self.batches[i % len(self.batches)]

    keras.mixed_precision.set_global_policy(policy)
    cfg = Config()
    ids = open_store(store).case_ids
    steps = min(steps, len(ids) * SHAPE[2] // batch)  # full batches only (no retracing)
    model = build_model(cfg.model, (SHAPE[0], SHAPE[1], 4))
    model.compile(optimizer=keras.optimizers.SGD(0.008, momentum=0.9),
                  loss=build_loss(cfg.train, cfg.model), metrics=build_metrics(cfg.model))
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((batch, SHAPE[0], SHAPE[1], 4), np.float32)
                .astype(np.float16), rng.integers(0, 4, (batch, SHAPE[0], SHAPE[1]), np.uint8))
               for _ in range(8)]
    model.fit(Premade(batches, min(steps, 5)), epochs=1, verbose=0, shuffle=False)  # compile
    result: dict[str, Any] = {"batch": batch, "steps": steps}
    result["ram_arrays"] = _fit_rate(model, Premade(batches, steps), steps, batch)
    for mode in ("ram", "stream"):
        ds = SliceDataset(store, ids, "axial", batch, cache=mode,  # type: ignore[arg-type]
                          augment=Augmenter(flip=True), max_batches=steps, seed=1)
        ds[0]  # RAM cache filled and store opened before timing, as after epoch 1
        ds.set_epoch(1)
        result[f"store_{mode}"] = _fit_rate(model, ds, steps, batch)
        ds.close()
    result["ram_arrays_again"] = _fit_rate(model, Premade(batches, steps), steps, batch)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=30, help="cases in the throughput store")
    p.add_argument("--batch-sizes", default="16,32,64")
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--gen-steps", type=int, default=None,
                   help="batches for the generator alone [default: one epoch]")
    p.add_argument("--rss-cases", default="10,100", help="store sizes for the peak-RSS test")
    p.add_argument("--policy", default="mixed_bfloat16")
    p.add_argument("--workdir", type=Path, default=None, help="where stores are written")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--child", nargs=4, metavar=("STORE", "MODE", "BATCH", "STEPS"),
                   help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        steps = int(a.child[3]) or None
        print(json.dumps(child_generator(Path(a.child[0]), a.child[1], int(a.child[2]), steps)))
        return
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in a.batch_sizes.split(",")]
    t0 = time.perf_counter()
    store = make_store(work / f"bench_{a.cases}.h5", a.cases)
    res: dict[str, Any] = {"shape": SHAPE, "cases": a.cases, "policy": a.policy,
                           "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                           "store_write_s": time.perf_counter() - t0, "generator": [],
                           "model": [], "rss": []}
    gen_steps = str(a.gen_steps or 0)
    for b in batches:
        for mode in ("ram", "stream"):
            r = run_child([str(store), mode, str(b), gen_steps])
            res["generator"].append(r)
            print(f"(a) generator alone, 1 core, {mode:6s} batch {b:3d}: "
                  f"{r['slices_per_s']:9.0f} slices/s", flush=True)
    for b in batches:
        r = bench_model(store, b, a.steps, a.policy)
        gen = {g["mode"]: g["slices_per_s"] for g in res["generator"] if g["batch"] == b}
        r["store_over_ram"] = {m: r[f"store_{m}"] / r["ram_arrays"] for m in ("ram", "stream")}
        r["generator_over_model"] = {m: gen[m] / r["ram_arrays"] for m in gen}
        res["model"].append(r)
        print(f"batch {b:3d}: (b) model from RAM {r['ram_arrays']:8.1f} | (c) from store "
              f"ram-cache {r['store_ram']:8.1f} ({r['store_over_ram']['ram']:.1%}), stream "
              f"{r['store_stream']:8.1f} ({r['store_over_ram']['stream']:.1%}) | (a)/(b) "
              f"ram {r['generator_over_model']['ram']:.1f}x stream "
              f"{r['generator_over_model']['stream']:.1f}x", flush=True)
    for n in [int(c) for c in a.rss_cases.split(",") if c]:
        path = make_store(work / f"bench_{n}.h5", n)
        r = run_child([str(path), "stream", "32", "0"])
        res["rss"].append(r)
        print(f"peak RSS, stream epoch over {n:4d} cases: {r['vmhwm_mb']:8.1f} MB "
              f"({r['slices_per_s']:.0f} slices/s)", flush=True)
    if len(res["rss"]) >= 2:
        res["rss_ratio_last_over_first"] = res["rss"][-1]["vmhwm_mb"] / res["rss"][0]["vmhwm_mb"]
        print(f"peak RSS ratio {res['rss'][-1]['cases']} / {res['rss'][0]['cases']} cases: "
              f"{res['rss_ratio_last_over_first']:.3f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
