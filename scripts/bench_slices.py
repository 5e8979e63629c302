"""Benchmark ``braintseg prepare`` and the slice-store read path on LGG kaggle_3m slices.

Usage:
    python scripts/bench_slices.py [-i LGG_ROOT] [--tmp DIR] [--repeat N]

Prints the load average at start and end (figures mean little on a busy machine), then:

* prepare (one worker) vs just decoding the same TIFFs with tifffile (images and masks): seconds
  per slice and the ratio (wall and this process's CPU time);
* store bytes / input TIFF bytes, for the default ``blosc:lz4`` and for ``store.compression:
  none`` (what ``configs/lgg_cv.yaml`` uses: normalised float16 slices compress only to ~0.7 and
  LZ4 costs ~7x in read time);
* slice reads/s on one core (Blosc on one thread, fresh handle) through
  ``SliceStore.read_slices`` in 16-slice blocks, a first pass (through HDF5, checksums
  verified) and a second (direct chunk reads, as every later epoch), single random
  slices, and whole ``SliceDataset`` batches (stream cache, shuffled, no augmentation) — target
  >= 1,500 slices/s.

Without ``-i`` the shared data (``../shared/data/lgg_kaggle_3m``) is used, or a synthetic
12-patient set of the same size when it is absent.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tables
import tifffile

from braintseg.config import load_config
from braintseg.preparation.prepare import run_prepare
from braintseg.sources.lgg import find_cases
from braintseg.store.read import open_store

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p / "data" / "lgg_kaggle_3m" for p in (REPO.parent / "shared",
                                                      REPO.parents[1] / "shared")
               if (p / "data" / "lgg_kaggle_3m").is_dir()), None)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def decode_all(root: Path) -> tuple[int, float, float]:
    """Decode every image and mask with tifffile: ``(slices, wall s, CPU s)``."""
    start = clocks()
    n = 0
    for case in find_cases(root):
        for img, mask in zip(case.images, case.masks or (), strict=True):
            tifffile.imread(img)
            tifffile.imread(mask)
            n += 1
    return (n, *since(start))


def block_rate(path: Path, block: int = 16) -> tuple[float, float, float, float]:
    """Slices/s (wall, per CPU s) of two passes over every patient in ``block``-slice blocks
    through one fresh store handle: the first reads each chunk through HDF5 (its checksum
    verified), the second directly (braintseg.store.chunks), as epochs 2, 3, ... do."""
    store = open_store(path)
    rates = []
    for _ in range(2):
        n, start = 0, clocks()
        for i in range(store.n_cases):
            size = store.n_slices(i, "slice")
            for s in range(0, size, block):
                n += len(store.read_slices(i, "slice", s, min(s + block, size))[0])
        wall, cpu = since(start)
        rates += [n / wall, n / cpu]
    store.close()
    return rates[0], rates[1], rates[2], rates[3]


def single_rate(path: Path, n: int = 400) -> float:
    store = open_store(path)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n):
        i = int(rng.integers(store.n_cases))
        s = int(rng.integers(store.n_slices(i, "slice")))
        store.read_slices(i, "slice", s, s + 1)
    store.close()
    return n / (time.perf_counter() - start)


def dataset_rate(path: Path, cache: str) -> float:
    """Slices/s of one shuffled epoch through ``SliceDataset[i]`` (its reader thread)."""
    from braintseg.training.generator import SliceDataset, release_store

    store = open_store(path)
    ids = store.case_ids
    store.close()
    start = time.perf_counter()  # RAM mode: the cache fill counts
    ds = SliceDataset(path, ids, "slice", 16, shuffle=True, cache=cache, seed=1)  # type: ignore
    n = 0
    for i in range(len(ds)):
        n += len(ds[i][0])
    rate = n / (time.perf_counter() - start)
    ds.close()
    release_store(path)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED)
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each timing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tables.set_blosc_max_threads(1)
    if hasattr(os, "sched_setaffinity"):  # one core: the target is per core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        root = args.input
        if root is None:
            from braintseg.sources.synthetic import write_lgg

            root = write_lgg(tmp / "lgg", n_patients=12, n_slices=34, size=256)
            print(f"no shared data: synthetic LGG set at {root}")
        cfg = load_config(REPO / "configs" / "lgg_cv.yaml").replace(
            store={"compression": "blosc:lz4"})
        dec = min((decode_all(root) for _ in range(args.repeat)), key=lambda r: r[1])
        n = dec[0]
        store = tmp / "lgg.h5"
        best = None
        for _ in range(args.repeat):
            start = clocks()
            run_prepare(cfg, root, store, workers=1, overwrite=True)
            t = since(start)
            best = t if best is None or t[0] < best[0] else best
        assert best is not None
        print(f"{n} slices; decode only: {1e3 * dec[1] / n:.2f} ms/slice wall, "
              f"{1e3 * dec[2] / n:.2f} ms CPU")
        print(f"prepare (1 worker): {1e3 * best[0] / n:.2f} ms/slice wall, "
              f"{1e3 * best[1] / n:.2f} ms CPU (this process; the loader thread included)")
        print(f"prepare / decode ratio: {best[0] / dec[1]:.2f}x wall, {best[1] / dec[2]:.2f}x CPU")
        tif_bytes = sum(p.stat().st_size for p in Path(root).rglob("*.tif"))
        print(f"store bytes / TIFF bytes: {store.stat().st_size / tif_bytes:.2f} "
              f"({store.stat().st_size / 1e6:.1f} MB / {tif_bytes / 1e6:.1f} MB)")
        raw = tmp / "lgg_none.h5"
        run_prepare(cfg.replace(store={"compression": "none"}), root, raw, workers=1)
        for label, path in (("blosc:lz4 (default)", store), ("none (configs/lgg_cv.yaml)", raw)):
            w1, c1, w2, c2 = max(block_rate(path) for _ in range(args.repeat))
            print(f"[{label}] bytes / TIFF bytes {path.stat().st_size / tif_bytes:.2f}; "
                  f"read_slices 16-slice blocks, one core: first read {w1:,.0f} slices/s wall, "
                  f"{c1:,.0f} per CPU s; again (direct chunk reads) {w2:,.0f} slices/s wall, "
                  f"{c2:,.0f} per CPU s (target >= 1,500); single random slices "
                  f"{single_rate(path):,.0f}/s wall")
            print(f"[{label}] SliceDataset epoch, batches of 16, shuffled: stream "
                  f"{dataset_rate(path, 'stream'):,.0f} slices/s, RAM cache (what cache: auto "
                  f"picks for LGG) {dataset_rate(path, 'ram'):,.0f} slices/s wall")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
