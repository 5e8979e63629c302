"""Benchmark ``braintseg prepare`` and the store's read path; prints ratios from one run.

Usage:
    python scripts/bench_prepare.py [-i BRATS_ROOT] [--layouts] [--tmp DIR]

Prints the load average at start and end (the figures mean little on a busy machine), then:
prepare s/case vs nibabel-load s/case (target <= 1.25x; wall and this process's CPU time, one
worker), speed-up at 2 workers (target >= 1.8x, wall), store bytes / input .nii.gz bytes (target
<= 1.0) and slice reads/s per view through ``SliceStore.read_slices`` on one core (16-slice
chunk-aligned blocks, fresh handle, Blosc on one thread; target >= 1500), for the default
float16 store and the int16 option (``store.dtype=int16 store.complevel=9``).  ``--layouts``
also rewrites the first cases' stored arrays with other compressors and chunk edges and reports
bytes and read rates for each.

The Fletcher-32 read cost: the first cases of the float16 store are rewritten twice, with and
without the checksum (same layout), and read block by block in alternation (median of 5 rounds,
one core); ``--checksum-only`` measures just that (on one freshly prepared float16 store).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import tables

from braintseg.config import load_config
from braintseg.preparation.prepare import run_prepare
from braintseg.sources.brats import find_cases
from braintseg.store.read import PreparedCase, StoreWriter, open_store

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"
BUNDLED = Path(__file__).resolve().parents[1] / "src" / "braintseg" / "sample_data" / "brats"
VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
#: folds do not change the timings; 2 lets the 4 bundled cases be prepared too
FOLDS = ["data.n_folds=2"]


def clocks() -> tuple[float, float]:
    """``(wall, CPU time of this process)`` in seconds."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU seconds elapsed since ``start``."""
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def load_seconds(root: Path) -> tuple[tuple[float, float], int, int]:
    """Read every case's NIfTI arrays with nibabel: ((wall, cpu) s, n_cases, bytes)."""
    cases = find_cases(root)
    files = [p for c in cases for p in [*c.images.values(), c.seg] if p is not None]
    start = clocks()
    for p in files:
        np.asanyarray(nib.load(p).dataobj)
    return since(start), len(cases), sum(p.stat().st_size for p in files)


def read_rates(path: Path, block: int = 16) -> dict[str, tuple[float, float]]:
    """Per view: (wall, CPU) slices/s reading chunk-aligned blocks of ``block`` slices."""
    rates = {}
    for view, axis in VIEWS:
        store = open_store(path)  # fresh handle: nothing in the chunk cache
        size, n = store.volume_shape[axis], 0
        start = clocks()
        for i in range(store.n_cases):
            for s in range(0, size, block):
                n += len(store.read_slices(i, view, s, min(s + block, size))[0])
        wall, cpu = since(start)
        rates[view] = (n / wall, n / cpu)
        store.close()
    return rates


def single_slice_rate(path: Path, view: str = "axial", n: int = 200) -> float:
    """Random single-slice reads/s, wall (the worst case for cube chunks)."""
    store = open_store(path)
    rng = np.random.default_rng(0)
    size = store.volume_shape[dict(VIEWS)[view]]
    start = time.perf_counter()
    for _ in range(n):
        s = int(rng.integers(size))
        store.read_slices(int(rng.integers(store.n_cases)), view, s, s + 1)
    store.close()
    return n / (time.perf_counter() - start)


def layouts(store_paths: list[Path], tmp: Path, n_cases: int = 3) -> None:
    """Rewrite the first cases' stored arrays with other layouts; print bytes and read rates."""
    print(f"\nlayouts on {n_cases} cases, complevel 5 (bytes relative to the first row of each "
          "dtype; read slices per CPU second):")
    for store_path in store_paths:
        src = open_store(store_path)
        base = None
        for comp, edge in [("blosc:lz4", 16), ("blosc:lz4", 32), ("blosc:lz4", 8),
                           ("blosc:zstd", 16), ("blosc:lz4hc", 16), ("blosc:lz4+bitshuffle", 16),
                           ("zlib", 16)]:
            out = tmp / f"layout_{src.image_dtype}_{comp.replace(':', '_').replace('+', '_')}.h5"
            start = clocks()
            _rewrite(store_path, out, n_cases, True, comp, edge)
            write_s = since(start)[1] / n_cases
            size = out.stat().st_size
            base = base or size
            r = read_rates(out)
            print(f"  {src.image_dtype:8s} {comp:22s} edge {edge:2d}: {size / 1e6:6.1f} MB "
                  f"({size / base:4.2f}x) write {write_s:5.2f} s/case  axial {r['axial'][1]:5.0f}"
                  f" coronal {r['coronal'][1]:5.0f} sagittal {r['sagittal'][1]:5.0f}")
            out.unlink()
        src.close()


def _rewrite(src_path: Path, out: Path, n_cases: int, checksum: bool,
             comp: str = "blosc:lz4", edge: int = 16) -> Path:
    """The first ``n_cases`` of a store, stored encoding unchanged, in another layout."""
    src = open_store(src_path)
    raw = src._handle().root.images  # the stored encoding, not the decoded images
    with StoreWriter(out, src.volume_shape, src.n_channels, comp, 5, src.image_dtype, n_cases,
                     chunk_edge=edge, checksum=checksum) as w:
        for i in range(n_cases):
            w.append(PreparedCase(src.case_ids[i], raw[i], src.read_case(i)[1], src.case_meta(i)))
        w.finish(None, {"crop_box": list(src.crop_box)})
    src.close()
    return out


def checksum_cost(store_path: Path, tmp: Path, n_cases: int, rounds: int = 5) -> None:
    """Print slice reads/s with and without Fletcher-32 and the relative cost.

    The same chunk-aligned 16-slice block is read from both stores back to back (order
    alternating), so both see the same machine load; per view, the CPU seconds of each variant
    are summed per round and the median ratio over ``rounds`` is reported.
    """
    paths = {on: _rewrite(store_path, tmp / f"fletcher_{on}.h5", n_cases, on)
             for on in (True, False)}
    stores = {on: open_store(p) for on, p in paths.items()}
    print(f"Fletcher-32 read cost, float16, {n_cases} cases, median of {rounds} rounds "
          "(16-slice blocks, one core, both stores read block by block in alternation):")
    for view, axis in VIEWS:
        size, ratios, rates = stores[True].volume_shape[axis], [], {True: [], False: []}
        for r in range(rounds):
            cpu = {True: 0.0, False: 0.0}
            n = 0
            for i in range(n_cases):
                for k, s in enumerate(range(0, size, 16)):
                    for on in ((True, False) if (k + r) % 2 == 0 else (False, True)):
                        start = time.process_time()
                        n_read = len(stores[on].read_slices(i, view, s, min(s + 16, size))[0])
                        cpu[on] += time.process_time() - start
                    n += n_read
            ratios.append(cpu[True] / cpu[False])
            for on in cpu:
                rates[on].append(n / cpu[on])
        print(f"  {view:8s}: with {float(np.median(rates[True])):5.0f} / without "
              f"{float(np.median(rates[False])):5.0f} slices per CPU second, cost "
              f"{float(np.median(ratios)) - 1:+.1%} (rounds: "
              f"{', '.join(f'{x - 1:+.0%}' for x in ratios)})")
    for on, store in stores.items():
        store.close()
        paths[on].unlink()


def bench_prepare(root: Path, tmp: Path, load: tuple[float, float], n: int) -> dict[str, Path]:
    """Prepare float16 (1 and 2 workers) and int16 (1 worker) stores; print s/case and ratios."""
    per_case: dict[str, float] = {}
    paths = {}
    for name, sets, workers in (("float16", [], 1), ("float16", [], 2),
                                ("int16", ["store.dtype=int16", "store.complevel=9"], 1)):
        cfg = load_config(None, [*FOLDS, *sets])
        start = clocks()
        paths[name] = run_prepare(cfg, root, tmp / f"{name}_w{workers}.h5", workers=workers)
        wall, cpu = (t / n for t in since(start))
        per_case[f"{name}/{workers}"] = wall
        cpu_text = (f", CPU {cpu:5.3f} s/case = {cpu / (load[1] / n):4.2f}x load CPU"
                    if workers == 1 else "")
        print(f"prepare {name:7s} {workers} worker(s): {wall:5.3f} s/case = "
              f"{wall / (load[0] / n):4.2f}x load{cpu_text} (target <= 1.25x)")
    print(f"speed-up at 2 workers     : {per_case['float16/1'] / per_case['float16/2']:4.2f}x "
          f"(float16, wall; target >= 1.8x; {os.cpu_count()} cores)")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED if SHARED.is_dir() else BUNDLED)
    ap.add_argument("--layouts", action="store_true", help="also compare store layouts")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder [default: a temp dir]")
    ap.add_argument("--checksum-only", action="store_true",
                    help="only the Fletcher-32 read cost (one float16 store)")
    ap.add_argument("--checksum-cases", type=int, default=6,
                    help="cases rewritten for the Fletcher-32 comparison")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tables.set_blosc_max_threads(1)  # "one core": decompression on the reading thread only
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmpdir:
        tmp = Path(tmpdir)
        if args.checksum_only:
            path = run_prepare(load_config(None, FOLDS), args.input, tmp / "float16.h5")
            checksum_cost(path, tmp, min(args.checksum_cases, open_store(path).n_cases))
            print("load average at end  : {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
            return
        load, n, in_bytes = load_seconds(args.input)
        again = load_seconds(args.input)[0]  # warm page cache for both
        load = (min(load[0], again[0]), min(load[1], again[1]))
        print(f"input: {args.input} ({n} cases, {in_bytes / 1e6:.1f} MB .nii.gz)")
        print(f"nibabel load only         : {load[0] / n:5.3f} s/case (CPU {load[1] / n:5.3f})")
        paths = bench_prepare(args.input, tmp, load, n)
        for name, path in paths.items():
            size = path.stat().st_size
            print(f"store/input bytes {name:7s} : {size / 1e6:.1f} / {in_bytes / 1e6:.1f} MB = "
                  f"{size / in_bytes:4.2f} (target <= 1.0; blosc:lz4, complevel "
                  f"{open_store(path).config['store']['complevel']})")
        for name, path in paths.items():
            for view, (wall, cpu) in read_rates(path).items():
                print(f"read_slices {name:7s} {view:8s}: {wall:5.0f} slices/s wall, {cpu:5.0f} "
                      f"per CPU second (16-slice blocks, one core; target >= 1500)")
            print(f"random single slices {name:7s}: {single_slice_rate(path):5.0f} slices/s "
                  "(axial, wall)")
        checksum_cost(paths["float16"], tmp, min(args.checksum_cases, n))
        if args.layouts:
            layouts(list(paths.values()), tmp, min(3, n))
    print("load average at end  : {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
