"""Synthetic 2D slice data sets for tests and benchmarks (no real data needed).

* :func:`write_lgg`: LGG kaggle_3m layout, ``<root>/<patient>/<patient>_<n>.tif`` (uint8
  ``(H, W, 3)``) + ``<patient>_<n>_mask.tif`` (uint8 0/255) and a ``data.csv`` with grades.
* :func:`write_mat_slice`: one figshare slice exactly as MATLAB ``save -v7.3`` writes it: an
  HDF5 file with a 512-byte user block holding the MAT header text, a group ``cjdata`` with
  ``MATLAB_class = "struct"``, column-major (transposed) arrays with their ``MATLAB_class``
  attributes (``int16`` image, ``logical`` uint8 mask, ``double`` label and border, ``char``
  PID as uint16 codes with ``MATLAB_int_decode = 2``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def _blob(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float],
          radius: float) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def write_lgg(root: Path, n_patients: int = 4, n_slices: int = 12, size: int = 64,
              seed: int = 0, data_csv: bool = True) -> Path:
    """Write an LGG-style tree; patients ``TCGA_XX_<k>_2000010<k>``; returns ``root``."""
    import tifffile

    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = ["Patient,neoplasm_histologic_grade"]
    for k in range(n_patients):
        pid = f"TCGA_XX_{1000 + k}"
        folder = root / f"{pid}_2000010{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.append(f"{pid},{1 + k % 2}")
        brain = _blob(rng, (size, size), (size / 2, size / 2), size * 0.4)
        for n in range(1, n_slices + 1):
            img = (rng.integers(20, 200, (size, size, 3)) * brain[..., None]).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if n_slices // 3 <= n <= 2 * n_slices // 3:
                c = (size / 2 + rng.integers(-4, 5), size / 2 + rng.integers(-4, 5))
                mask[_blob(rng, (size, size), c, size * 0.12)] = 255
                img[mask > 0, 1] = 250  # bright on FLAIR
            tifffile.imwrite(folder / f"{folder.name}_{n}.tif", img)
            tifffile.imwrite(folder / f"{folder.name}_{n}_mask.tif", mask)
    if data_csv:
        (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def mat_header() -> bytes:
    """The 128-byte MAT 7.3 header MATLAB puts at the start of the 512-byte user block."""
    text = ("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: "
            + time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0)) + " HDF5 schema 1.00 .")
    return text.ljust(116).encode("ascii") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def write_mat_slice(path: Path, image: NDArray[np.int16], mask: NDArray[np.uint8], label: int,
                    pid: str, border: NDArray[np.float64] | None = None) -> Path:
    """One figshare ``cjdata`` slice as MATLAB v7.3 writes it (see the module docstring)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as h:
        g = h.create_group("cjdata")
        g.attrs["MATLAB_class"] = np.bytes_("struct")

        def put(name: str, data: NDArray, cls: str, decode: int | None = None) -> None:
            ds = g.create_dataset(name, data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
            if decode is not None:
                ds.attrs["MATLAB_int_decode"] = np.int32(decode)

        put("image", np.ascontiguousarray(np.asarray(image, np.int16).T), "int16")
        put("tumorMask", np.ascontiguousarray(np.asarray(mask, np.uint8).T), "logical", 1)
        put("label", np.array([[float(label)]]), "double")
        put("PID", np.array([[ord(c)] for c in pid], np.uint16), "char", 2)  # 1xN → (N, 1)
        b = np.asarray(border if border is not None else [1.0, 2.0, 3.0, 4.0], np.float64)
        put("tumorBorder", b.reshape(-1, 1), "double")
    with path.open("r+b") as fh:
        fh.write(mat_header())
    return path


def write_figshare(root: Path, patients: dict[str, list[tuple[int, int, int]]],
                   seed: int = 0) -> Path:
    """``{pid: [(slice number, size, label), …]}`` → ``<root>/<n>.mat`` files."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for pid, slices in patients.items():
        for number, size, label in slices:
            image = rng.integers(1, 900, (size, size)).astype(np.int16)
            image[: size // 8] = 0
            mask = _blob(rng, (size, size), (size * 0.6, size * 0.4), size * 0.1).astype(np.uint8)
            write_mat_slice(root / f"{number}.mat", image, mask, label, pid)
    return root
