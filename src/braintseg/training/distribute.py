"""One training on several devices and processes (``train.distribution``); all of it is reached
through this module (its parts: :mod:`.devices`, devices and global-batch reductions per backend;
:mod:`.shards`, the ``--shard K/N`` work split of predict/evaluate).

Engines (no home-made one):

* JAX backend: Keras 3's ``keras.distribution.DataParallel`` over every device JAX sees (GPUs,
  else CPUs), in one process or several.  Several processes join through
  ``jax.distributed.initialize`` (coordinator ``HOST:PORT``, process count and id from
  ``--coordinator/--num-processes/--process-id``, the ``KERAS_DISTRIBUTION_*`` variables, or
  Slurm's ``srun`` environment, which JAX detects itself).  The whole global batch is one jitted
  program (GSPMD), so a step on N devices computes what one device computes on the same batch
  (batch statistics of BatchNormalization and the batch Dice included).
* TensorFlow backend: ``tf.distribute.MirroredStrategy`` over the GPUs of one process (or the
  logical CPUs when there is no GPU: tests).  Not ``MultiWorkerMirroredStrategy``: with Keras 3
  it fails inside Keras' own fit loop (keras-team/keras#20585).  Under the strategy each
  replica computes BatchNormalization statistics (``synchronized``) and the Dice sums over
  the global batch (:func:`batch_mean`), so it too equals a one-device step.

Batch semantics: ``train.batch_size`` is the global batch; it must divide by the number of
devices; the learning rate is not rescaled.  Each process reads only its rows of global batch k
(:attr:`Session.shard`); with more than one device the last, incomplete batch of an epoch is
dropped (``drop_remainder``), so no batch is ragged.

Process 0 writes the run folder; the others train in a private scratch folder
(:meth:`Session.local_run_dir`) that is removed at the end.  A stop signal seen by any process
stops all of them before the same step (:meth:`Session.any_process`: a key-value barrier of
``jax.distributed``'s coordination service, which also bounds how long a process waits for a
dead peer: ``BRAINTSEG_PEER_TIMEOUT`` seconds, default 600).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braintseg.config import Config, to_dict
from braintseg.errors import ConfigError, DataError
from braintseg.training.devices import (  # noqa: F401 - re-exported: import them from here
    batch_mean,
    batch_sum,
    describe_devices,
    jax_devices,
    keras_backend,
    list_devices,
    sync_batchnorm,
    tf_devices,
)
from braintseg.training.shards import (  # noqa: F401 - re-exported: import them from here
    parse_shard,
    shard_items,
    shard_suffix,
)

logger = logging.getLogger(__name__)

MODES = ("none", "data_parallel", "auto")
_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
        "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class Launch:
    """How this process joins a multi-process training (all None: one process, or Slurm).

    ``coordinator`` is ``HOST:PORT`` of process 0 (a comma-separated list is accepted as in
    ``KERAS_DISTRIBUTION_JOB_ADDRESSES``: the first entry is the coordinator).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @classmethod
    def from_options(cls, coordinator: str | None, num_processes: int | None,
                     process_id: int | None) -> Launch:
        """CLI options first, then the ``KERAS_DISTRIBUTION_*`` variables."""
        env = [os.environ.get(k) or None for k in _ENV]
        try:
            n = num_processes if num_processes is not None else (int(env[1]) if env[1] else None)
            i = process_id if process_id is not None else (int(env[2]) if env[2] else None)
        except ValueError:
            raise ConfigError(f"{_ENV[1]} and {_ENV[2]} must be integers; received "
                              f"{env[1]!r}, {env[2]!r}") from None
        addr = coordinator or env[0]
        if addr:
            addr = addr.split(",")[0].strip()
        launch = cls(addr, n, i)
        launch.check()
        return launch

    @property
    def multi_process(self) -> bool:
        return self.coordinator is not None or (self.num_processes or 1) > 1

    def check(self) -> None:
        if not self.multi_process:
            return
        slurm = "SLURM_PROCID" in os.environ  # JAX fills what is missing from Slurm's variables
        if self.coordinator is None or self.num_processes is None or (
                self.process_id is None and not slurm):
            raise ConfigError(
                "a multi-process launch needs --coordinator HOST:PORT, --num-processes N and "
                f"--process-id I together; received {self.coordinator!r}, "
                f"{self.num_processes!r}, {self.process_id!r}")
        if ":" not in self.coordinator:
            raise ConfigError(f"--coordinator must be HOST:PORT; received {self.coordinator!r}")
        if self.process_id is not None and not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"--process-id must be in 0..{self.num_processes - 1}; received "
                              f"{self.process_id}")


def _in_slurm_step() -> bool:
    """Inside an ``srun`` step of more than one task (JAX finds the coordinator itself)."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")) or 1) > 1


@dataclass
class Session:
    """What the training of one process needs to know about the distribution.

    Attributes:
        mode: ``none`` or ``data_parallel`` (``auto`` resolved).
        n_devices: devices of the whole job (1 for ``none``).
        n_processes, process_id: this process among the job's processes.
        shard: ``(process_id, n_processes)``: this process reads rows
            ``[k*B/n, (k+1)*B/n)`` of each global batch of ``B`` rows.
        drop_remainder: the last, incomplete batch of an epoch is dropped (more than 1 device).
        client: the coordination service's client of a multi-process job (JAX), else None.
    """

    mode: str = "none"
    n_devices: int = 1
    n_processes: int = 1
    process_id: int = 0
    strategy: Any = None
    peer_timeout_s: float = 600.0
    client: Any = None
    _calls: int = 0
    _scratch: Path | None = None

    @property
    def is_writer(self) -> bool:
        """Process 0 writes the run folder; the others write nothing there."""
        return self.process_id == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.process_id, self.n_processes

    @property
    def drop_remainder(self) -> bool:
        return self.n_devices > 1

    def dataset_args(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~braintseg.training.generator.SliceDataset`."""
        return {"shard": self.shard, "drop_remainder": self.drop_remainder}

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Build and compile the model inside this (the TF strategy's scope, or nothing)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def prepare(self, model: Any) -> Any:
        """The freshly built model, adapted to the strategy (TF: synchronised BatchNorm)."""
        if self.strategy is not None:
            sync_batchnorm(model)
        return model

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.n_devices:
            raise ConfigError(
                f"train.batch_size={batch_size} (the global batch) must divide by the "
                f"{self.n_devices} devices of train.distribution={self.mode}; use a multiple of "
                f"{self.n_devices} (the learning rate is not rescaled)")

    # -- the run folder
    def local_run_dir(self, run_dir: Path) -> Path:
        """``run_dir`` on process 0; elsewhere a private scratch copy of it (without
        ``tensorboard/``), so every process takes the same start decisions (resume, refuse,
        overwrite) while only process 0 writes the run folder; removed at the end."""
        if self.is_writer:
            return run_dir
        self._scratch = Path(tempfile.mkdtemp(prefix=f"braintseg-p{self.process_id}-"))
        local = self._scratch / (run_dir.name or "run")
        if run_dir.is_dir():
            shutil.copytree(run_dir, local, ignore=shutil.ignore_patterns("tensorboard"))
        return local

    # -- agreement between processes
    def agree(self, what: str, value: Any) -> None:
        """Refuse to start when the processes disagree on ``value`` (e.g. config and store).

        Raises:
            ConfigError: a process holds another value, names the process and ``what``.
            DataError: a process failed before this point, or did not reach it in time.
        """
        if self.client is None:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode())
        mine = digest.hexdigest()[:16]
        values = self._gather(f"agree/{what}", mine)
        for pid, theirs in enumerate(values):
            if theirs != mine:
                raise ConfigError(
                    f"process {pid} has another {what} than process {self.process_id} "
                    f"({theirs} != {mine}); start every process with the same command")

    def any_process(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any; all processes must call this at
        the same points (here: before each training step and at each epoch end).

        Raises:
            DataError: a peer did not arrive within ``peer_timeout_s`` (dead or hung).
        """
        if self.client is None:
            return flag
        self._calls += 1
        base = f"braintseg/stop/{self._calls}"
        client = self.client
        if flag:
            client.key_value_set(f"{base}/{self.process_id}", "1")
        try:
            client.wait_at_barrier(base, int(self.peer_timeout_s * 1000))
        except Exception as exc:  # noqa: BLE001 - XlaRuntimeError and friends
            raise DataError(
                f"process {self.process_id}: a peer process did not reach training step "
                f"{self._calls} within {self.peer_timeout_s:.0f} s (dead or hung): "
                f"{_first_line(exc)}") from None
        return bool(client.key_value_dir_get(f"{base}/"))

    def _gather(self, name: str, value: str) -> list[str]:
        client = self.client
        client.key_value_set(f"braintseg/{name}/{self.process_id}", value)
        deadline = time.monotonic() + self.peer_timeout_s
        while True:
            failed = dict(client.key_value_dir_get("braintseg/failed/"))
            if failed:
                key, msg = sorted(failed.items())[0]
                raise DataError(f"process {key.rsplit('/', 1)[-1]} failed: {msg}")
            got = dict(client.key_value_dir_get(f"braintseg/{name}/"))
            if len(got) == self.n_processes:
                return [got[f"braintseg/{name}/{i}"] for i in range(self.n_processes)]
            if time.monotonic() > deadline:
                missing = [i for i in range(self.n_processes)
                           if f"braintseg/{name}/{i}" not in got]
                raise DataError(f"processes {missing} did not reach '{name}' within "
                                f"{self.peer_timeout_s:.0f} s")
            time.sleep(0.05)

    def publish_failure(self, exc: BaseException) -> None:
        """Tell the other processes that this one failed (their waits then stop)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.key_value_set(f"braintseg/failed/{self.process_id}",
                                           _first_line(exc) or type(exc).__name__)

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def resolve_mode(cfg: Config) -> str:
    """``auto`` → ``data_parallel`` when more than one GPU is visible (or the job has several
    processes), else ``none``."""
    mode = cfg.train.distribution
    if mode != "auto":
        return mode
    devices = list_devices()
    gpus = [d for d in devices if "cpu" not in d.lower()]
    return "data_parallel" if len(gpus) > 1 else "none"


def _init_jax(launch: Launch, timeout_s: float) -> None:
    import jax

    heartbeat = int(os.environ.get("BRAINTSEG_HEARTBEAT_TIMEOUT", "100"))
    kwargs: dict[str, Any] = {"heartbeat_timeout_seconds": heartbeat,
                              "initialization_timeout": int(timeout_s)}
    if launch.multi_process:
        kwargs.update(coordinator_address=launch.coordinator,
                      num_processes=launch.num_processes, process_id=launch.process_id)
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - option gone in newer JAX (gloo is the default there)
        pass
    # JAX's preemption service takes SIGTERM for itself (a C++ handler replaces Python's):
    # scancel or a preemption would then never reach braintseg's checkpoint-and-exit-75 path
    with contextlib.suppress(Exception):
        jax.config.update("jax_enable_preemption_service", False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise DataError(f"joining the distributed training failed (coordinator "
                        f"{launch.coordinator or 'from Slurm'}): {_first_line(exc)}") from None
    for signum, handler in handlers.items():  # re-install ours at the C level, to be sure
        if callable(handler):
            signal.signal(signum, handler)


def _jax_is_initialized() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


@contextlib.contextmanager
def session(cfg: Config, launch: Launch | None = None) -> Iterator[Session]:
    """Set up the distribution for one training; undo it (and clean up) at the end.

    Raises:
        ConfigError: a multi-process launch without ``data_parallel`` on JAX, a batch size not
            divisible by the devices, processes that disagree on the config.
    """
    launch = launch or Launch()
    mode = cfg.train.distribution
    multi = launch.multi_process or (mode != "none" and _in_slurm_step())
    if mode == "none" and not multi:  # nothing to set up (and no Keras import yet)
        yield Session()
        return
    backend = keras_backend()
    if multi and (mode == "none" or backend != "jax"):
        raise ConfigError(
            "several processes train one model only with train.distribution=data_parallel on "
            f"the JAX backend (KERAS_BACKEND=jax); received {mode} on {backend}")
    timeout = float(os.environ.get("BRAINTSEG_PEER_TIMEOUT", "600"))
    dist = Session(peer_timeout_s=timeout)
    previous = None
    if multi and not _jax_is_initialized():
        _init_jax(launch, timeout)
    mode = "data_parallel" if multi else resolve_mode(cfg)
    dist.mode = mode
    try:
        if mode == "data_parallel":
            previous = _start(dist, backend)
        dist.check_batch(cfg.train.batch_size)
        dist.agree("config", to_dict(cfg))
        logger.info("distribution %s: %d device(s), process %d of %d", mode, dist.n_devices,
                    dist.process_id, dist.n_processes)
        yield dist
    except BaseException as exc:
        dist.publish_failure(exc)
        raise
    finally:
        dist.close()
        if backend == "jax" and mode == "data_parallel":
            import keras

            keras.distribution.set_distribution(previous)


def _start(dist: Session, backend: str) -> Any:
    """Create the Keras distribution (JAX) or the strategy (TF); return what to restore."""
    if backend == "jax":
        import jax
        import keras

        devices = jax_devices()
        previous = keras.distribution.distribution()
        # each process's SliceDataset already reads only its rows: no tf.data auto-sharding
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
        dist.n_devices = len(devices)
        dist.n_processes, dist.process_id = jax.process_count(), jax.process_index()
        if dist.n_processes > 1:
            from jax._src import distributed

            dist.client = distributed.global_state.client
        return previous
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf_devices()
        dist.strategy = tf.distribute.MirroredStrategy(devices=devices)
        dist.n_devices = dist.strategy.num_replicas_in_sync
        return None
    raise ConfigError(f"train.distribution=data_parallel needs the JAX or TensorFlow backend; "
                      f"received {backend}")
