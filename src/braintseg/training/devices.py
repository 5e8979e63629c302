"""The devices of one training and the computations over its whole (global) batch, per Keras
backend.  An implementation part of :mod:`braintseg.training.distribute`: import these names
from there.

* :func:`list_devices`: what ``train.distribution: data_parallel`` spreads over (JAX: its GPUs,
  else CPUs, of all processes once ``jax.distributed`` is initialised; TensorFlow: the logical
  GPUs, else CPUs; torch: CUDA devices, else ``cpu``).
* :func:`batch_mean` / :func:`batch_sum`: a batch statistic over the global batch, also under a
  TensorFlow ``MirroredStrategy`` (replicas' values all-reduced), so the Dice sums of a step on
  N devices equal the one-device values.
* :func:`sync_batchnorm`: BatchNormalization statistics over the global batch under a strategy.
"""

from __future__ import annotations

from typing import Any


def keras_backend() -> str:
    """The Keras backend's name (``jax``, ``tensorflow``, ``torch``); imports Keras."""
    import keras

    return keras.backend.backend()


def tf_devices() -> list[str]:
    """Names of TensorFlow's logical GPUs of this process, else of its logical CPUs."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def jax_devices() -> list[Any]:
    """JAX's non-CPU devices (all processes'), else its CPU devices."""
    import jax

    gpus = [d for d in jax.devices() if d.platform != "cpu"]
    return gpus or jax.devices()


def list_devices() -> list[str]:
    """The devices ``train.distribution: data_parallel`` would use in this process (all
    processes' devices on JAX once ``jax.distributed`` is initialised)."""
    backend = keras_backend()
    if backend == "jax":
        return [str(d) for d in jax_devices()]
    if backend == "tensorflow":
        return tf_devices()
    import torch

    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def describe_devices() -> str:
    """One line for ``braintseg info``; never raises."""
    try:
        devs = list_devices()
        return f"{len(devs)}: " + ", ".join(devs)
    except Exception as exc:  # noqa: BLE001 - info must never fail
        return f"unknown ({type(exc).__name__}: {exc})"


def batch_mean(x: Any, axis: tuple[int, ...]) -> Any:
    """``mean(x, axis)`` over the global batch: under a TF ``MirroredStrategy`` the replicas'
    means are averaged (equal local batches), so a batch statistic (the Dice sums) equals the
    one-device value.  Elsewhere (JAX's one program, one device) it is ``keras.ops.mean``."""
    from keras import ops

    return _all_reduce(ops.mean(x, axis=axis), "MEAN")


def batch_sum(x: Any, axis: tuple[int, ...]) -> Any:
    """``sum(x, axis)`` over the global batch (see :func:`batch_mean`)."""
    from keras import ops

    return _all_reduce(ops.sum(x, axis=axis), "SUM")


def _all_reduce(local: Any, op: str) -> Any:
    if keras_backend() != "tensorflow":
        return local
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return local
    return ctx.all_reduce(getattr(tf.distribute.ReduceOp, op), local)


def sync_batchnorm(model: Any) -> None:
    """Under a TF strategy: BatchNormalization statistics over the global batch (Keras'
    ``synchronized``), as the JAX program and one device compute them.  The saved config keeps
    ``synchronized: False``: Keras refuses that flag on the other backends."""
    import keras

    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            layer.get_config = _unsynchronized_config(layer)


def _unsynchronized_config(layer: Any) -> Any:
    cls_get_config = type(layer).get_config

    def get_config() -> dict[str, Any]:
        return {**cls_get_config(layer), "synchronized": False}

    return get_config
