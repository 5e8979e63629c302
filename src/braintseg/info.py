"""``braintseg info``: versions, Keras backend, GPUs, HDF5/Blosc versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Mapping

from braintseg import __version__


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _provider(package: str, providers: Mapping[str, list[str]]) -> str:
    """``<version> (<distribution>)`` of whatever installed the importable ``package``: e.g.
    ``tensorflow`` comes as tensorflow, tensorflow-cpu, tf-nightly, tensorflow-macos, ...;
    ``providers`` is :func:`importlib.metadata.packages_distributions` (the distributions'
    file lists).  Names in pip's normal form (``tensorflow-cpu``)."""
    names = dict.fromkeys(re.sub(r"[-_.]+", "-", n).lower() for n in providers.get(package, []))
    return ", ".join(f"{_version(n)} ({n})" for n in names) or "not installed"


def _gpus(backend: str) -> str:
    try:
        if backend == "jax":
            import jax

            devs = [d for d in jax.devices() if d.platform == "gpu"]
            return ", ".join(str(d) for d in devs) or "none"
        if backend == "torch":
            import torch

            n = torch.cuda.device_count()
            return ", ".join(torch.cuda.get_device_name(i) for i in range(n)) or "none"
        import tensorflow as tf

        return ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "none"
    except Exception as exc:  # noqa: BLE001 - info must never fail
        return f"unknown ({type(exc).__name__}: {exc})"


def collect_info() -> dict[str, str]:
    """Return a flat, printable mapping of environment facts."""
    import tables

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    info = {
        "braintseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras backend": backend,
    }
    info["keras"] = _version("keras")
    providers = importlib.metadata.packages_distributions()
    for package in ("tensorflow", "jax", "torch"):  # several distributions provide each
        info[package] = _provider(package, providers)
    for dist in ("numpy", "tables", "h5py", "nibabel", "scipy"):
        info[dist] = _version(dist)
    info["hdf5"] = tables.hdf5_version
    blosc = tables.which_lib_version("blosc")
    info["blosc"] = blosc[1] if blosc else "none"
    blosc2 = tables.which_lib_version("blosc2")
    info["blosc2"] = blosc2[1] if blosc2 else "none"
    info["cpus"] = str(os.cpu_count())
    info["gpus"] = _gpus(backend)
    from braintseg.training.distribute import describe_devices

    info["data_parallel devices"] = describe_devices()
    return info
