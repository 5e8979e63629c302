"""Digests of what the pipeline produces, to show that a pure restructuring changes nothing.

Runs ``braintseg prepare | train | predict | evaluate`` (the CLI, in subprocesses) on the bundled
BraTS and LGG samples and on a synthetic figshare set, reads batches of every store in both cache
modes, and prints one JSON object of SHA-256 digests: the stores' arrays, the batches, the trained
weights, the predictions (NIfTI data and header, TIFF bytes, ``predictions.csv`` without its
timing column) and the scores (``metrics.json`` without timings).  Run it before and after a move
and compare the two files::

    python scripts/pin_outputs.py /tmp/pin > before.json     # ... move ...
    python scripts/pin_outputs.py /tmp/pin > after.json && diff before.json after.json

Takes about 3 minutes on 2 cores.  Digests hold on one machine and one dependency set (TensorFlow
kernels differ between CPUs); batches and stores are numpy and PyTables only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "braintseg" / "sample_data"
TIMING = {"seconds", "elapsed_s", "created", "time", "wall_s", "duration_s", "started", "finished"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "braintseg", *args], check=True,
                   stdout=subprocess.DEVNULL)


def store_digest(path: Path) -> dict[str, str]:
    import tables

    out: dict[str, str] = {}
    with tables.open_file(str(path), "r") as f:
        for node in f.walk_nodes("/", classname="Array"):
            if isinstance(node, tables.VLArray):
                out[node._v_pathname] = sha(json.dumps([str(r) for r in node.read()]).encode())
            else:
                out[node._v_pathname] = sha(np.ascontiguousarray(node.read()).tobytes())
    return out


def batch_digest(store: Path, view: str) -> dict[str, str]:
    try:
        from braintseg.training.generator import SliceDataset
    except ImportError:
        from braintseg.training.generator import SliceDataset
    try:
        from braintseg.store import open_store
    except ImportError:
        from braintseg.store.read import open_store
    ids = open_store(store).case_ids
    out = {}
    for mode in ("ram", "stream"):
        ds = SliceDataset(store, ids, view, 4, seed=7, cache=mode, tumour_oversampling=0.5,
                          block_slices=8, buffer_blocks=2, read_processes=0)
        try:
            for epoch in (0, 1):
                for i in (0, 1, len(ds) - 1):
                    x, y = ds.batch(epoch, i)
                    out[f"{mode}/{epoch}/{i}"] = sha(np.asarray(x).tobytes()
                                                     + np.asarray(y).tobytes())
        finally:
            ds.close()
    return out


def weights_digest(run: Path) -> str:
    import zipfile

    with zipfile.ZipFile(run / "model.keras") as z:
        return sha(z.read("model.weights.h5"))


def predictions_digest(folder: Path) -> dict[str, str]:
    import nibabel as nib

    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.name.endswith(".nii.gz"):
            img = nib.load(path)
            out[rel] = sha(np.asarray(img.dataobj).tobytes() + img.header.binaryblock)
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
            out[rel] = sha(json.dumps([{k: v for k, v in r.items() if k not in TIMING}
                                       for r in rows]).encode())
        elif path.suffix == ".json":
            out[rel] = sha(json.dumps(strip(json.loads(path.read_text())),
                                      sort_keys=True).encode())
        elif path.suffix in (".tif", ".tiff"):
            out[rel] = sha(path.read_bytes())
    return out


def strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING and "version" not in k
                and "path" not in k and "folder" not in k and "config" not in k}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def pipeline(work: Path, name: str, source: Path, view: str, extra: list[str]) -> dict[str, Any]:
    store, run, pred = work / f"{name}.h5", work / f"{name}-run", work / f"{name}-pred"
    smoke = ["-c", str(REPO / "configs" / "smoke.yaml"), "--set", "data.n_folds=2", *extra]
    cli("prepare", "-i", str(source), "-o", str(store), "--workers", "1", *smoke)
    out: dict[str, Any] = {"store": store_digest(store), "batches": batch_digest(store, view)}
    cli("train", "-i", str(store), "--fold", "0", "-o", str(run), *smoke,
        "--set", f"train.view={'axial' if view == 'slice' else view}")
    out["weights"] = weights_digest(run)
    cli("predict", "-m", str(run), "-i", str(store), "--fold", "0", "-o", str(pred))
    cli("evaluate", "-p", str(pred), "-t", str(store))
    out["predictions"] = predictions_digest(pred)
    return out


def main() -> None:
    work = Path(sys.argv[1])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        from braintseg.sources.synthetic import write_figshare
    except ImportError:
        from braintseg.sources.synthetic import write_figshare
    fig = work / "figshare"
    write_figshare(fig, {"p1": [(1, 64, 1), (2, 64, 1), (3, 32, 2)],
                         "p2": [(4, 64, 2), (5, 64, 3)], "p3": [(6, 64, 3), (7, 32, 1)],
                         "p4": [(8, 64, 1), (9, 64, 2)]})
    binary = ["--set", "model.output=binary"]
    result = {
        "brats": pipeline(work, "brats", SAMPLE / "brats", "axial", []),
        "lgg": pipeline(work, "lgg", SAMPLE / "lgg", "slice", binary),
        "figshare": pipeline(work, "figshare", fig, "slice", binary),
    }
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
