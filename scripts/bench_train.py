#!/usr/bin/env python
"""Training throughput benchmark: generator alone, model fed from RAM, model fed from the store.

With ``--host-only``: the host ceiling.  For RAM and stream, at each batch size, on the same
cores (default: all usable): the generator alone (``SliceDataset`` read in order, flips on) next
to ``braintseg train``'s own loop (``run_train``: its datasets, callbacks and ``model.fit``)
with the compiled training and test steps replaced by no-ops, and their ratio, with the targets
of issue 13 and the load average.

Otherwise it prints, in one run (slices per second):

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
    python scripts/bench_train.py --host-only --batch-sizes 16,64 --steps 0     # host ceiling
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
    from braintseg.data.folds import Folds
    from braintseg.store.read import PreparedCase, StoreWriter

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
        folds = Folds([ids[-1:], ids[:-1]], [], 2, 0, 0.0)  # fold 0: train on all but one
        w.finish(folds, {"crop_box": [0, shape[0], 0, shape[1], 0, shape[2]], "config": {}})
    return path


def _vmhwm_mb(pid: int | str = "self", key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pin(cores: int) -> int:
    """Restrict this process to its first ``cores`` usable cores; return how many it has."""
    if hasattr(os, "sched_setaffinity"):
        usable = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(usable[:max(1, cores)]))
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _machine_busy_s() -> float:
    """CPU seconds spent by the whole machine so far (``/proc/stat``: all but idle and iowait):
    counts the stream reader's worker processes, which ``process_time`` does not."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def child_generator(store: Path, mode: str, batch: int, steps: int | None,
                    cores: int = 1) -> dict[str, Any]:
    """(a) and the RSS measurement: read batches in order, as Keras does, on ``cores`` cores
    (the training cases of fold 0 when the store has folds, as ``braintseg train`` reads)."""
    used = _pin(cores)
    from braintseg.store.read import open_store
    from braintseg.training.augment import Augmenter
    from braintseg.training.generator import SliceDataset

    st = open_store(store)
    ids = st.fold_cases(0)[0] if st.folds else st.case_ids
    rss0 = _vmhwm_mb()
    t0 = time.perf_counter()
    ds = SliceDataset(store, ids, "axial", batch, cache=mode, augment=Augmenter(flip=True),
                      max_batches=steps, prefetch=4, seed=100)  # type: ignore[arg-type]
    ds[0]  # RAM cache filled / store opened before timing
    passes = []
    for epoch in (1, 2):  # stream: a chunk's first read in a process goes through HDF5
        ds.set_epoch(epoch)
        t1 = time.perf_counter()
        c1, m1 = time.process_time(), _machine_busy_s()
        n = 0
        for i in range(len(ds)):
            n += len(ds[i][0])
        t2 = time.perf_counter()
        passes.append((n, t2 - t1, time.process_time() - c1, _machine_busy_s() - m1))
    processes = ds.read_processes if ds.mode == "stream" else 0
    workers_mb = [_vmhwm_mb(w.proc.pid) for w in ds._procs._workers] if ds._procs else []
    shared_mb = _vmhwm_mb("self", "RssShmem")  # the shared blocks, counted by every process
    ds.close()
    (n1, wall1, cpu1, _), (n, wall, cpu, machine) = passes
    return {"mode": mode, "batch": batch, "slices": n, "slices_per_s": n / wall,
            "cpu_s_per_s": cpu / wall, "machine_cpu_s_per_s": machine / wall,
            "read_processes": processes, "first_pass_slices_per_s": n1 / wall1,
            "first_pass_cpu_s_per_s": cpu1 / wall1, "cores": used,
            "setup_s": time.perf_counter() - t0 - wall - wall1, "vmhwm_mb": _vmhwm_mb(),
            "vmhwm_after_import_mb": rss0, "reader_processes_vmhwm_mb": workers_mb,
            "shared_blocks_mb_at_end": shared_mb,
            "cases": len(ids)}


def _noop_steps(model: Any, input_shape: list[int]) -> None:
    """Replace the compiled training and test steps by ones that only take the batch to the
    device (one element of each array is read) and return a constant loss."""
    import keras
    from keras import ops, tree

    x = np.zeros((1, *input_shape), np.float16)
    model._symbolic_build(data_batch=(x, np.zeros(x.shape[:3], np.uint8)))  # metric state

    def touch(data: Any) -> Any:
        leaves = [ops.cast(ops.reshape(v, (-1,))[0], "float32") for v in tree.flatten(data)]
        return {"loss": sum(leaves[1:], leaves[0]) * 0.0}

    if keras.backend.backend() == "jax":
        model.train_step = lambda state, data: (touch(data), state)
        model.test_step = lambda state, data: (touch(data), state)
    else:
        model.train_step = touch
        model.test_step = touch


def child_host_only(store: Path, mode: str, batch: int, steps: int, cores: int,
                    work: Path, cached: bool = False) -> dict[str, Any]:
    """``braintseg train``'s own loop (run_train: its datasets, callbacks and model.fit) with
    the compiled steps replaced by no-ops: the host ceiling.  Two epochs; the second's
    ``slices_per_s`` from history.csv (timed from its second batch, as for any run)."""
    import csv

    used = _pin(cores)
    import braintseg.training.fit as fit_module
    import braintseg.training.train as train_module
    from braintseg.config import Config

    build = fit_module.build

    def build_noop(*args: Any, **kwargs: Any) -> Any:
        model = build(*args, **kwargs)
        _noop_steps(model, args[1]["input_shape"])
        return model

    fit_module.build = build_noop  # the bench's only change to braintseg train
    if cached:  # Keras' own loop cost: each dataset cycles through its first 4 batches
        from braintseg.training import generator

        read = generator.SliceDataset.__getitem__
        kept: dict[tuple[int, int], Any] = {}

        def cycle(self: Any, i: int) -> Any:
            key = (id(self), i % 4)
            if key not in kept:
                kept[key] = read(self, i)
            return kept[key]

        generator.SliceDataset.__getitem__ = cycle
    cfg = Config().replace(train={"batch_size": batch, "cache": mode,
                                  "steps_per_epoch": steps or None,
                                  "validation_steps": 2, "epochs": 2, "flip": True})
    run_dir = work / f"host_only_{mode}_{batch}"
    t0 = time.perf_counter()
    train_module.run_train(cfg, store, 0, run_dir, overwrite=True)
    wall = time.perf_counter() - t0
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    run = json.loads((run_dir / "run.json").read_text())
    return {"mode": mode, "batch": batch, "steps": steps, "cores": used,
            "slices_per_s": float(rows[-1]["slices_per_s"]),
            "epoch1_slices_per_s": float(rows[0]["slices_per_s"]),
            "compile_s": run.get("compile_s"), "wall_s": wall}


def run_child(args: list[str], flag: str = "--child") -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, flag, *args], capture_output=True,
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
    from braintseg.model import build_model
    from braintseg.store.read import open_store
    from braintseg.training.augment import Augmenter
    from braintseg.training.generator import SliceDataset
    from braintseg.training.losses import build_loss
    from braintseg.training.metrics import build_metrics

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


TARGETS = {("ram", 64): 10_000.0, ("stream", 64): 3_600.0}  # issue 13, a 2-core CPU
HOST_TARGET = 0.80  # host ceiling through braintseg train / generator alone


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def host_only(a: argparse.Namespace, store: Path, batches: list[int], work: Path) -> None:
    """Generator alone and braintseg train with a no-op step, same cores, same batches."""
    cores = a.cores or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        a.cores or os.cpu_count() or 1)
    res: dict[str, Any] = {"mode": "host-only", "shape": SHAPE, "cases": a.cases,
                           "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                           "cores": cores, "rows": []}
    print(f"# host ceiling, {a.cases} cases {SHAPE}, fold 0 training cases, flips on, "
          f"{cores} cores, backend {res['backend']}, load average at start {_load()}",
          flush=True)
    for b in batches:
        steps = a.steps
        for mode in ("ram", "stream"):
            gen = run_child([str(store), mode, str(b), str(steps), str(cores)])
            host = run_child([str(store), mode, str(b), str(steps), str(cores), str(work)],
                             flag="--child-host")
            ratio = host["slices_per_s"] / gen["slices_per_s"]
            target = TARGETS.get((mode, b))
            res["rows"].append({"mode": mode, "batch": b, "generator": gen, "host_only": host,
                                "ratio": ratio, "target_generator": target,
                                "load": _load()})
            line = (f"{mode:6s} batch {b:3d}: generator alone {gen['slices_per_s']:8.0f} "
                    f"slices/s ({gen['cores']} cores, {gen['read_processes']} reader processes, "
                    f"machine {gen['machine_cpu_s_per_s']:.2f} CPU-s/s = "
                    f"{gen['slices_per_s'] / max(gen['machine_cpu_s_per_s'], 1e-9):.0f} slices "
                    f"per CPU-second) | "
                    f"braintseg train, no-op step {host['slices_per_s']:8.0f} slices/s = "
                    f"{ratio:.0%} of the generator (target >= {HOST_TARGET:.0%}: "
                    f"{'met' if ratio >= HOST_TARGET else 'NOT met'})")
            if target:
                line += (f" | generator target >= {target:,.0f}: "
                         f"{'met' if gen['slices_per_s'] >= target else 'NOT met'}")
            print(line + f" | load {_load()}", flush=True)
    if a.keras_loop:
        res["keras_loop"] = []
        for b in batches:
            loop = run_child([str(store), "ram", str(b), str(a.steps), str(cores), str(work),
                              "cached"], flag="--child-host")
            res["keras_loop"].append(loop)
            print(f"keras loop alone, batch {b:3d} (4 cached batches, no-op step): "
                  f"{loop['slices_per_s']:8.0f} slices/s = "
                  f"{1e3 * b / loop['slices_per_s']:.1f} ms a step | load {_load()}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=30, help="cases in the throughput store")
    p.add_argument("--batch-sizes", default="16,32,64")
    p.add_argument("--steps", type=int, default=100,
                   help="timed steps per measurement (--host-only: 0 = one epoch of fold 0)")
    p.add_argument("--gen-steps", type=int, default=None,
                   help="batches for the generator alone [default: one epoch]")
    p.add_argument("--rss-cases", default="10,100", help="store sizes for the peak-RSS test")
    p.add_argument("--policy", default="mixed_bfloat16")
    p.add_argument("--workdir", type=Path, default=None, help="where stores are written")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--host-only", action="store_true",
                   help="host ceiling: the generator alone next to braintseg train's own loop "
                   "with the compiled step replaced by a no-op (RAM and stream), then stop")
    p.add_argument("--cores", type=int, default=None,
                   help="cores for --host-only children [default: all usable]")
    p.add_argument("--child", nargs=5, metavar=("STORE", "MODE", "BATCH", "STEPS", "CORES"),
                   help=argparse.SUPPRESS)
    p.add_argument("--keras-loop", action="store_true",
                   help="with --host-only: also the loop alone (4 cached batches, no-op step)")
    p.add_argument("--child-host", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        steps = int(a.child[3]) or None
        print(json.dumps(child_generator(Path(a.child[0]), a.child[1], int(a.child[2]), steps,
                                         int(a.child[4]))))
        return
    if a.child_host:
        st, mode, b, steps, cores, work_dir, *cached = a.child_host
        print(json.dumps(child_host_only(Path(st), mode, int(b), int(steps), int(cores),
                                         Path(work_dir), cached == ["cached"])))
        return
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in a.batch_sizes.split(",")]
    t0 = time.perf_counter()
    store = make_store(work / f"bench_{a.cases}.h5", a.cases)
    if a.host_only:
        host_only(a, store, batches, work)
        return
    res: dict[str, Any] = {"shape": SHAPE, "cases": a.cases, "policy": a.policy,
                           "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                           "store_write_s": time.perf_counter() - t0, "generator": [],
                           "model": [], "rss": []}
    gen_steps = str(a.gen_steps or 0)
    for b in batches:
        for mode in ("ram", "stream"):
            r = run_child([str(store), mode, str(b), gen_steps, "1"])
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
        r = run_child([str(path), "stream", "32", "0", "1"])
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
