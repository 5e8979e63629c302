"""Direct chunk reads (braintseg.store.chunks) against HDF5's own reads of the same files."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import tables

from braintseg.config import Config, load_config
from braintseg.preparation.prepare import run_prepare
from braintseg.store.chunks import ChunkError, ChunkReader, fletcher32_matches
from braintseg.store.read import PreparedCase, StoreWriter, open_store


def _earray(path: Path, data: np.ndarray, chunks: tuple[int, ...], filters: tables.Filters,
            name: str = "images") -> None:
    with tables.open_file(str(path), "a") as h:
        arr = h.create_earray("/", name, tables.Atom.from_dtype(data.dtype), (0, *data.shape[1:]),
                              filters=filters, chunkshape=chunks)
        arr.append(data)


def _content(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Half noise (incompressible: Blosc stores those chunks raw), half zeros and steps."""
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        data = rng.integers(0, 4, shape, dtype=np.uint8)
    else:
        data = rng.standard_normal(shape).astype(dtype)
    data[..., : shape[-1] // 2] = 0
    data.reshape(-1)[::7] = 1
    return data


@pytest.mark.parametrize("filters", [
    tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True, fletcher32=True),
    tables.Filters(complevel=5, complib="blosc:zstd", shuffle=True, fletcher32=False),
    tables.Filters(complevel=0, fletcher32=True),
    tables.Filters(complevel=0, fletcher32=False),
], ids=["lz4+fletcher", "zstd", "none+fletcher", "none"])
@pytest.mark.parametrize("dtype,chunks", [("float16", (1, 5, 4, 3, 4)), ("uint8", (1, 6, 6, 6))])
def test_boxes_and_orders_equal_hdf5(tmp_path: Path, filters: tables.Filters, dtype: str,
                                     chunks: tuple[int, ...]) -> None:
    shape = (3, 13, 11, 9, 4)[: len(chunks)]
    data = _content(shape, dtype, 0)
    path = tmp_path / "a.h5"
    _earray(path, data, chunks, filters)
    reader = ChunkReader.open(path, "images")
    assert reader is not None and reader.shape == shape and reader.chunks == chunks
    rng = np.random.default_rng(1)
    for _ in range(40):
        lo = [int(rng.integers(0, s)) for s in shape]
        box = tuple(slice(a, int(rng.integers(a + 1, s + 1)))
                    for a, s in zip(lo, shape, strict=True))
        order = list(rng.permutation(len(shape)))
        if rng.random() < 0.5:  # the trailing axis last (the wide-element path)
            order = [a for a in order if a != len(shape) - 1] + [len(shape) - 1]
        got = reader.read(box, order)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, data[box].transpose(order))
    np.testing.assert_array_equal(reader.read(tuple(slice(0, s) for s in shape)), data)
    reader.close()


def test_unsupported_filters_return_none_and_the_store_reads_through_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "z.h5"
    _earray(path, _content((2, 8, 8, 8, 4), "float16", 0), (1, 4, 4, 4, 4),
            tables.Filters(complevel=5, complib="zlib", shuffle=True))
    assert ChunkReader.open(path, "images") is None
    store = tmp_path / "s.h5"
    images = _content((16, 16, 16, 4), "float16", 3)
    with StoreWriter(store, (16, 16, 16), 4, "zlib") as w:
        w.append(PreparedCase("z", images, np.zeros((16, 16, 16), np.uint8)))
        w.finish(None, {"crop_box": [0, 16, 0, 16, 0, 16]})
    s = open_store(store)
    np.testing.assert_array_equal(s.read_case(0)[0], images)
    assert s.direct_readers() is None
    s.close()


def test_fletcher32_is_hdf5s(tmp_path: Path) -> None:
    """The checksum HDF5 appends to each chunk, for even and odd chunk sizes, and one flipped
    bit in the body or the stored checksum is caught."""
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for n in (1, 2, 3, 255, 4096, 40001):
            f.create_dataset(f"d{n}", data=rng.integers(0, 256, n, dtype=np.uint8),
                             chunks=(n,), fletcher32=True)
    with h5py.File(path, "r") as f:
        for n in (1, 2, 3, 255, 4096, 40001):
            mask, raw = f[f"d{n}"].id.read_direct_chunk((0,))
            assert mask == 0 and len(raw) == n + 4
            assert fletcher32_matches(raw[:-4], raw[-4:])
            for where in (0, n // 2, n - 1):
                bad = bytearray(raw)
                bad[where] ^= 0x04
                assert not fletcher32_matches(bytes(bad[:-4]), bytes(bad[-4:])), (n, where)
            wrong = bytearray(raw[-4:])
            wrong[1] ^= 0x01
            assert not fletcher32_matches(raw[:-4], bytes(wrong))


def test_damage_truncation_and_missing_chunks(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    data = _content((2, 8, 8, 8, 4), "float16", 0)
    _earray(path, data, (1, 4, 4, 4, 4), tables.Filters(5, "blosc:lz4", fletcher32=True))
    with h5py.File(path, "a") as f:  # a dataset with chunks never written: the fill value
        f.create_dataset("sparse", shape=(8, 8), chunks=(4, 4), dtype="f4", fillvalue=2.5,
                         fletcher32=True)[:4, :4] = 1.0
    sparse = ChunkReader.open(path, "sparse")
    expected = np.full((8, 8), 2.5, np.float32)
    expected[:4, :4] = 1.0
    np.testing.assert_array_equal(sparse.read((slice(0, 8), slice(0, 8))), expected)

    reader = ChunkReader.open(path, "images")
    with tables.open_file(str(path)) as h:
        info = h.root.images.chunk_info((1, 4, 0, 4, 0))
    with path.open("r+b") as f:
        f.seek(info.offset + info.size // 2)
        byte = f.read(1)[0]
        f.seek(info.offset + info.size // 2)
        f.write(bytes([byte ^ 0x20]))
    np.testing.assert_array_equal(reader.read((slice(0, 1), *[slice(0, s) for s in (8, 8, 8, 4)])),
                                  data[:1])  # other chunks read
    with pytest.raises(ChunkError, match=rf"chunk at byte {info.offset}: Fletcher-32 checksum"):
        reader.read((slice(1, 2), slice(4, 8), slice(0, 4), slice(4, 8), slice(0, 4)))
    with path.open("r+b") as f:
        f.truncate(info.offset + 10)
    fresh = ChunkReader(path, reader.shape, reader.chunks, reader.dtype, 0, 0, 1,
                        (reader._offset, reader._size, reader._mask))
    with pytest.raises(ChunkError, match=r"truncated file|bytes, expected"):
        fresh.read((slice(1, 2), slice(4, 8), slice(0, 4), slice(4, 8), slice(0, 4)))


def test_threads_read_the_same_arrays(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    data = _content((4, 16, 16, 16, 4), "float16", 5)
    _earray(path, data, (1, 8, 8, 8, 4), tables.Filters(5, "blosc:lz4", fletcher32=True))
    reader = ChunkReader.open(path, "images")
    boxes = [(slice(c, c + 1), slice(0, 16), slice(0, 16), slice(z, z + 8), slice(0, 4))
             for c in range(4) for z in (0, 8)]
    errors: list[str] = []

    def work() -> None:
        for _ in range(10):
            for box in boxes:
                if not np.array_equal(reader.read(box, [0, 3, 1, 2, 4]),
                                      data[box].transpose(0, 3, 1, 2, 4)):
                    errors.append(str(box))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("dtype", ["float16", "float32", "int16"])
def test_store_reads_equal_with_and_without_direct_reads(
        synthetic_root: Path, smoke_cfg: Config, tmp_path: Path, dtype: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare's stores (the crop box is not a multiple of the chunk edge): every view, whole
    cases, blocks starting inside a chunk; int16 stores decode on read."""
    cfg = load_config(None, [f"store.dtype={dtype}"], base=smoke_cfg)
    path = run_prepare(cfg, synthetic_root, tmp_path / "s.h5", workers=1)
    direct = open_store(path)
    assert direct.direct_readers() is not None
    monkeypatch.setenv("BRAINTSEG_DIRECT_READS", "0")
    hdf5 = open_store(path)
    assert hdf5.direct_readers() is None
    for i in range(direct.n_cases):
        # twice: a chunk's first read goes through HDF5 (checksum), the second is direct
        for _ in range(2):
            for a, b in zip(direct.read_case(i), hdf5.read_case(i), strict=True):
                np.testing.assert_array_equal(a, b)
        for view in ("axial", "coronal", "sagittal"):
            n = direct.n_slices(i, view)
            for start, stop in ((0, n), (3, min(n, 21)), (n - 1, n)):
                for _ in range(2):
                    for a, b in zip(direct.read_slices(i, view, start, stop),
                                    hdf5.read_slices(i, view, start, stop), strict=True):
                        assert a.flags.c_contiguous and a.dtype == b.dtype
                        np.testing.assert_array_equal(a, b)
    assert all(r.all_verified for r in direct.direct_readers())  # the second reads were direct
    direct.close()
    hdf5.close()


def test_slice_store_reads_equal_with_and_without_direct_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2D layout (one slice a chunk, LZ4 as prepare writes it): whole patients and rows."""
    from braintseg.sources.synthetic import write_lgg

    write_lgg(tmp_path / "lgg", n_patients=3, n_slices=7, size=32)
    cfg = load_config(None, ["store.compression=blosc:lz4", "data.n_folds=3"])
    path = run_prepare(cfg, tmp_path / "lgg", tmp_path / "s.h5", workers=1)
    direct = open_store(path)
    assert direct.direct_readers() is not None
    monkeypatch.setenv("BRAINTSEG_DIRECT_READS", "0")
    hdf5 = open_store(path)
    for i in range(direct.n_cases):
        for _ in range(2):  # the second read is direct
            for a, b in zip(direct.read_case(i), hdf5.read_case(i), strict=True):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(direct.read_slices(i, "slice", 2, 5),
                            hdf5.read_slices(i, "slice", 2, 5), strict=True):
                np.testing.assert_array_equal(a, b)
    assert all(r.all_verified for r in direct.direct_readers())
    direct.close()
    hdf5.close()
