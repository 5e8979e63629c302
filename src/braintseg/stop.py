"""Stop requests for ``braintseg train``: SIGTERM/SIGUSR1 set a flag (no Keras here).

``run_train`` installs the handlers first thing, before the checks, the Keras import and the
model build, so a signal at any moment of a run ends it the same way: with
:class:`~braintseg.errors.Interrupted` (the CLI exits 75), after saving a checkpoint when there
is something to save.  The training loop looks at the flag before each batch (with several
processes, collectively: see ``StopSignals.collective``).

The ``braintseg train`` command records the signals even earlier (:func:`record_early`, called
by the package's ``__init__`` when the process is that command, and by the command itself):
Python's start-up, click and the config take a few tenths of a second, and a signal then
killed the process (exit 138/143, which ``train.sbatch`` does not requeue).  ``StopSignals``
takes such a signal over, so the run ends with exit 75 before training starts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from braintseg.errors import Interrupted

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

#: stop signals that arrived before :class:`StopSignals` was installed (:func:`record_early`)
_early: list[int] = []


def _record(signum: int, frame: Any) -> None:
    _early.append(signum)


def record_early() -> dict[int, Any]:
    """Record SIGTERM/SIGUSR1 from now on (where they still have their default action, in the
    main thread) for the :class:`StopSignals` installed later; returns the replaced handlers
    (for :func:`stop_recording`)."""
    replaced: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced
    for sig in SIGNALS:
        if signal.getsignal(sig) == signal.SIG_DFL:
            replaced[sig] = signal.signal(sig, _record)
    return replaced


def stop_recording(replaced: dict[int, Any]) -> None:
    """Undo :func:`record_early` (its handlers only; forget what they recorded)."""
    for sig, handler in replaced.items():
        if signal.getsignal(sig) is _record:
            signal.signal(sig, handler)
    _early.clear()


def is_train_command(argv: list[str]) -> bool:
    """``argv`` (``sys.orig_argv``) runs ``braintseg train``: ``python -m braintseg train ...``
    or the ``braintseg`` script (the group's options before ``train`` are flags)."""
    rest: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-X", "-W"):  # python's options with a value
            i += 2
            continue
        if arg == "-m":
            rest = argv[i + 2:] if argv[i + 1:i + 2] == ["braintseg"] else []
            break
        if not arg.startswith("-"):  # the script python runs
            rest = argv[i + 1:] if os.path.basename(arg) == "braintseg" else []
            break
        if arg == "-c":
            break
        i += 1
    return next((a for a in rest if not a.startswith("-")), None) == "train"


class StopSignals:
    """SIGTERM/SIGUSR1 handlers that record the signal (``signum``) instead of exiting.

    Installed only from the main thread (Python delivers signals there); elsewhere (a training
    run called from a worker thread) the process keeps its own handlers.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        #: one of several processes of a training: a signal during start-up does not end this
        #: process alone (its peers would wait for it until their timeout, or fail in a
        #: collective); :meth:`check` lets start-up go on and the collective stop check before
        #: the first training step stops every process at once (exit 75 everywhere)
        self.collective = False
        #: Ctrl-C arrived (see :meth:`_ctrl_c`)
        self.interrupted = False
        self._deferred = False
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not the main thread: SIGTERM/SIGUSR1 handlers not installed")
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if _early:  # arrived during the command's own start-up (record_early)
            self._handle(_early[-1], None)
            _early.clear()
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not SIG_IGN, not
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._ctrl_c)  # yours
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _ctrl_c(self, signum: int, frame: Any) -> None:
        """Python's Ctrl-C (raise KeyboardInterrupt), remembered: where Python swallows the
        exception (a garbage-collector callback such as JAX's, a ``__del__``: "Exception
        ignored in ..."), the training loop raises it again before the next batch."""
        self.interrupted = True
        raise KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("received %s: stopping", signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name (``SIGTERM`` when none arrived)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    def check(self, where: str, checkpoint: Path | None = None) -> None:
        """Raise :class:`Interrupted` if a signal arrived (``where``: what was going on;
        ``checkpoint``: the run folder's checkpoint, which stays as it was)."""
        if self.signum is not None:
            if self.collective:  # several processes: all stop together at the first step
                if not self._deferred:
                    self._deferred = True
                    logger.warning("%s during %s: this process stops with the others before "
                                   "the first training step", self.name, where)
                return
            saved = (f"its checkpoint {checkpoint} is unchanged" if checkpoint else
                     "no checkpoint yet (a rerun or --resume starts at epoch 1)")
            raise Interrupted(f"{self.name} during {where}: stopped before training began, "
                              f"{saved}")
