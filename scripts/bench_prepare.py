"""Benchmark ``braintseg prepare`` and the store's read path; prints ratios from one run.

Usage:
    python scripts/bench_prepare.py [-i BRATS_ROOT] [--layouts] [--tmp DIR]

Prints: prepare s/case vs nibabel-load s/case (target <= 1.25x), speed-up at 2 workers (target
>= 1.8x), store bytes / input .nii.gz bytes (target <= 1.0), slice reads/s per view through
``SliceStore.read_slices`` on one core (target >= 1500).  ``--layouts`` also rewrites the same
cases with other compressors/dtypes/chunk edges and reports bytes and read rates for each.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from braintseg.config import load_config
from braintseg.data import find_cases, open_store
from braintseg.data.store import PreparedCase, StoreWriter
from braintseg.prepare import run_prepare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"
BUNDLED = Path(__file__).resolve().parents[1] / "src" / "braintseg" / "sample_data" / "brats"


def load_seconds(root: Path) -> tuple[float, int, int]:
    """Seconds to read every case's NIfTI arrays with nibabel; (seconds, n_cases, bytes)."""
    cases = find_cases(root)
    files = [p for c in cases for p in [*c.images.values(), c.seg] if p is not None]
    t = time.perf_counter()
    for p in files:
        np.asanyarray(nib.load(p).dataobj)
    return time.perf_counter() - t, len(cases), sum(p.stat().st_size for p in files)


def read_rates(path: Path, block: int = 16, repeats: int = 1) -> dict[str, float]:
    """Slices/s per view reading chunk-aligned blocks of ``block`` slices (fresh handle)."""
    rates = {}
    for view, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        store = open_store(path)
        size, n = store.volume_shape[axis], 0
        t = time.perf_counter()
        for _ in range(repeats):
            for i in range(store.n_cases):
                for start in range(0, size, block):
                    img, _ = store.read_slices(i, view, start, min(start + block, size))
                    n += len(img)
        rates[view] = n / (time.perf_counter() - t)
        store.close()
    return rates


def single_slice_rate(path: Path, view: str = "axial", n: int = 200) -> float:
    """Random single-slice reads/s (the worst case for cube chunks)."""
    store = open_store(path)
    rng = np.random.default_rng(0)
    size = store.volume_shape[{"axial": 2, "coronal": 1, "sagittal": 0}[view]]
    t = time.perf_counter()
    for _ in range(n):
        s = int(rng.integers(size))
        store.read_slices(int(rng.integers(store.n_cases)), view, s, s + 1)
    store.close()
    return n / (time.perf_counter() - t)


def layouts(store_path: Path, tmp: Path, n_cases: int = 3) -> None:
    """Rewrite the first cases with other layouts; print bytes and read rates for each."""
    src = open_store(store_path)
    cases = [PreparedCase(src.case_ids[i], *src.read_case(i)) for i in range(n_cases)]
    print(f"\nlayouts on {n_cases} cases (bytes relative to blosc:lz4 float16 edge 16):")
    base = None
    for comp, dtype, edge in [("blosc:lz4", "float16", 16), ("blosc:lz4", "float16", 32),
                              ("blosc:lz4", "float16", 8), ("blosc:zstd", "float16", 16),
                              ("blosc2:lz4", "float16", 16), ("blosc2:zstd", "float16", 16),
                              ("blosc:lz4+bitshuffle", "float16", 16),
                              ("blosc:zstd+bitshuffle", "float16", 16),
                              ("blosc:lz4", "float32", 16), ("zlib", "float16", 16)]:
        out = tmp / f"layout_{comp.replace(':', '_').replace('+', '_')}_{dtype}_{edge}.h5"
        t = time.perf_counter()
        with StoreWriter(out, src.volume_shape, src.n_channels, comp, 5, dtype, n_cases,
                         chunk_edge=edge) as w:
            for c in cases:
                w.append(PreparedCase(c.case_id, c.images.astype(dtype), c.labels))
            w.finish(None, {"crop_box": list(src.crop_box)})
        write_s = (time.perf_counter() - t) / n_cases
        size = out.stat().st_size
        base = base or size
        r = read_rates(out)
        print(f"  {comp:22s} {dtype:8s} edge {edge:2d}: {size / 1e6:7.1f} MB ({size / base:4.2f}x)"
              f"  write {write_s:5.2f} s/case  slices/s axial {r['axial']:6.0f} coronal "
              f"{r['coronal']:6.0f} sagittal {r['sagittal']:6.0f}  random-axial "
              f"{single_slice_rate(out):5.0f}")
    src.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, default=SHARED if SHARED.is_dir() else BUNDLED)
    ap.add_argument("--layouts", action="store_true", help="also compare store layouts")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder [default: a temp dir]")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmpdir:
        tmp = Path(tmpdir)
        load_s, n, in_bytes = load_seconds(args.input)
        load_s = min(load_s, load_seconds(args.input)[0])  # warm page cache for both
        print(f"input: {args.input} ({n} cases, {in_bytes / 1e6:.1f} MB .nii.gz)")
        print(f"nibabel load only      : {load_s / n:6.3f} s/case")
        per_case = {}
        for workers in (1, 2):
            t = time.perf_counter()
            path = run_prepare(cfg, args.input, tmp / f"w{workers}.h5", workers=workers)
            per_case[workers] = (time.perf_counter() - t) / n
            print(f"prepare, {workers} worker(s)    : {per_case[workers]:6.3f} s/case "
                  f"= {per_case[workers] / (load_s / n):4.2f}x load (target <= 1.25x)")
        print(f"speed-up at 2 workers  : {per_case[1] / per_case[2]:4.2f}x (target >= 1.8x)")
        size = path.stat().st_size
        print(f"store / input bytes    : {size / 1e6:.1f} / {in_bytes / 1e6:.1f} MB = "
              f"{size / in_bytes:4.2f} (target <= 1.0; {cfg.store.compression}, "
              f"{cfg.store.dtype})")
        rates = read_rates(path)
        for view, rate in rates.items():
            print(f"read_slices {view:9s}  : {rate:7.0f} slices/s (16-slice blocks, one core, "
                  "target >= 1500)")
        print(f"random single slices   : {single_slice_rate(path):7.0f} slices/s (axial)")
        if args.layouts:
            layouts(path, tmp, min(3, n))


if __name__ == "__main__":
    main()
